//! A local certificate authority for development: generated once into `<data_dir>/local-ca/`
//! (add `ca.pem` to a browser or `curl --cacert` to trust it), it signs ECDSA P-256 certificates
//! for the base domain's wildcard and apex, verified custom domains and the fallback, and one
//! certificate per served host, made at the first handshake ([`PerHostCerts`]): OpenSSL, curl and
//! Chromium refuse a wildcard directly under a special-use name or public suffix (`*.localhost`,
//! `NET::ERR_CERT_COMMON_NAME_INVALID`), so `<sub>.localhost` needs a certificate of its own.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::sign::CertifiedKey;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use crate::pem::certified_key;
use crate::store::OnDemand;
use crate::Error;

/// How long a locally signed leaf lives (renewed at two thirds, like ACME certificates).
pub const LEAF_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

const CA_NAME: &str = "ClawDeploy local development CA";

/// A certificate authority of this installation (`ca.pem` and `ca.key` in its directory, valid ten
/// years), which signs the edge's leaves when no ACME CA is configured.
pub struct LocalCa {
    dir: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").field("dir", &self.dir).finish()
    }
}

fn ca_params() -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "ClawDeploy");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl LocalCa {
    /// Loads the CA from `dir`, or creates it (key file mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<Self, Error> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if cert_path.exists() && key_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path)?;
            let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)?;
            // The issuer needs only the CA's name, key and key id method: the same params as
            // at creation rebuild it exactly.
            let issuer = Issuer::new(ca_params()?, key);
            return Ok(Self {
                dir: dir.to_path_buf(),
                cert_pem,
                issuer,
            });
        }
        std::fs::create_dir_all(dir)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params()?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, cert.pem())?;
        tracing::info!(path = %cert_path.display(), "local CA created; trust this file to use HTTPS without warnings");
        Ok(Self {
            dir: dir.to_path_buf(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(ca_params()?, key),
        })
    }

    /// The CA certificate clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where the CA certificate is (`<dir>/ca.pem`): the file to make clients trust.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Signs a fresh ECDSA P-256 leaf for `names`: (chain PEM with the CA, key PEM).
    pub fn issue(&self, names: &[String]) -> Result<(String, String), Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map_or("clawdeploy", String::as_str),
        );
        params.distinguished_name = dn;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::seconds(LEAF_LIFETIME.as_secs() as i64);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }
}

/// Per-host certificates signed by the local CA at the first handshake for a host the edge serves
/// (`serves` says which: the dashboard host and instance hosts), kept in memory, least recently
/// used first out past `capacity`, signed again at two thirds of [`LEAF_LIFETIME`]. Signing a
/// P-256 leaf takes well under a millisecond, so it is done inside the handshake.
pub struct PerHostCerts {
    ca: Arc<LocalCa>,
    serves: Box<dyn Fn(&str) -> bool + Send + Sync>,
    cache: Mutex<lru::LruCache<String, (Arc<CertifiedKey>, Instant)>>,
}

impl PerHostCerts {
    /// Signs for the names `serves` accepts, keeping at most `capacity` certificates.
    pub fn new(
        ca: Arc<LocalCa>,
        capacity: NonZeroUsize,
        serves: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            ca,
            serves: Box::new(serves),
            cache: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// How many certificates are kept now.
    pub fn len(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }

    /// True when no certificate is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl OnDemand for PerHostCerts {
    fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if !(self.serves)(name) {
            return None;
        }
        let fresh = LEAF_LIFETIME * 2 / 3;
        if let Ok(mut cache) = self.cache.lock() {
            if let Some((key, made)) = cache.get(name) {
                if made.elapsed() < fresh {
                    return Some(key.clone());
                }
            }
        }
        // Signed outside the lock; two handshakes racing for a new host both sign, one is kept.
        let signed = self
            .ca
            .issue(&[name.to_string()])
            .and_then(|(chain, key)| certified_key(&chain, &key));
        match signed {
            Ok(key) => {
                if let Ok(mut cache) = self.cache.lock() {
                    cache.put(name.to_string(), (key.clone(), Instant::now()));
                }
                Some(key)
            }
            Err(e) => {
                tracing::warn!(%name, "local CA could not sign a certificate: {e}");
                None
            }
        }
    }
}

/// A self-signed certificate for clients whose SNI names nothing served here: it names nothing
/// real, so no tenant's certificate is ever shown to a stranger.
pub fn fallback_certificate() -> Result<(String, String), Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec!["unknown-host.invalid".to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "ClawDeploy: unknown host");
    params.distinguished_name = dn;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(contents.as_bytes())
}
