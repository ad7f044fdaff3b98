//! `[tls]`, `[acme]`, `[dns]` and `[domains]`: the HTTPS listener, where its certificates come from,
//! how DNS-01 records are written, and how customers' own domains are checked.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::validate_hostname;

/// `[tls]`: the HTTPS listener.
///
/// How certificates are chosen, why SNI must match Host, and which scheme links and URLs use:
/// [HTTPS at the edge](tls.md#https-at-the-edge).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// HTTPS listener, `IP:port`; production uses `0.0.0.0:443`. Empty serves no HTTPS (and no
    /// custom domains).
    pub listen: String,
    /// `local-ca`: a CA generated once into `<data_dir>/local-ca/` (`ca.pem`, key `ca.key` mode
    /// 0600) signs the base domain's certificate (apex, wildcard and the app domain by name) and
    /// verified custom domains; under a single-label base domain such as `localhost`, where
    /// browsers, curl and OpenSSL refuse a wildcard, it signs a certificate per served host instead
    /// (the dashboard and each instance host, at the handshake, cached); trust `ca.pem` (`curl
    /// --cacert data/local-ca/ca.pem https://app.localhost:8443/healthz`) to use HTTPS on localhost
    /// without an ACME server. `acme`: certificates from an ACME CA (`[acme]`).
    pub mode: TlsMode,
    /// Answer plain HTTP with 308 to the same URL on HTTPS, except ACME HTTP-01 challenges,
    /// `/healthz`, `/readyz` and WebSocket upgrades with a token from loopback (the dashboard's
    /// chat bridge). Production: `true`.
    pub redirect_http: bool,
    /// `Strict-Transport-Security: max-age=N` on HTTPS responses; 0 sends none. Production:
    /// `31536000`.
    pub hsts_max_age_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".into(),
            mode: TlsMode::LocalCa,
            redirect_http: false,
            hsts_max_age_secs: 0,
        }
    }
}

/// Where the edge's certificates come from (`tls.mode`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// `local-ca`: signed by a CA generated into `<data_dir>/local-ca/`, so HTTPS works without an
    /// ACME server (development, tests).
    LocalCa,
    /// `acme`: ordered from the ACME CA of `[acme]`.
    Acme,
}

/// `[acme]`: the ACME CA (RFC 8555) of `tls.mode = "acme"`.
///
/// How certificates are ordered and renewed, with measurements: [ACME](tls.md#acme).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory; the default is Let's Encrypt production. Staging:
    /// `https://acme-staging-v02.api.letsencrypt.org/directory`; any RFC 8555 CA works.
    pub directory_url: String,
    /// Contact of the ACME account (optional).
    pub contact_email: String,
    /// PEM of the only root trusted for the CA's API (tests: Pebble's); empty uses the system's
    /// roots.
    pub ca_root_file: PathBuf,
    /// External account binding (CAs such as ZeroSSL), both or neither (with `eab_hmac_key`): the
    /// key id.
    pub eab_kid: String,
    /// External account binding (CAs such as ZeroSSL), both or neither (with `eab_kid`): the HMAC
    /// key, base64url and masked.
    pub eab_hmac_key: String,
    /// Order `*.<base_domain>` and `<base_domain>` by DNS-01 at start (needs `[dns]`).
    pub wildcard: bool,
    /// How often the scheduler looks for certificates due (10–86400).
    pub renew_check_secs: u64,
    /// How long to wait for a DNS-01 TXT record to be visible before the order fails.
    pub dns_propagation_timeout_secs: u64,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            directory_url: "https://acme-v02.api.letsencrypt.org/directory".into(),
            contact_email: String::new(),
            ca_root_file: PathBuf::new(),
            eab_kid: String::new(),
            eab_hmac_key: String::new(),
            wildcard: true,
            renew_check_secs: 3_600,
            dns_propagation_timeout_secs: 120,
        }
    }
}

/// `[dns]`: the DNS provider writing DNS-01 TXT records for the base domain, and the resolver
/// records are checked with (DNS-01 propagation, custom domain verification).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// `none`, `rfc2136` (dynamic update signed with TSIG, as BIND, Knot or PowerDNS accept it) or
    /// `cloudflare` (Cloudflare's DNS API; tested against a local fake of its documented
    /// `dns_records` endpoints, not against Cloudflare).
    pub provider: DnsProviderKind,
    /// rfc2136: the primary server, `IP:port`.
    pub server: String,
    /// rfc2136: the zone updated, e.g. the base domain.
    pub zone: String,
    /// rfc2136: the TSIG key's name as the server knows it.
    pub tsig_key_name: String,
    /// rfc2136: the TSIG secret, base64 (as in BIND's `key` statement; masked).
    pub tsig_secret: String,
    /// rfc2136: the TSIG algorithm, `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: String,
    /// cloudflare: the API base (plain `http://` only to a loopback test server).
    pub cloudflare_api_url: String,
    /// cloudflare: an API token with DNS edit rights on the zone (masked).
    pub cloudflare_api_token: String,
    /// cloudflare: the zone's id.
    pub cloudflare_zone_id: String,
    /// `IP:port` of the resolver records are looked up at; empty: `server` with rfc2136, else
    /// `1.1.1.1:53`.
    pub resolver: String,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            provider: DnsProviderKind::None,
            server: String::new(),
            zone: String::new(),
            tsig_key_name: String::new(),
            tsig_secret: String::new(),
            tsig_algorithm: "hmac-sha256".into(),
            cloudflare_api_url: "https://api.cloudflare.com/client/v4".into(),
            cloudflare_api_token: String::new(),
            cloudflare_zone_id: String::new(),
            resolver: String::new(),
        }
    }
}

impl DnsConfig {
    /// The resolver records are checked with.
    pub fn resolver_addr(&self) -> String {
        if !self.resolver.is_empty() {
            self.resolver.clone()
        } else if self.provider == DnsProviderKind::Rfc2136 && !self.server.is_empty() {
            self.server.clone()
        } else {
            "1.1.1.1:53".into()
        }
    }
}

/// Which DNS provider writes DNS-01 TXT records (`dns.provider`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DnsProviderKind {
    /// No provider: DNS-01 is unavailable, so no wildcard certificate from ACME.
    None,
    /// RFC 2136 dynamic update signed with TSIG (`dns.server`, `dns.zone`, `dns.tsig_*`).
    Rfc2136,
    /// Cloudflare's DNS API (`dns.cloudflare_*`).
    Cloudflare,
}

/// `[domains]`: customers' own domains (Pro tier and up), see `POST /api/domains`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DomainsConfig {
    /// Accept new custom domains.
    pub enabled: bool,
    /// How often pending domains are checked in DNS (also at once after each `POST`).
    pub check_interval_secs: u64,
    /// Most domains one user may add.
    pub max_per_user: u32,
    /// How long a domain waits in `pending_dns` for its records (or in `verifying` for HTTP to
    /// reach the platform); then it is `failed` with the records still missing and how to fix them.
    /// The owner's `POST /api/domains/{hostname}/verify` starts a new wait.
    pub pending_dns_timeout_secs: u64,
    /// First delay before a `failed` domain is checked (and, when its records are right, ordered)
    /// again; doubles with each failure, at most 6 h. 12 min is the pace at which Let's Encrypt
    /// refills its 5 failed validations per name and hour.
    pub retry_base_secs: u64,
    /// How long a domain may stay unproven (its TXT record never seen) after it was added; then it
    /// is removed (at the scheduler's next check). Unproven claims block no other account, so this
    /// only clears abandoned ones; a proven domain never expires. 3600 to 31536000.
    pub unverified_ttl_secs: u64,
    /// The port the CA fetches HTTP-01 challenges on. Before ordering, the platform fetches a probe
    /// token at `http://<hostname>:<port>/.well-known/acme-challenge/` (resolved through
    /// `dns.resolver`) to check the domain reaches it, so a misrouted domain costs no failed
    /// validation at the CA. 80 for every public CA.
    pub http01_port: u16,
}

impl Default for DomainsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            check_interval_secs: 30,
            max_per_user: 10,
            pending_dns_timeout_secs: 72 * 3_600,
            retry_base_secs: 720,
            unverified_ttl_secs: 7 * 86_400,
            http01_port: 80,
        }
    }
}

pub(crate) fn validate(
    tls: &TlsConfig,
    acme: &AcmeConfig,
    dns: &DnsConfig,
    domains: &DomainsConfig,
    issue: &mut dyn FnMut(bool, &str, &dyn std::fmt::Display, &str),
) {
    issue(
        tls.listen.is_empty() || tls.listen.parse::<SocketAddr>().is_ok(),
        "tls.listen",
        &tls.listen,
        "an IP address and port such as 0.0.0.0:443, or empty to serve no HTTPS",
    );
    issue(
        !tls.redirect_http || !tls.listen.is_empty(),
        "tls.redirect_http",
        &tls.redirect_http,
        "false when tls.listen is empty (there is no HTTPS to redirect to)",
    );
    issue(
        tls.hsts_max_age_secs <= 2 * 365 * 86_400,
        "tls.hsts_max_age_secs",
        &tls.hsts_max_age_secs,
        "0 (no HSTS) to 63072000 seconds (two years)",
    );
    if tls.mode == TlsMode::Acme {
        issue(
            acme.directory_url.starts_with("https://"),
            "acme.directory_url",
            &acme.directory_url,
            "an https:// URL of an ACME directory",
        );
        issue(
            !acme.wildcard || dns.provider != DnsProviderKind::None,
            "acme.wildcard",
            &acme.wildcard,
            "false, or a [dns] provider to answer DNS-01 for the wildcard",
        );
    }
    issue(
        acme.eab_kid.is_empty() == acme.eab_hmac_key.is_empty(),
        "acme.eab_kid",
        &acme.eab_kid,
        "set together with acme.eab_hmac_key (both or neither)",
    );
    issue(
        (10..=86_400).contains(&acme.renew_check_secs),
        "acme.renew_check_secs",
        &acme.renew_check_secs,
        "10 to 86400 seconds",
    );
    issue(
        (1..=3_600).contains(&acme.dns_propagation_timeout_secs),
        "acme.dns_propagation_timeout_secs",
        &acme.dns_propagation_timeout_secs,
        "1 to 3600 seconds",
    );
    let addr_ok = |s: &str| s.parse::<SocketAddr>().is_ok();
    if dns.provider == DnsProviderKind::Rfc2136 {
        issue(
            addr_ok(&dns.server),
            "dns.server",
            &dns.server,
            "the primary DNS server as IP:port, such as 127.0.0.1:53",
        );
        issue(
            validate_hostname(&dns.zone).is_ok(),
            "dns.zone",
            &dns.zone,
            "the zone to update, such as example.com",
        );
        issue(
            !dns.tsig_key_name.is_empty(),
            "dns.tsig_key_name",
            &dns.tsig_key_name,
            "the TSIG key name the server knows",
        );
        issue(
            !dns.tsig_secret.is_empty(),
            "dns.tsig_secret",
            &crate::MASK,
            "the TSIG secret, base64",
        );
        issue(
            matches!(
                dns.tsig_algorithm.as_str(),
                "hmac-sha256" | "hmac-sha384" | "hmac-sha512"
            ),
            "dns.tsig_algorithm",
            &dns.tsig_algorithm,
            "hmac-sha256, hmac-sha384 or hmac-sha512",
        );
    }
    if dns.provider == DnsProviderKind::Cloudflare {
        issue(
            dns.cloudflare_api_url.starts_with("https://")
                || dns.cloudflare_api_url.starts_with("http://127.0.0.1:"),
            "dns.cloudflare_api_url",
            &dns.cloudflare_api_url,
            "https://api.cloudflare.com/client/v4 (plain http only to a loopback test server)",
        );
        issue(
            !dns.cloudflare_api_token.is_empty() && !dns.cloudflare_zone_id.is_empty(),
            "dns.cloudflare_api_token",
            &crate::MASK,
            "an API token with DNS edit rights, and dns.cloudflare_zone_id",
        );
    }
    issue(
        dns.resolver.is_empty() || addr_ok(&dns.resolver),
        "dns.resolver",
        &dns.resolver,
        "IP:port of a DNS resolver, or empty",
    );
    issue(
        (1..=86_400).contains(&domains.check_interval_secs),
        "domains.check_interval_secs",
        &domains.check_interval_secs,
        "1 to 86400 seconds",
    );
    issue(
        (1..=30 * 86_400).contains(&domains.pending_dns_timeout_secs),
        "domains.pending_dns_timeout_secs",
        &domains.pending_dns_timeout_secs,
        "1 to 2592000 seconds (30 days)",
    );
    issue(
        (1..=21_600).contains(&domains.retry_base_secs),
        "domains.retry_base_secs",
        &domains.retry_base_secs,
        "1 to 21600 seconds",
    );
    issue(
        (3_600..=365 * 86_400).contains(&domains.unverified_ttl_secs),
        "domains.unverified_ttl_secs",
        &domains.unverified_ttl_secs,
        "3600 to 31536000 seconds (1 hour to 365 days)",
    );
    issue(
        domains.http01_port != 0,
        "domains.http01_port",
        &domains.http01_port,
        "a TCP port, 80 for public CAs",
    );
    issue(
        domains.max_per_user <= 1000,
        "domains.max_per_user",
        &domains.max_per_user,
        "0 to 1000",
    );
}
