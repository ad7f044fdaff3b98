//! ACME orders (RFC 8555) through instant-acme: one account per CA directory, kept sealed in the
//! store; DNS-01 for the base domain's wildcard and apex, HTTP-01 for customers' domains; ARI
//! (RFC 9773) renewal windows where the CA offers them.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use clawdeploy_config::AcmeConfig;
use clawdeploy_store::{Keyring, Store};

use crate::challenges::Http01Challenges;
use crate::dns::{DnsProvider, Resolver};
use crate::Error;

/// How an order proves control of its names.
pub enum Proof<'a> {
    /// HTTP-01, answered by every edge node's HTTP listener until `expires_at` (unix ms).
    Http01 {
        /// Where the challenge tokens are put (this node, and the store for the others).
        challenges: &'a Http01Challenges,
        /// When the stored tokens may be pruned (unix ms).
        expires_at: i64,
    },
    /// DNS-01 through a provider, checked visible at `resolver` before the CA is told.
    Dns01 {
        /// Publishes and removes the `_acme-challenge` TXT records.
        provider: &'a dyn DnsProvider,
        /// Where the TXT records are checked visible.
        resolver: &'a Resolver,
        /// How long to wait for the records to become visible before giving up.
        propagation_timeout: Duration,
    },
}

/// An issued certificate: chain PEM (leaf first) and its private key PEM.
pub struct Issued {
    /// The certificate chain in PEM, leaf first.
    pub chain_pem: String,
    /// The leaf's private key in PEM (ECDSA P-256, generated for this order).
    pub key_pem: String,
}

/// The ACME account of one CA directory.
#[derive(Clone)]
pub struct AcmeClient {
    account: Account,
    directory_url: String,
}

impl AcmeClient {
    /// Loads the CA's account from the store, or creates it there (another node's account wins
    /// if two create at once).
    pub async fn connect(
        store: &Store,
        keyring: &Keyring,
        config: &AcmeConfig,
    ) -> Result<Self, Error> {
        let builder = || {
            if config.ca_root_file.as_os_str().is_empty() {
                Account::builder()
            } else {
                // Only this root is trusted for the CA's API (Pebble's test CA in tests).
                Account::builder_with_root(&config.ca_root_file)
            }
        };
        let directory_url = config.directory_url.clone();
        if let Some(credentials) = store.get_acme_account(keyring, &directory_url).await? {
            let credentials = serde_json::from_str(&credentials)
                .map_err(|e| Error::Acme(format!("stored account credentials: {e}")))?;
            let account = builder()?.from_credentials(credentials).await?;
            return Ok(Self {
                account,
                directory_url,
            });
        }
        let contact =
            (!config.contact_email.is_empty()).then(|| format!("mailto:{}", config.contact_email));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = if config.eab_kid.is_empty() {
            None
        } else {
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(config.eab_hmac_key.trim_end_matches('='))
                .map_err(|_| Error::Acme("acme.eab_hmac_key is not base64url".into()))?;
            Some(ExternalAccountKey::new(config.eab_kid.clone(), &key))
        };
        let (_, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory_url.clone(),
                eab.as_ref(),
            )
            .await?;
        let json = serde_json::to_string(&credentials)
            .map_err(|e| Error::Acme(format!("account credentials: {e}")))?;
        let stored = store
            .put_acme_account(keyring, &directory_url, &json)
            .await?;
        let credentials = serde_json::from_str(&stored)
            .map_err(|e| Error::Acme(format!("stored account credentials: {e}")))?;
        let account = builder()?.from_credentials(credentials).await?;
        tracing::info!(directory = %directory_url, "ACME account ready");
        Ok(Self {
            account,
            directory_url,
        })
    }

    /// An already connected account (embedding, and tests with a recorded CA).
    pub fn from_account(account: Account, directory_url: &str) -> Self {
        Self {
            account,
            directory_url: directory_url.to_string(),
        }
    }

    /// The CA's directory URL (`acme.directory_url`), which keys the account in the store.
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    /// Orders a certificate for `names` (a fresh ECDSA P-256 key) and waits for it.
    pub async fn order(
        &self,
        names: &[String],
        proof: Proof<'_>,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<Issued, Error> {
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut new_order = NewOrder::new(&identifiers);
        if let Some(replaces) = replaces {
            new_order = new_order.replaces(replaces);
        }
        let mut order = self.account.new_order(&new_order).await?;
        let mut http_tokens = Vec::new();
        let mut txt_records = Vec::new();
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(Error::Acme(format!(
                            "authorization for {} is {other:?}",
                            authz.identifier()
                        )))
                    }
                }
                let kind = match proof {
                    Proof::Http01 { .. } => ChallengeType::Http01,
                    Proof::Dns01 { .. } => ChallengeType::Dns01,
                };
                let mut challenge = authz
                    .challenge(kind.clone())
                    .ok_or_else(|| Error::Acme(format!("the CA offers no {kind:?} challenge")))?;
                let key_auth = challenge.key_authorization();
                match &proof {
                    Proof::Http01 {
                        challenges,
                        expires_at,
                    } => {
                        // Stored before the CA is told, so any node can answer it.
                        http_tokens.push(challenge.token.clone());
                        challenges
                            .insert(
                                &challenge.token,
                                key_auth.as_str(),
                                &names.join(","),
                                *expires_at,
                            )
                            .await?;
                    }
                    Proof::Dns01 {
                        provider,
                        resolver,
                        propagation_timeout,
                    } => {
                        // The wildcard's identifier is the base name: both share the TXT name.
                        let Identifier::Dns(domain) = challenge.identifier().identifier else {
                            return Err(Error::Acme("not a DNS identifier".into()));
                        };
                        let name = format!("_acme-challenge.{domain}");
                        let value = key_auth.dns_value();
                        provider.add_txt(&name, &value).await?;
                        txt_records.push((name.clone(), value.clone()));
                        resolver
                            .wait_for_txt(&name, &value, *propagation_timeout)
                            .await?;
                    }
                }
                challenge.set_ready().await?;
            }
            let retry = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .backoff(1.5)
                .timeout(Duration::from_secs(90));
            let status = order.poll_ready(&retry).await?;
            if status != OrderStatus::Ready {
                return Err(Error::Acme(format!("order ended {status:?}")));
            }
            let key_pem = order.finalize().await?;
            let chain_pem = order.poll_certificate(&retry).await?;
            Ok(Issued { chain_pem, key_pem })
        }
        .await;
        // Challenges never outlive their order, whatever happened.
        if let Proof::Http01 { challenges, .. } = &proof {
            for token in &http_tokens {
                challenges.remove(token).await;
            }
        }
        if let Proof::Dns01 { provider, .. } = &proof {
            for (name, value) in &txt_records {
                if let Err(e) = provider.remove_txt(name, value).await {
                    tracing::warn!(%name, "cannot remove a DNS-01 record: {e}");
                }
            }
        }
        result
    }

    /// The CA's suggested renewal window for a certificate (ARI), in unix ms; `None` when the
    /// CA has no ARI endpoint.
    pub async fn renewal_window(&self, chain_pem: &str) -> Result<Option<(i64, i64)>, Error> {
        let Some(id) = certificate_id(chain_pem)? else {
            return Ok(None);
        };
        match self.account.renewal_info(&id).await {
            Ok((info, _retry_after)) => {
                let start = info.suggested_window.start.unix_timestamp() * 1000;
                let end = info.suggested_window.end.unix_timestamp() * 1000;
                Ok(Some((start, end)))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The RFC 9773 identifier of a chain's leaf, when it has an AKI.
    pub fn replaces(chain_pem: &str) -> Option<CertificateIdentifier<'static>> {
        certificate_id(chain_pem).ok().flatten()
    }
}

/// RFC 9773 certificate identifier of the leaf: AKI keyIdentifier + serial.
pub fn certificate_id(chain_pem: &str) -> Result<Option<CertificateIdentifier<'static>>, Error> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| Error::Invalid("empty chain".into()))?
        .map_err(|e| Error::Invalid(format!("chain: {e}")))?;
    Ok(CertificateIdentifier::try_from(&leaf)
        .ok()
        .map(CertificateIdentifier::into_owned))
}

/// Shared handle.
pub type SharedAcme = Arc<AcmeClient>;
