//! PEM chains and keys to rustls `CertifiedKey`s, and the facts the scheduler needs from a chain.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::Error;

/// A chain (leaf first) and its private key as a rustls `CertifiedKey`, signed with ring.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, Error> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Invalid(format!("certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(Error::Invalid("the chain holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Error::Invalid(format!("private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| Error::Invalid(format!("key does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
}

/// What the scheduler and the API show of a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafInfo {
    /// Start of validity (unix ms).
    pub not_before_ms: i64,
    /// End of validity (unix ms).
    pub not_after_ms: i64,
    /// The DNS names of its subject alternative names, as written (wildcards included).
    pub names: Vec<String>,
    /// The serial number in hex, bytes separated by `:` (for logs).
    pub serial_hex: String,
    /// The issuer's distinguished name, attributes in certificate order (`C=US, O=…, CN=…`).
    pub issuer: String,
}

/// Parses the leaf (first) certificate of a PEM chain.
pub fn leaf_info(chain_pem: &str) -> Result<LeafInfo, Error> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| Error::Invalid("the chain holds no certificate".into()))?
        .map_err(|e| Error::Invalid(format!("certificate chain: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| Error::Invalid(format!("certificate: {e}")))?;
    let validity = cert.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    Ok(LeafInfo {
        not_before_ms: validity.not_before.timestamp() * 1000,
        not_after_ms: validity.not_after.timestamp() * 1000,
        names,
        serial_hex: cert.raw_serial_as_string(),
        issuer: cert.issuer().to_string(),
    })
}
