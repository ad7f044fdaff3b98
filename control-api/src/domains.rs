//! Customers' own domains (PRD: Pro tier and up): `POST /api/domains` answers with the DNS
//! records to create; the certificate manager checks them through DNS, orders the certificate
//! (only ever for a verified hostname) and activates the route; `GET` shows the status with what
//! to fix; `DELETE` removes route and certificate. Also the operator's certificate list and a
//! forced renewal.
//!
//! A claim blocks nobody until it is proven (issue #16): several accounts may add the same
//! hostname, each with its own TXT token; the first whose records are seen owns it, and from
//! then on the others are refused (`DOMAIN_TAKEN`). Unproven claims expire.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use clawdeploy_certs::manager::{CertSummary, DOMAIN_TXT_PREFIX};
use clawdeploy_config::hostname::is_valid_label;
use clawdeploy_store::{Conflict, CustomDomain, DomainStatus, StoreError};

use crate::admin::Admin;
use crate::auth::AuthUser;
use crate::{ApiError, ApiState, Reply};

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// The body of `POST /api/domains`: `hostname`, such as `shop.example.com`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainBody {
    hostname: String,
}

/// Why a hostname cannot be a custom domain (the message says how to fix it).
pub fn check_hostname(raw: &str, base_domain: &str) -> Result<String, ApiError> {
    let bad = |code: &'static str, message: String| ApiError::invalid("hostname", code, message);
    let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(bad(
            "INVALID_HOSTNAME",
            "is empty; send a domain such as shop.example.com".into(),
        ));
    }
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return Err(bad(
            "INVALID_HOSTNAME",
            format!("{raw:?} is an IP address; certificates are issued for domain names such as shop.example.com"),
        ));
    }
    if host.contains('*') {
        return Err(bad(
            "WILDCARD_NOT_ALLOWED",
            format!("{raw:?} is a wildcard; add each host name you want served, such as shop.example.com"),
        ));
    }
    if host.contains("://") || host.contains('/') || host.contains(':') {
        return Err(bad(
            "INVALID_HOSTNAME",
            format!(
                "{raw:?} is not a bare host name; send only the name, without scheme, port or path"
            ),
        ));
    }
    if !host.is_ascii() {
        return Err(bad(
            "INVALID_HOSTNAME",
            format!("{raw:?} holds non-ASCII characters; send its xn-- (punycode) form"),
        ));
    }
    if host.len() > clawdeploy_config::hostname::MAX_HOSTNAME_LEN {
        return Err(bad(
            "HOSTNAME_TOO_LONG",
            format!(
                "is {} characters; a domain name has at most {}",
                host.len(),
                clawdeploy_config::hostname::MAX_HOSTNAME_LEN
            ),
        ));
    }
    for label in host.split('.') {
        if !is_valid_label(label) {
            return Err(bad(
                "INVALID_HOSTNAME",
                format!("label {label:?} must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"),
            ));
        }
        if let Some(encoded) = label.strip_prefix("xn--") {
            if punycode_decode(encoded).is_none() {
                return Err(bad(
                    "INVALID_PUNYCODE",
                    format!("label {label:?} is not valid punycode; copy the xn-- form your registrar shows"),
                ));
            }
        } else if label.len() >= 4 && &label[2..4] == "--" {
            return Err(bad(
                "INVALID_HOSTNAME",
                format!("label {label:?} has '--' in positions 3-4, reserved for encodings such as xn--"),
            ));
        }
    }
    if !host.contains('.') {
        return Err(bad(
            "INVALID_HOSTNAME",
            format!("{host:?} is a single label; send a full domain such as shop.example.com"),
        ));
    }
    if host == base_domain || host.ends_with(&format!(".{base_domain}")) {
        return Err(bad(
            "RESERVED_HOSTNAME",
            format!(
                "{host} is part of the platform's own domain {base_domain}; add a domain you own"
            ),
        ));
    }
    Ok(host)
}

/// RFC 3492 decoding; `None` when the input is not valid punycode.
fn punycode_decode(input: &str) -> Option<String> {
    const BASE: u32 = 36;
    const TMIN: u32 = 1;
    const TMAX: u32 = 26;
    const SKEW: u32 = 38;
    const DAMP: u32 = 700;
    if input.is_empty() {
        return None;
    }
    let (basic, encoded) = match input.rfind('-') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => ("", input),
    };
    if encoded.is_empty() {
        return None;
    }
    let mut output: Vec<char> = basic.chars().collect();
    let (mut n, mut i, mut bias) = (128u32, 0u32, 72u32);
    let mut chars = encoded.bytes().peekable();
    while chars.peek().is_some() {
        let old_i = i;
        let mut w = 1u32;
        let mut k = BASE;
        loop {
            let c = chars.next()?;
            let digit = match c {
                b'a'..=b'z' => u32::from(c - b'a'),
                b'0'..=b'9' => u32::from(c - b'0') + 26,
                _ => return None,
            };
            i = i.checked_add(digit.checked_mul(w)?)?;
            let t = if k <= bias {
                TMIN
            } else if k >= bias + TMAX {
                TMAX
            } else {
                k - bias
            };
            if digit < t {
                break;
            }
            w = w.checked_mul(BASE - t)?;
            k += BASE;
        }
        let len = output.len() as u32 + 1;
        // adapt
        let mut delta = if old_i == 0 {
            (i - old_i) / DAMP
        } else {
            (i - old_i) / 2
        };
        delta += delta / len;
        let mut k = 0;
        while delta > ((BASE - TMIN) * TMAX) / 2 {
            delta /= BASE - TMIN;
            k += BASE;
        }
        bias = k + (BASE - TMIN + 1) * delta / (delta + SKEW);
        n = n.checked_add(i / len)?;
        i %= len;
        let c = char::from_u32(n)?;
        if c.is_ascii() {
            return None;
        }
        output.insert(i as usize, c);
        i += 1;
    }
    Some(output.into_iter().collect())
}

/// A DNS record the customer creates for their domain.
#[derive(Debug, Serialize, ToSchema)]
pub struct DnsRecord {
    /// `CNAME` or `TXT`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The record's name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// A custom domain with its status and the records to create.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainView {
    /// The hostname.
    pub hostname: String,
    /// Where it is in its lifecycle.
    pub status: DomainStatus,
    /// What to fix, when it is stuck or failed.
    pub reason: Option<String>,
    /// The CNAME to the instance and the TXT proving ownership.
    pub records: Vec<DnsRecord>,
    /// When it was added (unix ms).
    pub created_at: i64,
    /// When its ownership was proven (unix ms).
    pub verified_at: Option<i64>,
    /// A failed domain is checked again from then on (backoff, unix ms); `null` while not failed.
    pub next_check_at: Option<i64>,
    /// Failed checks so far.
    pub failed_attempts: i64,
}

impl DomainView {
    async fn new(state: &ApiState, domain: &CustomDomain) -> Result<Self, ApiError> {
        let target = match state.store.get_instance(domain.instance_id).await? {
            Some(inst) => format!("{}.{}", inst.subdomain, state.ctx.config.server.base_domain),
            None => String::new(),
        };
        Ok(Self {
            hostname: domain.hostname.clone(),
            status: domain.status,
            reason: domain.reason.clone(),
            records: vec![
                DnsRecord {
                    kind: "CNAME",
                    name: domain.hostname.clone(),
                    value: target,
                },
                DnsRecord {
                    kind: "TXT",
                    name: format!("{DOMAIN_TXT_PREFIX}{}", domain.hostname),
                    value: domain.token.clone(),
                },
            ],
            created_at: domain.created_at,
            verified_at: domain.verified_at,
            next_check_at: (domain.status == DomainStatus::Failed).then_some(domain.next_check_at),
            failed_attempts: domain.attempts,
        })
    }
}

/// `{"domain": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DomainReply {
    /// The domain.
    pub domain: DomainView,
}

/// The caller's custom domains.
#[derive(Debug, Serialize, ToSchema)]
pub struct Domains {
    /// The domains.
    pub domains: Vec<DomainView>,
}

/// The certificates the edge serves (no key material).
#[derive(Debug, Serialize, ToSchema)]
pub struct Certificates {
    /// The certificates.
    pub certificates: Vec<CertSummary>,
}

/// `{"certificate": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateReply {
    /// The certificate.
    pub certificate: CertSummary,
}

/// 409 `DOMAIN_TAKEN`: another account proved it owns `hostname`.
fn taken(hostname: &str) -> ApiError {
    ApiError::conflict(
        "DOMAIN_TAKEN",
        format!(
            "{hostname} is verified by another account: its DNS records proved ownership first, and a domain is served for one account only. \
             If {hostname} is yours, have it removed from that account, then add it here."
        ),
    )
}

fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| ApiError::internal("random token", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `POST /api/domains`: adds a custom domain for the caller's instance (Pro tier and up, up to
/// `domains.max_per_user`); 201 with the CNAME and TXT records to create. 503 when no HTTPS is
/// served.
pub async fn create(
    State(state): State<ApiState>,
    auth: AuthUser,
    body: JsonBody<DomainBody>,
) -> Result<(StatusCode, Reply<DomainReply>), ApiError> {
    let Json(b) = body?;
    let config = &state.ctx.config;
    let Some(certs) = state.certs.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "HTTPS_DISABLED",
            "This platform serves no HTTPS (tls.listen is empty), so it cannot serve your domain.",
        ));
    };
    if !config.domains.enabled {
        return Err(ApiError::forbidden(
            "DOMAINS_DISABLED",
            "Custom domains are turned off on this platform.",
        ));
    }
    let allowed = config.tiers.get(auth.user.tier).custom_domains;
    if allowed == 0 {
        let billing = format!("{}/billing", state.ctx.app_origin());
        return Err(ApiError::forbidden(
            "TIER_REQUIRED",
            format!(
                "The {} plan has no custom domains; upgrade on {billing} to add one.",
                auth.user.tier
            ),
        )
        .with("upgradeUrl", serde_json::Value::String(billing)));
    }
    let hostname = check_hostname(&b.hostname, &config.server.base_domain)?;
    let exists = || {
        ApiError::conflict(
            "DOMAIN_EXISTS",
            format!("You already added {hostname}; see GET /api/domains for its status."),
        )
    };
    if state
        .store
        .get_custom_domain_of(auth.user.id, &hostname)
        .await?
        .is_some()
    {
        return Err(exists());
    }
    // Only a proven owner holds the name; other accounts' unproven claims do not block this one.
    if state
        .store
        .get_custom_domain_by_hostname(&hostname)
        .await?
        .is_some()
    {
        return Err(taken(&hostname));
    }
    let Some(instance) = state.store.get_instance_by_user(auth.user.id).await? else {
        return Err(ApiError::conflict(
            "NO_INSTANCE",
            "A domain points at your instance; create one first (POST /api/instances).",
        ));
    };
    let existing = state.store.list_custom_domains_of(auth.user.id).await?;
    // The tier's limit counts domains in use (parked ones wait for the plan to allow them);
    // `domains.max_per_user` bounds every claim an account keeps.
    let in_use = existing
        .iter()
        .filter(|d| !matches!(d.status, DomainStatus::Failed | DomainStatus::Parked))
        .count();
    if in_use >= allowed as usize || existing.len() >= config.domains.max_per_user as usize {
        return Err(ApiError::conflict(
            "DOMAIN_LIMIT",
            format!(
                "You have {} domains, the most your {} plan allows; delete one first, or upgrade on {}/billing.",
                existing.len(),
                auth.user.tier,
                state.ctx.app_origin()
            ),
        ));
    }
    let domain = match state
        .store
        .create_custom_domain(auth.user.id, instance.id, &hostname, &new_token()?)
        .await
    {
        Ok(domain) => domain,
        Err(StoreError::Conflict(Conflict::Hostname)) => return Err(exists()),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(user = %auth.user.id, %hostname, "custom domain added");
    certs.wake();
    Ok((
        StatusCode::CREATED,
        Reply(DomainReply {
            domain: DomainView::new(&state, &domain).await?,
        }),
    ))
}

/// `GET /api/domains`: the caller's domains with status, reason, records and next check.
pub async fn list(
    State(state): State<ApiState>,
    auth: AuthUser,
) -> Result<Reply<Domains>, ApiError> {
    let mut domains = Vec::new();
    for domain in state.store.list_custom_domains_of(auth.user.id).await? {
        domains.push(DomainView::new(&state, &domain).await?);
    }
    Ok(Reply(Domains { domains }))
}

/// `POST /api/domains/{hostname}/verify`: the owner's "check again" (after fixing DNS, or to retry
/// a failed order before its backoff is over): back to `verifying` with a new DNS wait; the
/// records and the platform's reachability are checked before any new order, so this cannot make
/// the CA see failed validations.
pub async fn verify(
    State(state): State<ApiState>,
    auth: AuthUser,
    Path(hostname): Path<String>,
) -> Result<(StatusCode, Reply<DomainReply>), ApiError> {
    let hostname = hostname.trim().trim_end_matches('.').to_ascii_lowercase();
    let Some(certs) = state.certs.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "HTTPS_DISABLED",
            "This platform serves no HTTPS (tls.listen is empty), so it cannot serve your domain.",
        ));
    };
    let not_yours = || {
        ApiError::not_found(format!(
            "You have no domain {hostname}; see GET /api/domains."
        ))
    };
    let Some(claim) = state
        .store
        .get_custom_domain_of(auth.user.id, &hostname)
        .await?
    else {
        return Err(not_yours());
    };
    if claim.verified_at.is_none() {
        if let Some(owner) = state.store.get_custom_domain_by_hostname(&hostname).await? {
            if owner.id != claim.id {
                return Err(taken(&hostname));
            }
        }
    }
    let Some(domain) = state
        .store
        .recheck_custom_domain(auth.user.id, &hostname)
        .await?
    else {
        return Err(not_yours());
    };
    if domain.status == DomainStatus::Active {
        return Ok((
            StatusCode::OK,
            Reply(DomainReply {
                domain: DomainView::new(&state, &domain).await?,
            }),
        ));
    }
    tracing::info!(user = %auth.user.id, %hostname, "custom domain re-check asked for");
    certs.wake();
    Ok((
        StatusCode::ACCEPTED,
        Reply(DomainReply {
            domain: DomainView::new(&state, &domain).await?,
        }),
    ))
}

/// `DELETE /api/domains/{hostname}`: removes the caller's domain with its route and certificate;
/// 204.
pub async fn delete(
    State(state): State<ApiState>,
    auth: AuthUser,
    Path(hostname): Path<String>,
) -> Result<StatusCode, ApiError> {
    let hostname = hostname.trim().trim_end_matches('.').to_ascii_lowercase();
    let Some(removed) = state
        .store
        .delete_custom_domain(auth.user.id, &hostname)
        .await?
    else {
        return Err(ApiError::not_found(format!(
            "You have no domain {hostname}; see GET /api/domains."
        )));
    };
    // Only the owner's claim has a route and a certificate; removing an unproven claim must
    // not touch those of the account that owns the name.
    if let (Some(certs), Some(_)) = (&state.certs, removed.verified_at) {
        certs
            .domain_removed(&state.store, &state.bus, &removed.hostname)
            .await
            .map_err(|e| ApiError::internal("removing a domain's certificate", e))?;
    }
    tracing::info!(user = %auth.user.id, hostname = %removed.hostname, "custom domain removed");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /admin/certificates`: every certificate the edge serves, without key material (empty when
/// no HTTPS is served).
pub async fn list_certificates(
    _: Admin,
    State(state): State<ApiState>,
) -> Result<Reply<Certificates>, ApiError> {
    let Some(certs) = &state.certs else {
        return Ok(Reply(Certificates {
            certificates: Vec::new(),
        }));
    };
    let list = certs
        .list(&state.store)
        .await
        .map_err(|e| ApiError::internal("listing certificates", e))?;
    Ok(Reply(Certificates { certificates: list }))
}

/// `POST /admin/certificates/{name}/renew`: renews the certificate now and answers with it; 404
/// for an unknown name.
pub async fn renew_certificate(
    _: Admin,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Reply<CertificateReply>, ApiError> {
    let Some(certs) = &state.certs else {
        return Err(ApiError::not_found("This platform serves no HTTPS."));
    };
    match certs.renew_now(&state.store, &state.bus, &name).await {
        Ok(Some(summary)) => Ok(Reply(CertificateReply {
            certificate: summary,
        })),
        Ok(None) => Err(ApiError::not_found(format!(
            "No certificate is named {name}."
        ))),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "RENEWAL_FAILED",
            format!("The renewal of {name} failed: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punycode_round_trip_examples() {
        assert_eq!(punycode_decode("bcher-kva").as_deref(), Some("bücher"));
        assert_eq!(punycode_decode("mnchen-3ya").as_deref(), Some("münchen"));
        assert_eq!(punycode_decode("zzzzzzzzzzzzzzzzzzzzzzzzzzz"), None);
        assert_eq!(punycode_decode("abc-"), None);
    }

    #[test]
    fn hostnames_are_checked() {
        let base = "clawdeploy.test";
        assert_eq!(
            check_hostname("Shop.Example.COM.", base).unwrap(),
            "shop.example.com"
        );
        for bad in [
            "1.2.3.4",
            "[::1]",
            "*.example.com",
            "clawdeploy.test",
            "alice.clawdeploy.test",
            "xn--zzzzzzzzzzzzzzzzzzzzzzzzzzzz.com",
            "localhost",
            "https://shop.example.com",
            "bücher.de",
        ] {
            assert!(check_hostname(bad, base).is_err(), "{bad}");
        }
        let long = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        assert!(check_hostname(&long, base).is_err());
        assert!(check_hostname("xn--bcher-kva.de", base).is_ok());
    }
}
