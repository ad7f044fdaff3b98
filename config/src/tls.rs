//! `[tls]`, `[acme]`, `[dns]` and `[domains]`: the HTTPS listener, where its certificates come from,
//! how DNS-01 records are written, and how customers' own domains are checked.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::validate_hostname;

/// `[tls]`: the HTTPS listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// HTTPS listener address; empty disables HTTPS.
    pub listen: String,
    /// Where certificates come from: `local-ca` (a CA generated into the data dir signs them; for
    /// development) or `acme` (an ACME CA such as Let's Encrypt, see `[acme]`).
    pub mode: TlsMode,
    /// Answer plain HTTP with a redirect to HTTPS (except ACME challenges and `/healthz`, `/readyz`).
    pub redirect_http: bool,
    /// `Strict-Transport-Security` max-age on HTTPS responses, in seconds; 0 sends no HSTS header.
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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    LocalCa,
    Acme,
}

/// `[acme]`: the ACME CA (RFC 8555) of `tls.mode = "acme"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AcmeConfig {
    /// Directory URL: Let's Encrypt production by default; staging is
    /// `https://acme-staging-v02.api.letsencrypt.org/directory`; any RFC 8555 CA works.
    pub directory_url: String,
    /// Contact email of the ACME account (optional).
    pub contact_email: String,
    /// PEM file of the only root trusted for the CA's API (tests: Pebble's); empty = the system's.
    pub ca_root_file: PathBuf,
    /// External account binding key id (CAs such as ZeroSSL need one); empty = none.
    pub eab_kid: String,
    /// External account binding HMAC key, base64url.
    pub eab_hmac_key: String,
    /// Order `*.<base_domain>` and `<base_domain>` by DNS-01 at start (needs `[dns]`).
    pub wildcard: bool,
    /// How often the renewal scheduler looks for certificates due.
    pub renew_check_secs: u64,
    /// How long to wait for a DNS-01 TXT record to be visible before giving up an order.
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

/// `[dns]`: the DNS provider that writes DNS-01 TXT records for the base domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// `none`, `rfc2136` (dynamic update with TSIG, e.g. BIND) or `cloudflare` (its DNS API).
    pub provider: DnsProviderKind,
    /// rfc2136: the primary server, `IP:port`.
    pub server: String,
    /// rfc2136: the zone updated (e.g. the base domain).
    pub zone: String,
    /// rfc2136: TSIG key name.
    pub tsig_key_name: String,
    /// rfc2136: TSIG secret, base64 (as in BIND's `key` statement).
    pub tsig_secret: String,
    /// rfc2136: TSIG algorithm: `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: String,
    /// cloudflare: API base URL.
    pub cloudflare_api_url: String,
    /// cloudflare: API token with DNS edit rights on the zone.
    pub cloudflare_api_token: String,
    /// cloudflare: the zone id.
    pub cloudflare_zone_id: String,
    /// Where records are looked up to check they are visible (DNS-01 propagation and custom
    /// domain verification), `IP:port`; empty = `server` (rfc2136) or 1.1.1.1:53.
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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DnsProviderKind {
    None,
    Rfc2136,
    Cloudflare,
}

/// `[domains]`: customers' own domains.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DomainsConfig {
    /// Accept `POST /api/domains`.
    pub enabled: bool,
    /// How often pending domains are checked in DNS.
    pub check_interval_secs: u64,
    /// Most domains one user may add.
    pub max_per_user: u32,
    /// How long a domain waits in `pending_dns` for its records before it is `failed` with the
    /// records still missing (the owner's re-check starts a new wait).
    pub pending_dns_timeout_secs: u64,
    /// First delay before a failed domain is checked (and, if its records are right, ordered)
    /// again; it doubles with each failure up to 6 h. The default, 12 min, is the pace at which
    /// Let's Encrypt refills its 5 failed validations per name and hour.
    pub retry_base_secs: u64,
    /// How long a domain may stay unproven (its owner's TXT record never seen) before it is
    /// removed. Unproven claims block no other account, so this only clears abandoned ones.
    pub unverified_ttl_secs: u64,
    /// The port the CA fetches HTTP-01 challenges on, where the platform checks that a domain
    /// reaches it before ordering (80 for every public CA; tests point Pebble elsewhere).
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
