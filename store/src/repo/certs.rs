//! Certificates, ACME accounts, per-name order locks and customers' own domains (issue #6).
//! Private keys and account credentials are sealed with the [`Keyring`]; only the certificate
//! chain (public) is stored in clear.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{conflict_or, Conflict, Result, StoreError};
use crate::secrets::Keyring;
use crate::time::now_ms;
use crate::{Store, Zeroizing};

/// A stored certificate with its key still sealed.
#[derive(Clone)]
pub struct CertificateRecord {
    /// The primary name, the record's key: the base domain (its certificate covers the apex and
    /// the wildcard) or a custom domain.
    pub name: String,
    /// Every DNS name the certificate covers.
    pub domains: Vec<String>,
    /// The certificate chain, PEM, leaf first.
    pub chain_pem: String,
    /// The private key (PKCS#8 PEM) sealed with the [`Keyring`]; open it with
    /// [`CertificateRecord::open_key`].
    pub key_sealed: String,
    /// Who signed it: `acme` or `local-ca`.
    pub issuer: String,
    /// Start of the leaf's validity (unix ms).
    pub not_before: i64,
    /// End of the leaf's validity (unix ms).
    pub not_after: i64,
    /// When the scheduler orders a successor (unix ms): in the CA's renewal window (ARI), else 2/3
    /// into the lifetime; moved later after a failure.
    pub renew_at: i64,
    /// Failed renewals since this certificate was stored.
    pub failures: i64,
    /// Why the last renewal failed; `None` when none has since this certificate was stored.
    pub last_error: Option<String>,
    /// When the row last changed (unix ms).
    pub updated_at: i64,
}

impl std::fmt::Debug for CertificateRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateRecord")
            .field("name", &self.name)
            .field("domains", &self.domains)
            .field("issuer", &self.issuer)
            .field("not_after", &self.not_after)
            .field("renew_at", &self.renew_at)
            .finish_non_exhaustive()
    }
}

impl CertificateRecord {
    /// The private key PEM, opened with the keyring.
    pub fn open_key(&self, keyring: &Keyring) -> Result<Zeroizing<String>> {
        Ok(keyring.open_str(&self.key_sealed)?)
    }
}

/// Where a custom domain is in its lifecycle.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainStatus {
    /// Waiting for the customer's CNAME and TXT records.
    PendingDns,
    /// Records seen; being confirmed.
    Verifying,
    /// Verified; the certificate is being ordered.
    Issuing,
    /// Certificate served and route active.
    Active,
    /// Given up; `reason` says what to fix.
    Failed,
    /// Kept but not served: the account's tier allows fewer custom domains (after a downgrade);
    /// served again when the tier allows it.
    Parked,
}

impl DomainStatus {
    /// The name as stored and serialized, e.g. `pending_dns`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingDns => "pending_dns",
            Self::Verifying => "verifying",
            Self::Issuing => "issuing",
            Self::Active => "active",
            Self::Failed => "failed",
            Self::Parked => "parked",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending_dns" => Self::PendingDns,
            "verifying" => Self::Verifying,
            "issuing" => Self::Issuing,
            "active" => Self::Active,
            "failed" => Self::Failed,
            "parked" => Self::Parked,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "custom_domains.status: {other:?}"
                )))
            }
        })
    }
}

/// One account's claim on a custom domain, and, once proven, the domain routed to its instance.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomDomain {
    /// The claim's id (UUID v4).
    pub id: Uuid,
    /// The claiming user's id.
    pub user_id: Uuid,
    /// The id of the instance it is to serve.
    pub instance_id: Uuid,
    /// The domain, lower case. Several claims may name it; at most one is verified.
    pub hostname: String,
    /// The value the customer puts in `_clawdeploy-challenge.<hostname>` TXT (not a secret: it
    /// is published in DNS).
    pub token: String,
    /// Where it is in its lifecycle.
    pub status: DomainStatus,
    /// When `failed`: what the customer should fix.
    pub reason: Option<String>,
    /// When the claim was added (unix ms); an unproven claim expires counted from here.
    pub created_at: i64,
    /// When the row last changed (unix ms).
    pub updated_at: i64,
    /// When this claim's records (its own token) were seen in DNS: from then on it owns the
    /// hostname, and no other claim on it can be proven. Set for at most one claim per hostname.
    pub verified_at: Option<i64>,
    /// When the current wait for DNS records began (creation or the owner's last re-check);
    /// `pending_dns` times out from here.
    pub pending_since: i64,
    /// Failed checks or orders since the last success or re-check (the backoff exponent).
    pub attempts: i64,
    /// When a failed domain is checked again (0: at the next pass).
    pub next_check_at: i64,
}

fn uuid_col(row: &AnyRow, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|_| StoreError::Corrupt(format!("{col}: not a uuid")))
}

fn domain_from_row(row: &AnyRow) -> Result<CustomDomain> {
    let status: String = row.try_get("status")?;
    Ok(CustomDomain {
        id: uuid_col(row, "id")?,
        user_id: uuid_col(row, "user_id")?,
        instance_id: uuid_col(row, "instance_id")?,
        hostname: row.try_get("hostname")?,
        token: row.try_get("token")?,
        status: DomainStatus::parse(&status)?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        verified_at: row.try_get("verified_at")?,
        pending_since: row.try_get("pending_since")?,
        attempts: row.try_get("attempts")?,
        next_check_at: row.try_get("next_check_at")?,
    })
}

fn cert_from_row(row: &AnyRow) -> Result<CertificateRecord> {
    let domains: String = row.try_get("domains")?;
    Ok(CertificateRecord {
        name: row.try_get("name")?,
        domains: serde_json::from_str(&domains)
            .map_err(|_| StoreError::Corrupt("certificates.domains: not a JSON list".into()))?,
        chain_pem: row.try_get("chain_pem")?,
        key_sealed: row.try_get("key_sealed")?,
        issuer: row.try_get("issuer")?,
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
        renew_at: row.try_get("renew_at")?,
        failures: row.try_get("failures")?,
        last_error: row.try_get("last_error")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const CERT_COLUMNS: &str = "name, domains, chain_pem, key_sealed, issuer, not_before, not_after, renew_at, failures, last_error, updated_at";
const DOMAIN_COLUMNS: &str = "id, user_id, instance_id, hostname, token, status, reason, created_at, updated_at, verified_at, \
     pending_since, attempts, next_check_at";

impl Store {
    /// Stores (or replaces) a certificate; the key is sealed here. Clears failures.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_certificate(
        &self,
        keyring: &Keyring,
        name: &str,
        domains: &[String],
        chain_pem: &str,
        key_pem: &str,
        issuer: &str,
        not_before: i64,
        not_after: i64,
        renew_at: i64,
    ) -> Result<()> {
        let sealed = keyring.seal_str(key_pem)?;
        let domains = serde_json::to_string(domains)
            .map_err(|e| StoreError::Invalid(format!("domains: {e}")))?;
        sqlx::query(
            "INSERT INTO certificates (name, domains, chain_pem, key_sealed, issuer, not_before, not_after, renew_at, failures, last_error, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, NULL, $9) \
             ON CONFLICT (name) DO UPDATE SET domains = excluded.domains, chain_pem = excluded.chain_pem, \
             key_sealed = excluded.key_sealed, issuer = excluded.issuer, not_before = excluded.not_before, \
             not_after = excluded.not_after, renew_at = excluded.renew_at, failures = 0, last_error = NULL, \
             updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(domains)
        .bind(chain_pem)
        .bind(sealed)
        .bind(issuer)
        .bind(not_before)
        .bind(not_after)
        .bind(renew_at)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The certificate stored under this primary name.
    pub async fn get_certificate(&self, name: &str) -> Result<Option<CertificateRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(cert_from_row).transpose()
    }

    /// Every stored certificate, by name.
    pub async fn list_certificates(&self) -> Result<Vec<CertificateRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cert_from_row).collect()
    }

    /// Certificates whose renewal time has come.
    pub async fn certificates_due(&self, now: i64) -> Result<Vec<CertificateRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE renew_at <= $1 ORDER BY renew_at"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cert_from_row).collect()
    }

    /// Moves the renewal time (ARI window, or a retry after a failure with its reason).
    pub async fn set_certificate_renewal(
        &self,
        name: &str,
        renew_at: i64,
        failed: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE certificates SET renew_at = $2, \
             failures = CASE WHEN $3 IS NULL THEN failures ELSE failures + 1 END, \
             last_error = COALESCE($3, last_error), updated_at = $4 WHERE name = $1",
        )
        .bind(name)
        .bind(renew_at)
        .bind(failed)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a certificate; false when there was none.
    pub async fn delete_certificate(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM certificates WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The sealed ACME account credentials (JSON) for a CA directory.
    pub async fn get_acme_account(
        &self,
        keyring: &Keyring,
        directory_url: &str,
    ) -> Result<Option<Zeroizing<String>>> {
        let row =
            sqlx::query("SELECT credentials_sealed FROM acme_accounts WHERE directory_url = $1")
                .bind(directory_url)
                .fetch_optional(&self.pool)
                .await?;
        match row {
            Some(row) => {
                let sealed: String = row.try_get("credentials_sealed")?;
                Ok(Some(keyring.open_str(&sealed)?))
            }
            None => Ok(None),
        }
    }

    /// Stores the account unless another node stored one first; returns the credentials in use.
    pub async fn put_acme_account(
        &self,
        keyring: &Keyring,
        directory_url: &str,
        credentials_json: &str,
    ) -> Result<Zeroizing<String>> {
        let sealed = keyring.seal_str(credentials_json)?;
        sqlx::query(
            "INSERT INTO acme_accounts (directory_url, credentials_sealed, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (directory_url) DO NOTHING",
        )
        .bind(directory_url)
        .bind(sealed)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.get_acme_account(keyring, directory_url)
            .await?
            .ok_or(StoreError::NotFound("acme account"))
    }

    /// Takes (or renews) the order lock of `name` for `holder` until `expires_at`; false when
    /// another holder has it and it has not expired.
    pub async fn try_lock_certificate(
        &self,
        name: &str,
        holder: &str,
        expires_at: i64,
    ) -> Result<bool> {
        let row = sqlx::query(
            "INSERT INTO cert_locks (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE cert_locks.expires_at < $4 OR cert_locks.holder = excluded.holder \
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(expires_at)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Releases the order lock of `name` if `holder` still has it.
    pub async fn unlock_certificate(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM cert_locks WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Adds this user's claim on a custom domain, in `pending_dns`; `Conflict::Hostname` when the
    /// user already has one. Other accounts' claims do not block it: several accounts may claim
    /// a hostname, each with its own token, until one proves it ([`Store::prove_custom_domain`]).
    pub async fn create_custom_domain(
        &self,
        user_id: Uuid,
        instance_id: Uuid,
        hostname: &str,
        token: &str,
    ) -> Result<CustomDomain> {
        let now = now_ms();
        let row = sqlx::query(&format!(
            "INSERT INTO custom_domains (id, user_id, instance_id, hostname, token, status, reason, created_at, updated_at, verified_at, \
             pending_since, attempts, next_check_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending_dns', NULL, $6, $6, NULL, $6, 0, 0) RETURNING {DOMAIN_COLUMNS}"
        ))
        .bind(Uuid::new_v4().to_string())
        .bind(user_id.to_string())
        .bind(instance_id.to_string())
        .bind(hostname)
        .bind(token)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict_or(e, Conflict::Hostname))?;
        domain_from_row(&row)
    }

    /// The claim that owns `hostname`: the one whose DNS records proved it (`verified_at` set;
    /// at most one per hostname, by the `custom_domains_owner` index). Unproven claims own
    /// nothing and are never returned here.
    pub async fn get_custom_domain_by_hostname(
        &self,
        hostname: &str,
    ) -> Result<Option<CustomDomain>> {
        let row = sqlx::query(&format!(
            "SELECT {DOMAIN_COLUMNS} FROM custom_domains WHERE hostname = $1 AND verified_at IS NOT NULL"
        ))
        .bind(hostname)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(domain_from_row).transpose()
    }

    /// One claim by its id.
    pub async fn get_custom_domain(&self, id: Uuid) -> Result<Option<CustomDomain>> {
        let row = sqlx::query(&format!(
            "SELECT {DOMAIN_COLUMNS} FROM custom_domains WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(domain_from_row).transpose()
    }

    /// This user's claim on `hostname`, proven or not.
    pub async fn get_custom_domain_of(
        &self,
        user_id: Uuid,
        hostname: &str,
    ) -> Result<Option<CustomDomain>> {
        let row = sqlx::query(&format!(
            "SELECT {DOMAIN_COLUMNS} FROM custom_domains WHERE user_id = $1 AND hostname = $2"
        ))
        .bind(user_id.to_string())
        .bind(hostname)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(domain_from_row).transpose()
    }

    /// Records that this claim's DNS records (its own TXT token) were seen: it now owns the
    /// hostname. One statement against the `custom_domains_owner` index, so of two claims proven
    /// at once (two nodes) exactly one wins; the other gets `Conflict::DomainVerified`. Proving
    /// an owner again keeps its first time. `None` when the claim is gone.
    pub async fn prove_custom_domain(&self, id: Uuid) -> Result<Option<CustomDomain>> {
        let row = sqlx::query(&format!(
            "UPDATE custom_domains SET verified_at = COALESCE(verified_at, $2), updated_at = $2 \
             WHERE id = $1 RETURNING {DOMAIN_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| conflict_or(e, Conflict::DomainVerified))?;
        row.as_ref().map(domain_from_row).transpose()
    }

    /// Deletes the claims never proven that were added before `created_before` (unix ms), so
    /// abandoned claims do not pile up; returns them.
    pub async fn expire_custom_domain_claims(
        &self,
        created_before: i64,
    ) -> Result<Vec<CustomDomain>> {
        let rows = sqlx::query(&format!(
            "DELETE FROM custom_domains WHERE verified_at IS NULL AND created_at < $1 RETURNING {DOMAIN_COLUMNS}"
        ))
        .bind(created_before)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(domain_from_row).collect()
    }

    /// A user's claims, proven or not, oldest first.
    pub async fn list_custom_domains_of(&self, user_id: Uuid) -> Result<Vec<CustomDomain>> {
        let rows = sqlx::query(&format!(
            "SELECT {DOMAIN_COLUMNS} FROM custom_domains WHERE user_id = $1 ORDER BY created_at, hostname"
        ))
        .bind(user_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(domain_from_row).collect()
    }

    /// Every claim of every user, oldest first.
    pub async fn list_custom_domains(&self) -> Result<Vec<CustomDomain>> {
        let rows = sqlx::query(&format!(
            "SELECT {DOMAIN_COLUMNS} FROM custom_domains ORDER BY created_at, hostname"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(domain_from_row).collect()
    }

    /// Marks a domain failed with what to fix, counts the failure and sets when it is checked
    /// again (the caller's backoff).
    pub async fn fail_custom_domain(
        &self,
        id: Uuid,
        reason: &str,
        next_check_at: i64,
    ) -> Result<Option<CustomDomain>> {
        let row = sqlx::query(&format!(
            "UPDATE custom_domains SET status = 'failed', reason = $2, updated_at = $3, \
             attempts = attempts + 1, next_check_at = $4 WHERE id = $1 RETURNING {DOMAIN_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(reason)
        .bind(now_ms())
        .bind(next_check_at)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(domain_from_row).transpose()
    }

    /// The owner's "check again": back to `verifying` now, with a new DNS timeout window; the
    /// failure count (backoff) is kept. `None` when the user has no such domain.
    pub async fn recheck_custom_domain(
        &self,
        user_id: Uuid,
        hostname: &str,
    ) -> Result<Option<CustomDomain>> {
        let now = now_ms();
        let row = sqlx::query(&format!(
            "UPDATE custom_domains SET status = CASE WHEN status = 'active' THEN status ELSE 'verifying' END, \
             reason = CASE WHEN status = 'active' THEN reason ELSE NULL END, \
             pending_since = $3, next_check_at = 0, updated_at = $3 \
             WHERE user_id = $1 AND hostname = $2 RETURNING {DOMAIN_COLUMNS}"
        ))
        .bind(user_id.to_string())
        .bind(hostname)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(domain_from_row).transpose()
    }

    /// Stores an HTTP-01 key authorization for every node to answer until `expires_at`.
    pub async fn put_acme_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        name: &str,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_challenges (token, key_authorization, name, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (token) DO UPDATE SET key_authorization = excluded.key_authorization, \
             name = excluded.name, expires_at = excluded.expires_at",
        )
        .bind(token)
        .bind(key_authorization)
        .bind(name)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The key authorization of an open (unexpired) challenge.
    pub async fn get_acme_challenge(&self, token: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT key_authorization FROM acme_challenges WHERE token = $1 AND expires_at > $2",
        )
        .bind(token)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get("key_authorization").map_err(Into::into))
            .transpose()
    }

    /// Forgets a challenge once its order is done.
    pub async fn delete_acme_challenge(&self, token: &str) -> Result<()> {
        sqlx::query("DELETE FROM acme_challenges WHERE token = $1")
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Drops challenges of orders that ended without cleaning up (a crashed node).
    pub async fn delete_expired_acme_challenges(&self) -> Result<u64> {
        let done = sqlx::query("DELETE FROM acme_challenges WHERE expires_at <= $1")
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Moves a domain to `status` (with the reason when failed); returns the updated row.
    /// Becoming active clears the failure count and the retry time. `issuing` and `active`
    /// prove the claim too (`Conflict::DomainVerified` when another claim owns the hostname).
    pub async fn set_custom_domain_status(
        &self,
        id: Uuid,
        status: DomainStatus,
        reason: Option<&str>,
    ) -> Result<Option<CustomDomain>> {
        let now = now_ms();
        let verified = matches!(status, DomainStatus::Issuing | DomainStatus::Active);
        let row = sqlx::query(&format!(
            "UPDATE custom_domains SET status = $2, reason = $3, updated_at = $4, \
             verified_at = CASE WHEN $5 = 1 THEN COALESCE(verified_at, $4) ELSE verified_at END, \
             attempts = CASE WHEN $2 = 'active' THEN 0 ELSE attempts END, \
             next_check_at = CASE WHEN $2 = 'active' THEN 0 ELSE next_check_at END \
             WHERE id = $1 RETURNING {DOMAIN_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(status.as_str())
        .bind(reason)
        .bind(now)
        .bind(i64::from(verified))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| conflict_or(e, Conflict::DomainVerified))?;
        row.as_ref().map(domain_from_row).transpose()
    }

    /// Removes a user's domain; returns it when it existed.
    pub async fn delete_custom_domain(
        &self,
        user_id: Uuid,
        hostname: &str,
    ) -> Result<Option<CustomDomain>> {
        let row = sqlx::query(&format!(
            "DELETE FROM custom_domains WHERE user_id = $1 AND hostname = $2 RETURNING {DOMAIN_COLUMNS}"
        ))
        .bind(user_id.to_string())
        .bind(hostname)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(domain_from_row).transpose()
    }

    /// Parks a user's domains past the first `keep` (oldest kept; failed ones are left as they
    /// are): they stop being served and checked, and keep their records and certificates. The
    /// hostnames parked.
    pub async fn park_custom_domains(
        &self,
        user_id: Uuid,
        keep: u32,
        reason: &str,
    ) -> Result<Vec<String>> {
        let domains = self.list_custom_domains_of(user_id).await?;
        let mut parked = Vec::new();
        let live = domains
            .iter()
            .filter(|d| !matches!(d.status, DomainStatus::Failed | DomainStatus::Parked));
        for d in live.skip(keep as usize) {
            sqlx::query(
                "UPDATE custom_domains SET status = 'parked', reason = $2, updated_at = $3 \
                 WHERE id = $1 AND status NOT IN ('failed', 'parked')",
            )
            .bind(d.id.to_string())
            .bind(reason)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
            parked.push(d.hostname.clone());
        }
        Ok(parked)
    }

    /// Serves a user's parked domains again, oldest first, while the account has fewer than
    /// `allowed` domains in use: a proven one is active at once (its certificate was kept), an
    /// unproven one waits for its DNS records again. The domains unparked.
    pub async fn unpark_custom_domains(
        &self,
        user_id: Uuid,
        allowed: u32,
    ) -> Result<Vec<CustomDomain>> {
        let domains = self.list_custom_domains_of(user_id).await?;
        let in_use = domains
            .iter()
            .filter(|d| !matches!(d.status, DomainStatus::Failed | DomainStatus::Parked))
            .count();
        let room = (allowed as usize).saturating_sub(in_use);
        let now = now_ms();
        let mut unparked = Vec::new();
        for d in domains
            .iter()
            .filter(|d| d.status == DomainStatus::Parked)
            .take(room)
        {
            let row = sqlx::query(&format!(
                "UPDATE custom_domains SET status = CASE WHEN verified_at IS NULL \
                 THEN 'pending_dns' ELSE 'active' END, reason = NULL, updated_at = $2, \
                 pending_since = $2, attempts = 0, next_check_at = 0 \
                 WHERE id = $1 AND status = 'parked' RETURNING {DOMAIN_COLUMNS}"
            ))
            .bind(d.id.to_string())
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                unparked.push(domain_from_row(&row)?);
            }
        }
        Ok(unparked)
    }
}
