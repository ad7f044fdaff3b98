//! The SNI certificate store the HTTPS listener resolves from during the handshake.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Certificates made during the handshake for names no stored certificate names exactly (the
/// local CA's per-host certificates, [`crate::local_ca::PerHostCerts`]). Synchronous and quick:
/// it runs inside the handshake.
pub trait OnDemand: Send + Sync {
    /// A certificate for `name` (lowercase, no trailing dot), or `None` when this host is not served.
    fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>>;
}

/// Exact names, then certificates made on demand, then one-label wildcards (`*.example.com`
/// stored under `example.com`), then a fallback.
///
/// `resolve` runs synchronously inside every handshake: a few map reads, no I/O. A new
/// certificate replaces the map entry; handshakes already done keep the key they negotiated, so
/// open connections (WebSockets included) are untouched by a swap.
#[derive(Default)]
pub struct CertStore {
    exact: DashMap<String, Arc<CertifiedKey>>,
    wildcard: DashMap<String, Arc<CertifiedKey>>,
    fallback: ArcSwapOption<CertifiedKey>,
    on_demand: OnceLock<Arc<dyn OnDemand>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("exact", &self.exact.len())
            .field("wildcard", &self.wildcard.len())
            .finish()
    }
}

impl CertStore {
    /// An empty store: every handshake fails until a certificate or a fallback is installed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Serves `key` for every name it covers (`*.x` names go to the wildcard map).
    pub fn install(&self, names: &[String], key: Arc<CertifiedKey>) {
        for name in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => {
                    self.wildcard.insert(parent.to_string(), key.clone());
                }
                None => {
                    self.exact.insert(name, key.clone());
                }
            }
        }
    }

    /// Stops serving the certificate of these names.
    pub fn remove(&self, names: &[String]) {
        for name in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.remove(parent),
                None => self.exact.remove(&name),
            };
        }
    }

    /// Makes certificates during the handshake for names with no exact certificate (set once).
    pub fn set_on_demand(&self, on_demand: Arc<dyn OnDemand>) {
        let _ = self.on_demand.set(on_demand);
    }

    /// The certificate for clients that send an unknown name or none.
    pub fn set_fallback(&self, key: Arc<CertifiedKey>) {
        self.fallback.store(Some(key));
    }

    /// What a handshake for `sni` gets.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            if let Some(key) = self.exact.get(&sni) {
                return Some(key.value().clone());
            }
            if let Some(key) = self.on_demand.get().and_then(|o| o.certificate(&sni)) {
                return Some(key);
            }
            if let Some((_, parent)) = sni.split_once('.') {
                if let Some(key) = self.wildcard.get(parent) {
                    return Some(key.value().clone());
                }
            }
        }
        self.fallback.load_full()
    }

    /// Whether a name (not the fallback) has a certificate.
    pub fn covers(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.exact.contains_key(&name)
            || name
                .split_once('.')
                .is_some_and(|(_, parent)| self.wildcard.contains_key(parent))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}
