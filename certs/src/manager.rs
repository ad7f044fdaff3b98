//! The certificate manager of one edge node: keeps the [`CertStore`] filled from the store,
//! orders what is missing or due (one node per name at a time, by a lock in the store), moves
//! customers' domains through their lifecycle, and tells the other nodes through the change
//! broadcast so they load the new certificate and route from the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OnceCell};
use uuid::Uuid;

use clawdeploy_config::{Config, TlsMode};
use clawdeploy_proxy::{Resolution, Route, RouteKind, RouteTable};
use clawdeploy_store::changes::{Change, ChangeBus};
use clawdeploy_store::{
    CertificateRecord, Conflict, CustomDomain, DomainStatus, Keyring, Store, StoreError,
};

use crate::acme::{AcmeClient, Proof};
use crate::challenges::Http01Challenges;
use crate::dns::{provider_from_config, DnsProvider, Resolver};
use crate::local_ca::{fallback_certificate, LocalCa, PerHostCerts};
use crate::pem::{certified_key, leaf_info};
use crate::renewal::{days_left, domain_retry_delay, in_window, retry_delay, two_thirds};
use crate::store::CertStore;
use crate::{now_ms, Error};

/// TXT name prefix of custom domain ownership checks.
pub const DOMAIN_TXT_PREFIX: &str = "_clawdeploy-challenge.";

/// How long an order may hold a name's lock.
const LOCK_TTL: Duration = Duration::from_secs(300);

/// Per-host certificates the local CA keeps in memory (about 1 KiB each).
const PER_HOST_CERTS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(10_000).unwrap();

/// Why a custom domain is not ready for a certificate yet. The message is shown to its owner as
/// the domain's last error, so it says what to fix.
#[derive(Debug, thiserror::Error)]
enum NotReady {
    #[error("No DNS resolver is configured on this platform ([dns] resolver).")]
    NoResolver,
    /// What is missing, one item per record.
    #[error("DNS records not found yet: {}.", .0.join("; "))]
    Records(Vec<String>),
    /// The probe token could not be stored (in the message, not a `source()`).
    #[error("The reachability check could not start ({0}); it is retried.")]
    CheckNotStarted(Error),
    #[error(
        "{hostname} does not reach this platform over HTTP ({detail}): the CA fetches \
         http://{hostname}/.well-known/acme-challenge/ before it issues the certificate. Make sure \
         {hostname} has only the CNAME to {expected_target} (no other A or AAAA records) and \
         nothing in front of it blocks port 80."
    )]
    Unreachable {
        hostname: String,
        expected_target: String,
        detail: String,
    },
}

/// The hosts that get a per-host certificate from the local CA when the base domain is a single
/// label (`localhost`, the embedded default), whose wildcard clients refuse: the dashboard host and
/// each instance host (`<sub>.<base_domain>` with an instance route). Operator routes and unknown
/// names keep the fallback, so the CA signs nothing for a name this edge does not serve. Under a
/// base domain of two labels or more the base certificate's wildcard is valid and serves them.
fn serves_per_host(routes: Arc<RouteTable>) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    move |name: &str| {
        if routes.base_domain().contains('.') {
            return false;
        }
        if name == routes.app_domain() {
            return true;
        }
        let instance_host = name
            .strip_suffix(routes.base_domain())
            .and_then(|l| l.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.'));
        instance_host
            && matches!(
                routes.resolve(name),
                Resolution::Route(Route {
                    kind: RouteKind::Instance,
                    ..
                })
            )
    }
}

/// The certificate manager of one edge node (see the module docs); shared as an `Arc`.
pub struct CertManager {
    config: Config,
    keyring: Arc<Keyring>,
    certs: Arc<CertStore>,
    challenges: Arc<Http01Challenges>,
    routes: Arc<RouteTable>,
    local_ca: Option<Arc<LocalCa>>,
    dns: Option<Arc<dyn DnsProvider>>,
    resolver: Option<Resolver>,
    acme: OnceCell<AcmeClient>,
    /// Identifies this node's order locks.
    node: String,
    wake: Notify,
    /// Failures of the base domain's first order and when to try again (unix ms), so a CA or
    /// DNS outage is not hammered at every pass.
    base_retry: std::sync::Mutex<(u32, i64)>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("node", &self.node)
            .finish()
    }
}

/// A summary of one certificate for the admin API (no key material).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertSummary {
    /// The primary name: the base domain (apex and wildcard) or a custom domain.
    pub name: String,
    /// Every DNS name the certificate covers.
    pub domains: Vec<String>,
    /// Who signed it: `acme` or `local-ca`.
    pub issuer: String,
    /// Start of the leaf's validity (unix ms).
    pub not_before: i64,
    /// End of the leaf's validity (unix ms).
    pub not_after: i64,
    /// When a successor is ordered (unix ms).
    pub renew_at: i64,
    /// Failed renewals since this certificate was stored.
    pub failures: i64,
    /// Why the last renewal failed, if one has since this certificate was stored.
    pub last_error: Option<String>,
}

impl From<&CertificateRecord> for CertSummary {
    fn from(r: &CertificateRecord) -> Self {
        Self {
            name: r.name.clone(),
            domains: r.domains.clone(),
            issuer: r.issuer.clone(),
            not_before: r.not_before,
            not_after: r.not_after,
            renew_at: r.renew_at,
            failures: r.failures,
            last_error: r.last_error.clone(),
        }
    }
}

impl CertManager {
    /// Builds the manager and installs the fallback certificate (and, in local-CA mode, creates
    /// or loads the CA under `<data_dir>/local-ca`).
    pub fn new(
        config: &Config,
        keyring: Arc<Keyring>,
        routes: Arc<RouteTable>,
    ) -> Result<Arc<Self>, Error> {
        let certs = CertStore::new();
        let (chain, key) = fallback_certificate()?;
        certs.set_fallback(certified_key(&chain, &key)?);
        let local_ca = match config.tls.mode {
            TlsMode::LocalCa => Some(Arc::new(LocalCa::load_or_create(
                &config.server.data_dir.join("local-ca"),
            )?)),
            TlsMode::Acme => None,
        };
        if let Some(ca) = &local_ca {
            certs.set_on_demand(Arc::new(PerHostCerts::new(
                ca.clone(),
                PER_HOST_CERTS,
                serves_per_host(routes.clone()),
            )));
        }
        let dns = provider_from_config(&config.dns)?;
        let resolver = Resolver::from_config(&config.dns).ok();
        Ok(Arc::new(Self {
            config: config.clone(),
            keyring,
            certs,
            challenges: Arc::new(Http01Challenges::default()),
            routes,
            local_ca,
            dns,
            resolver,
            acme: OnceCell::new(),
            node: Uuid::new_v4().to_string(),
            wake: Notify::new(),
            base_retry: std::sync::Mutex::new((0, 0)),
        }))
    }

    /// The certificates the HTTPS listener resolves from (its `ResolvesServerCert`).
    pub fn cert_store(&self) -> Arc<CertStore> {
        self.certs.clone()
    }

    /// The HTTP-01 tokens the edge's plain listener answers.
    pub fn challenges(&self) -> Arc<Http01Challenges> {
        self.challenges.clone()
    }

    /// The local CA, in `tls.mode = "local-ca"`; `None` with ACME.
    pub fn local_ca(&self) -> Option<&LocalCa> {
        self.local_ca.as_deref()
    }

    /// The domain whose apex and wildcard certificate the manager keeps (`server.base_domain`).
    pub fn base_domain(&self) -> &str {
        &self.config.server.base_domain
    }

    /// Has the scheduler look at certificates and domains now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Loads every stored certificate and active domain route (at start, and after a gap).
    pub async fn load_all(&self, store: &Store) -> Result<usize, Error> {
        let records = store.list_certificates().await?;
        for record in &records {
            if let Err(e) = self.install(record) {
                tracing::warn!(name = %record.name, "stored certificate unusable: {e}");
            }
        }
        // Only active domains route; other claims on the same name (other accounts' unproven
        // ones) must not remove the owner's route, whatever order they are listed in.
        for domain in store.list_custom_domains().await? {
            if domain.status == DomainStatus::Active {
                self.apply_domain_route(store, &domain).await?;
            }
        }
        Ok(records.len())
    }

    fn install(&self, record: &CertificateRecord) -> Result<(), Error> {
        let key_pem = record.open_key(&self.keyring)?;
        let key = certified_key(&record.chain_pem, &key_pem)?;
        self.certs.install(&record.domains, key);
        metrics::gauge!("clawdeploy_cert_expiry_days", "name" => record.name.clone())
            .set(days_left(now_ms(), record.not_after));
        Ok(())
    }

    /// Routes an active domain to its instance, or stops routing it.
    async fn apply_domain_route(&self, store: &Store, domain: &CustomDomain) -> Result<(), Error> {
        if domain.status == DomainStatus::Active {
            if let Some(instance) = store.get_instance(domain.instance_id).await? {
                self.routes.set_alias(&domain.hostname, &instance.subdomain);
                return Ok(());
            }
        }
        self.routes.remove_alias(&domain.hostname);
        Ok(())
    }

    /// Reloads one certificate from the store (a change from another node).
    async fn reload_certificate(&self, store: &Store, name: &str) -> Result<(), Error> {
        match store.get_certificate(name).await? {
            Some(record) => self.install(&record),
            None => {
                self.certs.remove(&[name.to_string()]);
                Ok(())
            }
        }
    }

    /// Follows the hostname's owner (its proven claim); without one, the name is not served.
    async fn reload_domain(&self, store: &Store, hostname: &str) -> Result<(), Error> {
        match store.get_custom_domain_by_hostname(hostname).await? {
            Some(domain) => self.apply_domain_route(store, &domain).await,
            None => {
                self.routes.remove_alias(hostname);
                self.certs.remove(&[hostname.to_string()]);
                Ok(())
            }
        }
    }

    /// Runs the scheduler and follows the change broadcast until shutdown.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        bus: Arc<ChangeBus>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        self.challenges.share_through(store.clone());
        let follower = tokio::spawn(self.clone().follow(store.clone(), bus.subscribe()));
        let period = Duration::from_secs(
            self.config
                .acme
                .renew_check_secs
                .min(self.config.domains.check_interval_secs),
        );
        loop {
            self.tick(&store, &bus).await;
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
        follower.abort();
    }

    async fn follow(
        self: Arc<Self>,
        store: Store,
        mut changes: tokio::sync::broadcast::Receiver<Change>,
    ) {
        loop {
            let change = match changes.recv().await {
                Ok(change) => change,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Change::Resync,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let result = match &change {
                Change::Certificate { name } => self.reload_certificate(&store, name).await,
                Change::Domain { hostname } => self.reload_domain(&store, hostname).await,
                // An instance's route changed: its domains follow through the alias; a deleted
                // instance's domains are gone with it (ON DELETE CASCADE), drop their routes.
                Change::Resync | Change::Instance { .. } => {
                    let live: std::collections::HashSet<String> =
                        match store.list_custom_domains().await {
                            Ok(domains) => domains
                                .into_iter()
                                .filter(|d| d.status == DomainStatus::Active)
                                .map(|d| d.hostname)
                                .collect(),
                            Err(e) => {
                                tracing::warn!("cannot list custom domains: {e}");
                                continue;
                            }
                        };
                    for host in self.routes.alias_hosts() {
                        if !live.contains(&host) {
                            self.routes.remove_alias(&host);
                        }
                    }
                    if matches!(change, Change::Resync) {
                        self.load_all(&store).await.map(|_| ())
                    } else {
                        Ok(())
                    }
                }
                Change::SessionRevoked { .. } | Change::OperatorRoute { .. } => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(?change, "cannot apply a certificate change: {e}");
            }
        }
    }

    /// One pass: the base domain's certificate, due renewals, pending domains.
    async fn tick(&self, store: &Store, bus: &ChangeBus) {
        if let Err(e) = self.connect_acme(store).await {
            tracing::warn!("ACME account unavailable, retrying at the next check: {e}");
            return;
        }
        if let Err(e) = store.delete_expired_acme_challenges().await {
            tracing::warn!("cannot drop expired ACME challenges: {e}");
        }
        let base_due = self
            .base_retry
            .lock()
            .map_or(true, |retry| retry.1 <= now_ms());
        if base_due {
            let result = self.ensure_base(store, bus).await;
            if let Ok(mut retry) = self.base_retry.lock() {
                match &result {
                    Ok(()) => *retry = (0, 0),
                    Err(_) => {
                        retry.0 = retry.0.saturating_add(1);
                        retry.1 = now_ms() + retry_delay(retry.0, None).as_millis() as i64;
                    }
                }
            }
            if let Err(e) = result {
                tracing::warn!("base domain certificate: {e}");
            }
        }
        match store.certificates_due(now_ms()).await {
            Ok(due) => {
                for record in due {
                    if let Err(e) = self.renew(store, bus, &record).await {
                        tracing::warn!(name = %record.name, "renewal failed: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("cannot list certificates due: {e}"),
        }
        if let Err(e) = self.check_domains(store, bus).await {
            tracing::warn!("custom domains: {e}");
        }
    }

    /// The names of the base domain's certificate: the apex, the wildcard, and the app domain
    /// by name (clients refuse a wildcard directly under a single-label domain like localhost).
    fn base_names(&self) -> Vec<String> {
        let base = &self.config.server.base_domain;
        let mut names = vec![base.clone(), format!("*.{base}")];
        let app = self.config.server.app_domain();
        if base.contains('.')
            && app
                .strip_suffix(base.as_str())
                .is_some_and(|l| l.ends_with('.') && !l[..l.len() - 1].contains('.'))
        {
            return names;
        }
        names.push(app);
        names
    }

    async fn ensure_base(&self, store: &Store, bus: &ChangeBus) -> Result<(), Error> {
        let wanted = match self.config.tls.mode {
            TlsMode::LocalCa => true,
            TlsMode::Acme => self.config.acme.wildcard,
        };
        let base = self.config.server.base_domain.clone();
        if !wanted || store.get_certificate(&base).await?.is_some() {
            return Ok(());
        }
        self.issue_and_store(store, bus, &base, &self.base_names(), None)
            .await
            .map(|_| ())
    }

    async fn renew(
        &self,
        store: &Store,
        bus: &ChangeBus,
        record: &CertificateRecord,
    ) -> Result<(), Error> {
        match self
            .issue_and_store(
                store,
                bus,
                &record.name,
                &record.domains,
                Some(&record.chain_pem),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let failures = u32::try_from(record.failures + 1).unwrap_or(u32::MAX);
                let next = now_ms() + retry_delay(failures, None).as_millis() as i64;
                store
                    .set_certificate_renewal(&record.name, next, Some(&e.to_string()))
                    .await?;
                Err(e)
            }
        }
    }

    /// Forces the renewal of a stored certificate now (admin API); returns the new summary.
    pub async fn renew_now(
        &self,
        store: &Store,
        bus: &ChangeBus,
        name: &str,
    ) -> Result<Option<CertSummary>, Error> {
        let Some(record) = store.get_certificate(name).await? else {
            return Ok(None);
        };
        self.issue_and_store(
            store,
            bus,
            &record.name,
            &record.domains,
            Some(&record.chain_pem),
        )
        .await
        .map(|r| Some(CertSummary::from(&r)))
    }

    /// Orders (ACME) or signs (local CA) a certificate for `names` under the name's lock,
    /// stores it with its key sealed, serves it here and tells the other nodes.
    async fn issue_and_store(
        &self,
        store: &Store,
        bus: &ChangeBus,
        name: &str,
        names: &[String],
        previous_chain: Option<&str>,
    ) -> Result<CertificateRecord, Error> {
        let lock_until = now_ms() + LOCK_TTL.as_millis() as i64;
        if !store
            .try_lock_certificate(name, &self.node, lock_until)
            .await?
        {
            return Err(Error::Acme(format!(
                "another node is ordering {name}; it will be picked up from the store"
            )));
        }
        let started = Instant::now();
        let result = self.issue(names, previous_chain).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        if self.local_ca.is_none() {
            metrics::counter!("clawdeploy_acme_orders_total", "outcome" => outcome).increment(1);
        }
        let stored = match result {
            Ok((chain_pem, key_pem)) => {
                let info = leaf_info(&chain_pem)?;
                let renew_at = self
                    .renew_time(&chain_pem, info.not_before_ms, info.not_after_ms)
                    .await;
                let issuer = if self.local_ca.is_some() {
                    "local-ca"
                } else {
                    "acme"
                };
                store
                    .put_certificate(
                        &self.keyring,
                        name,
                        names,
                        &chain_pem,
                        &key_pem,
                        issuer,
                        info.not_before_ms,
                        info.not_after_ms,
                        renew_at,
                    )
                    .await?;
                tracing::info!(
                    %name,
                    ?names,
                    issuer,
                    serial = %info.serial_hex,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "certificate issued"
                );
                let record = store
                    .get_certificate(name)
                    .await?
                    .ok_or(Error::Invalid("stored certificate vanished".into()))?;
                self.install(&record)?;
                if let Err(e) = bus
                    .publish(Change::Certificate {
                        name: name.to_string(),
                    })
                    .await
                {
                    tracing::error!("cannot broadcast a certificate change: {e}");
                }
                Ok(record)
            }
            Err(e) => {
                tracing::warn!(%name, elapsed_ms = started.elapsed().as_millis() as u64, "certificate order failed: {e}");
                Err(e)
            }
        };
        store.unlock_certificate(name, &self.node).await?;
        stored
    }

    fn acme(&self) -> Result<&AcmeClient, Error> {
        self.acme
            .get()
            .ok_or_else(|| Error::Acme("the ACME account is not ready".into()))
    }

    async fn issue(
        &self,
        names: &[String],
        previous_chain: Option<&str>,
    ) -> Result<(String, String), Error> {
        if let Some(ca) = &self.local_ca {
            return ca.issue(names);
        }
        let acme = self.acme()?;
        let wildcard = names.iter().any(|n| n.starts_with("*."));
        let replaces = previous_chain.and_then(AcmeClient::replaces);
        // ARI "replaces" only where the CA supports it (instant-acme refuses it otherwise).
        let replaces = match (replaces, previous_chain) {
            (Some(id), Some(chain)) if matches!(acme.renewal_window(chain).await, Ok(Some(_))) => {
                Some(id)
            }
            _ => None,
        };
        let issued = if wildcard {
            let (Some(provider), Some(resolver)) = (&self.dns, &self.resolver) else {
                return Err(Error::Dns(
                    "a wildcard needs DNS-01: configure a [dns] provider".into(),
                ));
            };
            acme.order(
                names,
                Proof::Dns01 {
                    provider: provider.as_ref(),
                    resolver,
                    propagation_timeout: Duration::from_secs(
                        self.config.acme.dns_propagation_timeout_secs,
                    ),
                },
                replaces,
            )
            .await?
        } else {
            let proof = Proof::Http01 {
                challenges: &self.challenges,
                expires_at: now_ms() + LOCK_TTL.as_millis() as i64,
            };
            acme.order(names, proof, replaces).await?
        };
        Ok((issued.chain_pem, issued.key_pem))
    }

    /// Inside the ARI window when the CA has one, else two thirds of the lifetime.
    async fn renew_time(&self, chain_pem: &str, not_before: i64, not_after: i64) -> i64 {
        if let Some(acme) = self.acme.get() {
            match acme.renewal_window(chain_pem).await {
                Ok(Some((start, end))) => return in_window(start, end, random_fraction()),
                Ok(None) => {}
                Err(e) => tracing::debug!("ARI unavailable, renewing at two thirds: {e}"),
            }
        }
        two_thirds(not_before, not_after)
    }

    /// Connects the ACME account (ACME mode); retried by the caller on failure.
    pub async fn connect_acme(&self, store: &Store) -> Result<(), Error> {
        if self.local_ca.is_some() || self.acme.get().is_some() {
            return Ok(());
        }
        let client = AcmeClient::connect(store, &self.keyring, &self.config.acme).await?;
        let _ = self.acme.set(client);
        Ok(())
    }

    /// Moves customers' domains along: DNS records (`pending_dns`) → reachability over HTTP
    /// (`verifying`) → certificate (`issuing`) → route (`active`); `failed` ones again when
    /// their backoff is over. One node per hostname at a time (the name's order lock), whatever
    /// the number of accounts claiming it. Claims never proven within
    /// `domains.unverified_ttl_secs` are removed first.
    async fn check_domains(&self, store: &Store, bus: &ChangeBus) -> Result<(), Error> {
        let ttl_ms = (self.config.domains.unverified_ttl_secs as i64).saturating_mul(1000);
        for expired in store
            .expire_custom_domain_claims(now_ms().saturating_sub(ttl_ms))
            .await?
        {
            tracing::info!(hostname = %expired.hostname, user = %expired.user_id, "unproven custom domain claim expired");
        }
        for listed in store.list_custom_domains().await? {
            if !Self::domain_due(&listed, now_ms()) {
                continue;
            }
            let lock_until = now_ms() + LOCK_TTL.as_millis() as i64;
            if !store
                .try_lock_certificate(&listed.hostname, &self.node, lock_until)
                .await?
            {
                continue;
            }
            // Read again under the lock: another node or the owner may have moved it.
            let result = match store.get_custom_domain(listed.id).await {
                Ok(Some(domain)) if Self::domain_due(&domain, now_ms()) => {
                    self.advance_domain(store, bus, domain).await
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            };
            store
                .unlock_certificate(&listed.hostname, &self.node)
                .await?;
            result?;
        }
        Ok(())
    }

    /// Active domains are served and parked ones wait for their account's tier: neither is checked.
    fn domain_due(domain: &CustomDomain, now: i64) -> bool {
        !matches!(domain.status, DomainStatus::Active | DomainStatus::Parked)
            && domain.next_check_at <= now
    }

    async fn advance_domain(
        &self,
        store: &Store,
        bus: &ChangeBus,
        domain: CustomDomain,
    ) -> Result<(), Error> {
        let Some(instance) = store.get_instance(domain.instance_id).await? else {
            return Ok(());
        };
        let expected_target = format!("{}.{}", instance.subdomain, self.config.server.base_domain);
        // Another account proved the name first: this claim can never be, and costs no lookup.
        if domain.verified_at.is_none() {
            if let Some(owner) = store
                .get_custom_domain_by_hostname(&domain.hostname)
                .await?
            {
                if owner.id != domain.id {
                    return self.refuse_claim(store, &domain).await;
                }
            }
        }
        if domain.status != DomainStatus::Issuing {
            if let Err(missing) = self.verify_dns(&domain, &expected_target).await {
                return self
                    .not_ready(
                        store,
                        &domain,
                        DomainStatus::PendingDns,
                        &missing.to_string(),
                    )
                    .await;
            }
            // This account's own token is in the name's TXT: it owns the name, unless another
            // claim was proven in the meantime (the store lets exactly one win).
            if domain.verified_at.is_none() {
                match store.prove_custom_domain(domain.id).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()), // removed meanwhile
                    Err(StoreError::Conflict(Conflict::DomainVerified)) => {
                        return self.refuse_claim(store, &domain).await
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // Records seen: before an order (a failed validation counts against the CA's
            // limits), check that the name reaches this platform where the CA will look.
            if domain.status != DomainStatus::Verifying {
                store
                    .set_custom_domain_status(domain.id, DomainStatus::Verifying, None)
                    .await?;
            }
            if let Err(unreachable) = self.probe_http(&domain.hostname, &expected_target).await {
                return self
                    .not_ready(
                        store,
                        &domain,
                        DomainStatus::Verifying,
                        &unreachable.to_string(),
                    )
                    .await;
            }
            // Verified: only now may a certificate be ordered for this name.
            store
                .set_custom_domain_status(domain.id, DomainStatus::Issuing, None)
                .await?;
        }
        let names = vec![domain.hostname.clone()];
        // A certificate stored after the domain went to `issuing` was ordered for it already (by
        // a node that stopped, or is just marking it active): no second order.
        let issued = match store.get_certificate(&domain.hostname).await? {
            Some(cert)
                if domain.status == DomainStatus::Issuing
                    && cert.updated_at >= domain.updated_at =>
            {
                self.install(&cert)?;
                Ok(cert)
            }
            _ => {
                self.issue_and_store(store, bus, &domain.hostname, &names, None)
                    .await
            }
        };
        match issued {
            Ok(_) => {
                if let Some(active) = store
                    .set_custom_domain_status(domain.id, DomainStatus::Active, None)
                    .await?
                {
                    self.apply_domain_route(store, &active).await?;
                }
                if let Err(e) = bus
                    .publish(Change::Domain {
                        hostname: domain.hostname.clone(),
                    })
                    .await
                {
                    tracing::error!("cannot broadcast a domain change: {e}");
                }
            }
            Err(e) => {
                let next = self.next_retry(&domain);
                let reason = format!(
                    "The certificate order for {host} failed: {e}. Check that {host} points to {expected_target} (CNAME) and that port 80 reaches this service. \
                     It is tried again at {at}, or now with POST /api/domains/{host}/verify.",
                    host = domain.hostname,
                    at = utc(next),
                );
                store.fail_custom_domain(domain.id, &reason, next).await?;
            }
        }
        Ok(())
    }

    /// Another account owns the name: this claim fails for good, saying so, and is not looked
    /// at again until it expires (`domains.unverified_ttl_secs` after it was added). If the
    /// owner removes the name meanwhile, the claim's "check again" makes it a contender again.
    async fn refuse_claim(&self, store: &Store, domain: &CustomDomain) -> Result<(), Error> {
        let ttl_ms = (self.config.domains.unverified_ttl_secs as i64).saturating_mul(1000);
        let expires = domain.created_at.saturating_add(ttl_ms);
        let host = &domain.hostname;
        let reason = format!(
            "{host} is verified by another account: its DNS records proved ownership first, and a domain is served for one account only. \
             If {host} is yours, have it removed from that account, then ask for a new check with POST /api/domains/{host}/verify; \
             otherwise remove it here. This claim is removed at {}.",
            utc(expires)
        );
        if domain.status != DomainStatus::Failed || domain.reason.as_deref() != Some(&reason) {
            tracing::info!(hostname = %host, user = %domain.user_id, "custom domain claim refused: verified by another account");
            store
                .fail_custom_domain(domain.id, &reason, expires)
                .await?;
        }
        Ok(())
    }

    /// When a domain that failed `attempts + 1` times is checked again.
    fn next_retry(&self, domain: &CustomDomain) -> i64 {
        let attempts = u32::try_from(domain.attempts + 1).unwrap_or(u32::MAX);
        let base = Duration::from_secs(self.config.domains.retry_base_secs);
        now_ms() + domain_retry_delay(attempts, base).as_millis() as i64
    }

    /// A check did not pass: the domain stays in `status` with what to fix, or, once
    /// `domains.pending_dns_timeout_secs` have passed since the wait began (or when it had
    /// already failed), is `failed` and retried with backoff.
    async fn not_ready(
        &self,
        store: &Store,
        domain: &CustomDomain,
        status: DomainStatus,
        what: &str,
    ) -> Result<(), Error> {
        let timeout_secs = self.config.domains.pending_dns_timeout_secs;
        let timed_out = now_ms() - domain.pending_since >= (timeout_secs * 1000) as i64;
        if domain.status == DomainStatus::Failed || timed_out {
            let next = self.next_retry(domain);
            let host = &domain.hostname;
            let waited = if timeout_secs.is_multiple_of(3600) {
                format!("{} h", timeout_secs / 3600)
            } else {
                format!("{timeout_secs} s")
            };
            let reason = format!(
                "Not ready {waited} after it was added or last checked: {what} Fix this, then ask for a new check with POST /api/domains/{host}/verify (the platform also checks again at {}).",
                utc(next)
            );
            if domain.status != DomainStatus::Failed {
                tracing::info!(hostname = %host, "custom domain failed: {what}");
            }
            store.fail_custom_domain(domain.id, &reason, next).await?;
        } else if domain.status != status || domain.reason.as_deref() != Some(what) {
            store
                .set_custom_domain_status(domain.id, status, Some(what))
                .await?;
        }
        Ok(())
    }

    /// Fetches a probe token at `http://<hostname>:<domains.http01_port>/.well-known/acme-challenge/`
    /// the way the CA will (name resolved through the configured resolver) and checks that this
    /// platform (any of its nodes: the probe is in the shared store) answered it.
    async fn probe_http(&self, hostname: &str, expected_target: &str) -> Result<(), NotReady> {
        if self.local_ca.is_some() {
            return Ok(()); // no CA validates anything
        }
        let Some(resolver) = &self.resolver else {
            return Err(NotReady::NoResolver);
        };
        let token = random_token();
        let value = format!("{}.{}", token, random_token());
        let expires = now_ms() + 60_000;
        if let Err(e) = self
            .challenges
            .insert(&token, &value, hostname, expires)
            .await
        {
            return Err(NotReady::CheckNotStarted(e));
        }
        let result = async {
            let addresses = resolver
                .addresses(hostname)
                .await
                .map_err(|e| format!("{hostname} could not be resolved ({e})"))?;
            let ip = addresses
                .first()
                .ok_or_else(|| format!("{hostname} resolves to no address"))?;
            let addr = std::net::SocketAddr::new(*ip, self.config.domains.http01_port);
            let body =
                tokio::time::timeout(Duration::from_secs(5), http_get(addr, hostname, &token))
                    .await
                    .map_err(|_| format!("{addr} did not answer within 5 s"))?
                    .map_err(|e| format!("{addr}: {e}"))?;
            if body.trim() == value {
                Ok(())
            } else {
                Err(format!(
                    "{addr} answered, but not with this platform's check token"
                ))
            }
        }
        .await;
        self.challenges.remove(&token).await;
        result.map_err(|detail| NotReady::Unreachable {
            hostname: hostname.to_string(),
            expected_target: expected_target.to_string(),
            detail,
        })
    }

    /// Checks the customer's records; `Err` says what is missing and how to fix it.
    async fn verify_dns(
        &self,
        domain: &CustomDomain,
        expected_target: &str,
    ) -> Result<(), NotReady> {
        let Some(resolver) = &self.resolver else {
            return Err(NotReady::NoResolver);
        };
        let txt_name = format!("{DOMAIN_TXT_PREFIX}{}", domain.hostname);
        let mut missing = Vec::new();
        match resolver.cname(&domain.hostname).await {
            Ok(Some(target)) if target == expected_target => {}
            Ok(Some(target)) => missing.push(format!(
                "{} is a CNAME to {target}; point it to {expected_target}",
                domain.hostname
            )),
            Ok(None) => missing.push(format!(
                "create a CNAME record {} -> {expected_target}",
                domain.hostname
            )),
            Err(e) => missing.push(format!(
                "the CNAME of {} could not be looked up ({e})",
                domain.hostname
            )),
        }
        match resolver.txt(&txt_name).await {
            Ok(values) if values.iter().any(|v| v == &domain.token) => {}
            Ok(_) => missing.push(format!(
                "create a TXT record {txt_name} with the value {}",
                domain.token
            )),
            Err(e) => missing.push(format!(
                "the TXT record {txt_name} could not be looked up ({e})"
            )),
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(NotReady::Records(missing))
        }
    }

    /// Removes a domain's certificate and route here and on the other nodes.
    pub async fn domain_removed(
        &self,
        store: &Store,
        bus: &ChangeBus,
        hostname: &str,
    ) -> Result<(), Error> {
        self.routes.remove_alias(hostname);
        store.delete_certificate(hostname).await?;
        self.certs.remove(&[hostname.to_string()]);
        for change in [
            Change::Domain {
                hostname: hostname.to_string(),
            },
            Change::Certificate {
                name: hostname.to_string(),
            },
        ] {
            if let Err(e) = bus.publish(change).await {
                tracing::error!("cannot broadcast a domain removal: {e}");
            }
        }
        Ok(())
    }

    /// Summaries of every stored certificate.
    pub async fn list(&self, store: &Store) -> Result<Vec<CertSummary>, Error> {
        Ok(store
            .list_certificates()
            .await?
            .iter()
            .map(CertSummary::from)
            .collect())
    }
}

/// A GET of a challenge path, as a CA sends it; the body of a 200 answer.
async fn http_get(
    addr: std::net::SocketAddr,
    host: &str,
    token: &str,
) -> Result<String, std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: {host}\r\n\
                 User-Agent: clawdeploy-reachability-check\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut bytes = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut bytes).await?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("none");
    if status != "200" {
        return Err(std::io::Error::other(format!(
            "answered HTTP status {status}"
        )));
    }
    Ok(body.to_string())
}

/// 32 base64url characters (192 random bits).
fn random_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 24];
    let _ = getrandom::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A unix-ms time as RFC 3339 UTC, for messages.
fn utc(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
