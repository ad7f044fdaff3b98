//! The edge node as one app: [`App::build`] loads the config and the secrets, prepares the store,
//! builds the route table, the edge (proxy, metering, sleep and wake, HTTPS) and the services
//! beside it; [`App::run`] serves until a signal, then flushes the usage counters.
//!
//! Beside the edge, the background side runs the control API, the change broadcast and what
//! follows it (routes, revoked sessions), the instance pool, the certificate manager's work, the
//! LLM meter and the usage flush. They run on one Pingora background service, so they share one
//! runtime and one database pool: tokio I/O belongs to the runtime that created it, so a pool
//! cannot be shared across Pingora's services.
//!
//! One keyring is built, and one database pool is open at a time: startup's (migrations,
//! re-sealing, the route table's instances, the meter's counts, the stored certificates), closed
//! before Pingora starts its runtimes; the background side's while serving; the shutdown flush's.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::BackgroundService;

use clawdeploy_certs::CertManager;
use clawdeploy_channels::telegram::TelegramRelay;
use clawdeploy_config::{mask_url_password, Config, LlmListen};
use clawdeploy_control_api::{account, router, ApiContext, ApiState, SessionVerifier};
use clawdeploy_llm_egress::{ListenerHandoff, LlmMeterService, MeterListen, Upstreams};
use clawdeploy_metering::{Meter, UsageFlush};
use clawdeploy_pool::{routing, CrashNotice, PoolWaker};
use clawdeploy_proxy::{
    Activity, Drain, DrainingShutdown, EdgeProxy, EdgeSettings, Listeners, RouteTable,
};
use clawdeploy_skills::{Catalogue, Registry};
use clawdeploy_store::changes::ChangeBus;
use clawdeploy_store::{Instance, Keyring, Store, StoreOptions};

use crate::{certs, secrets};

/// An edge node ready to serve: the Pingora server with the edge and every service beside it.
pub struct App {
    server: Server,
    drain: Arc<Drain>,
    grace: Duration,
    meter: Arc<Meter>,
    database_url: String,
    store_options: StoreOptions,
    serving: Serving,
}

/// Where the node serves, for the log line that says it does.
struct Serving {
    http: String,
    app: String,
    base_domain: String,
}

impl App {
    /// Builds the node from the config at `path` (the embedded defaults without one). Never inside
    /// a tokio runtime: the startup work runs on a runtime of its own, dropped before Pingora
    /// starts its own.
    pub fn build(path: Option<&Path>) -> anyhow::Result<Self> {
        let mut config = Config::load(path)?;
        crate::logging::init(config.server.log_format);
        // Before anything records: every crate records through the `metrics` facade.
        let metrics_handle = clawdeploy_metering::install_recorder()?;
        load_secrets(&mut config)?;
        // Built once: the store, the API, the pool, the certificate manager and the LLM meter share it.
        let keyring = Arc::new(build_keyring(&config)?);
        let mut meter = Meter::new(config.tiers.clone());
        if !config.redis.url.is_empty() {
            meter = meter.shared();
        }
        let meter = Arc::new(meter);
        let (routes, cert_manager) = prepare(&config, &keyring, &meter)?;

        // The control API listens on an ephemeral loopback port that only the edge routes to.
        let control_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("binding the control API listener")?;
        routes.set_control_plane(control_listener.local_addr()?);
        tracing::info!(listen = %control_listener.local_addr()?, "control API listening (for the edge only)");

        let server_config = &config.server;
        let drain = Drain::new();
        let conf = ServerConf {
            threads: server_config.worker_threads(),
            upstream_keepalive_pool_size: server_config.upstream_keepalive_pool_size,
            // The drain (DrainingShutdown) already waited for in-flight requests.
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();

        // Instance hosts admit only their owner: tokens checked in memory, revocations broadcast.
        let verifier = SessionVerifier::new(config.secrets.jwt_key.as_bytes().to_vec());
        // Only this process's edge can call its control API (random per start, never stored).
        let control_plane_secret = secrets::random_hex()?;
        // Idle instances sleep: the edge records their traffic for the pool and wakes them on a
        // request (the pool, made by the background side, is handed to the waker when it starts).
        let activity = Activity::new();
        let waker = PoolWaker::new();
        let metering = edge_metering(&config, &meter, &mut server);
        let edge = EdgeProxy::new(
            routes.clone(),
            EdgeSettings::from(server_config),
            drain.clone(),
            verifier.clone(),
        )
        .with_metering(Arc::new(metering))
        .with_control_plane_secret(&control_plane_secret)
        .with_gateway_proof_key(config.secrets.jwt_key.as_bytes())
        .with_sleep(activity.clone(), waker.clone());
        // HTTPS: certificates chosen per SNI from the certificate manager's store (issue #6).
        let edge = match &cert_manager {
            Some(manager) => edge.with_tls(certs::edge_tls(&config, manager)),
            None => edge,
        };
        // Pingora retries a busy address forever, after the node said it serves: fail here instead.
        ensure_free("server.http_listen", &server_config.http_listen)?;
        if cert_manager.is_some() {
            ensure_free("tls.listen", &config.tls.listen)?;
        }
        let listeners = Listeners {
            http: vec![server_config.http_listen.clone()],
            https: cert_manager
                .as_ref()
                .map(|_| vec![config.tls.listen.clone()])
                .unwrap_or_default(),
            cert_resolver: cert_manager
                .as_ref()
                .map(|m| m.cert_store() as Arc<dyn pingora::tls::ResolvesServerCert>),
        };
        server.add_service(clawdeploy_proxy::edge_service(
            &server.configuration,
            edge,
            &listeners,
        ));
        if !config.metrics.listen.is_empty() {
            let listener =
                std::net::TcpListener::bind(&config.metrics.listen).with_context(|| {
                    format!(
                        "binding the metrics listener metrics.listen = {}",
                        config.metrics.listen
                    )
                })?;
            tracing::info!(listen = %config.metrics.listen, "Prometheus metrics at /metrics");
            server.add_service(pingora::services::background::background_service(
                "metrics",
                clawdeploy_metering::MetricsService::new(listener, metrics_handle),
            ));
        }

        // The LLM meter: at a fixed address, or (`auto`) on the listener the pool binds where its
        // instances reach it.
        let llm_handoff = ListenerHandoff::new();
        let (catalogue, registry) = skills(&config)?;
        // The skill registry and the channels' relay are served beside the meter, where
        // instances reach them.
        let llm_meter = llm_meter(&config, &meter, &keyring, &llm_handoff).map(|m| {
            let registry = registry.clone();
            let (config, meter, keyring) = (config.clone(), meter.clone(), keyring.clone());
            m.with_routes(move |_| registry.router())
                .with_routes(move |store| {
                    Arc::new(TelegramRelay::new(
                        store.clone(),
                        keyring,
                        meter,
                        config.secrets.jwt_key.as_bytes().to_vec(),
                        &config.channels.telegram_api_root,
                        Duration::from_secs(config.channels.telegram_timeout_secs),
                        upgrade_url(&config),
                    ))
                    .router()
                })
        });
        let usage_flush = usage_flush(&config, &meter);
        let database_url = config.database_url();
        let store_options = store_options(&config);
        let grace = Duration::from_secs(server_config.grace_period_secs);
        let serving = Serving {
            http: server_config.http_listen.clone(),
            app: format!("http://{}", routes.app_domain()),
            base_domain: server_config.base_domain.clone(),
        };
        let admin_token = config.server.admin_token.clone();
        let jwt_key = config.secrets.jwt_key.as_bytes().to_vec();
        let mut ctx = ApiContext::new(config, admin_token, jwt_key, keyring).context("[smtp]")?;
        ctx.meter = Some(meter.clone());
        ctx.llm_listener = Some(llm_handoff);
        ctx.catalogue = catalogue;
        ctx.registry = llm_meter.is_some().then_some(registry);
        ctx.edge_secret = control_plane_secret.into();
        tracing::info!(mail = ctx.mailer.kind(), "outgoing mail");
        let background = Background {
            control_listener,
            database_url: database_url.clone(),
            store_options: store_options.clone(),
            routes,
            drain: drain.clone(),
            ctx: Arc::new(ctx),
            verifier,
            certs: cert_manager,
            llm_meter,
            usage_flush,
            activity,
            waker,
        };
        let mut service = pingora::services::background::background_service(
            "app",
            BackgroundApp(Mutex::new(Some(background))),
        );
        service.threads = Some(2);
        server.add_service(service);
        Ok(Self {
            server,
            drain,
            grace,
            meter,
            database_url,
            store_options,
            serving,
        })
    }

    /// Serves until a signal stops the node (after draining), then writes the usage counted since
    /// the last flush.
    pub fn run(self) -> anyhow::Result<()> {
        tracing::info!(
            http = %self.serving.http,
            app = %self.serving.app,
            base_domain = %self.serving.base_domain,
            "clawdeploy serving"
        );
        self.server.run(RunArgs {
            shutdown_signal: Box::new(DrainingShutdown {
                drain: self.drain,
                grace: self.grace,
            }),
        });
        // Pingora's runtimes are gone: the counts since the last flush are written here.
        let meter = self.meter;
        match block_on(async {
            let store = Store::open_with(&self.database_url, self.store_options).await?;
            let rows = clawdeploy_metering::flush::flush(&meter, &store).await;
            store.close().await;
            anyhow::Ok(rows)
        }) {
            Ok(Ok(rows)) => tracing::info!(rows, "usage counters flushed at shutdown"),
            Ok(Err(e)) | Err(e) => {
                tracing::error!("usage counters since the last flush are lost: {e:#}")
            }
        }
        tracing::info!("clawdeploy stopped");
        Ok(())
    }
}

/// A small runtime for one-off database work outside Pingora's runtimes.
pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    Ok(rt.block_on(f))
}

/// The database of `config`, migrated.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let url = config.database_url();
    let store = Store::open_with(&url, store_options(config))
        .await
        .with_context(|| format!("opening the database {}", mask_url_password(&url)))?;
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

fn store_options(config: &Config) -> StoreOptions {
    StoreOptions {
        max_connections: (config.database.max_connections > 0)
            .then_some(config.database.max_connections),
        ..StoreOptions::default()
    }
}

/// Startup's work on the database, with one pool on a runtime dropped before Pingora starts its
/// own (a pool is bound to the runtime that made it, so the background side opens its own):
/// migrations, re-sealing after a key rotation, the meter's counts, the route table with every
/// stored instance, and the certificate manager with its stored certificates (`None` without
/// HTTPS).
fn prepare(
    config: &Config,
    keyring: &Arc<Keyring>,
    meter: &Arc<Meter>,
) -> anyhow::Result<(Arc<RouteTable>, Option<Arc<CertManager>>)> {
    block_on(async {
        let store = open_store(config).await?;
        let prepared = async {
            let instances = prepare_store(&store, keyring, meter).await?;
            let routes = route_table(config, meter, &instances)?;
            let operator = routing::load_operator_routes(&store, &routes).await?;
            tracing::info!(operator, "operator routes loaded from the store");
            let certs = certs::start(config, keyring.clone(), routes.clone(), &store).await?;
            anyhow::Ok((routes, certs))
        }
        .await;
        store.close().await;
        prepared
    })?
}

/// Re-sealing after a key rotation, the meter's counts, and the instances the route table
/// starts with.
async fn prepare_store(
    store: &Store,
    keyring: &Keyring,
    meter: &Meter,
) -> anyhow::Result<Vec<Instance>> {
    // After a master-key rotation, secrets sealed under an older key move to the current one.
    let resealed = store
        .reseal_secrets(keyring)
        .await
        .context("re-sealing secrets")?;
    if resealed > 0 {
        tracing::info!(
            resealed,
            key_id = keyring.current_id(),
            "secrets re-sealed under the current master key"
        );
    }
    let instances = store.list_instances().await?;
    // Usage and counted idempotency keys before the first request (a retry must find its key).
    match clawdeploy_metering::flush::seed_from_store(meter, store).await {
        Ok(n) => tracing::info!(instances = n, "usage counters loaded from the store"),
        Err(e) => tracing::error!("cannot load this period's usage: {e}"),
    }
    Ok(instances)
}

/// The route table: the config's operator routes and every instance in the store (the
/// operator routes set through the admin API follow from the store).
fn route_table(
    config: &Config,
    meter: &Arc<Meter>,
    instances: &[Instance],
) -> anyhow::Result<Arc<RouteTable>> {
    let routes = Arc::new(RouteTable::new(
        &config.server.base_domain,
        &config.server.app_domain(),
    ));
    for route in &config.routes {
        let upstream = route.upstream.parse().context("validated upstream")?;
        routes.upsert_configured(&route.host, upstream)?;
    }
    routes.inform_meter(meter.clone());
    for inst in instances {
        routes.upsert_subdomain(&inst.subdomain, routing::route_for(inst));
    }
    tracing::info!(
        instances = instances.len(),
        "route table loaded from the store"
    );
    Ok(routes)
}

/// What the edge meters and limits: the meter, rate limits (shared through Redis by a service of
/// their own when configured) and where a refused user is sent to upgrade.
fn edge_metering(
    config: &Config,
    meter: &Arc<Meter>,
    server: &mut Server,
) -> clawdeploy_proxy::EdgeMetering {
    let (limiter, shared_limits) =
        clawdeploy_metering::shared_limits::build(&config.rate_limits, &config.redis);
    if let Some(service) = shared_limits {
        server.add_service(pingora::services::background::background_service(
            "shared rate limits",
            service,
        ));
    }
    clawdeploy_proxy::EdgeMetering {
        meter: meter.clone(),
        limiter: Arc::new(limiter),
        websockets: config.metering.enabled,
        max_message_bytes: config.metering.max_message_bytes,
        upgrade_url: upgrade_url(config).into(),
    }
}

/// Where a user refused by a quota is sent: `metering.upgrade_url`, else the billing page.
fn upgrade_url(config: &Config) -> String {
    if config.metering.upgrade_url.is_empty() {
        format!(
            "{}/billing",
            config.public_origin(&config.server.app_domain())
        )
    } else {
        config.metering.upgrade_url.clone()
    }
}

/// The secrets a config may leave empty (admin token, JWT key, master key), generated once and
/// kept in the data dir.
fn load_secrets(config: &mut Config) -> anyhow::Result<()> {
    if config.server.admin_token.is_empty() {
        config.server.admin_token =
            secrets::load_or_generate(&config.server.data_dir, "admin_token")?;
        tracing::info!(path = %config.server.data_dir.join("admin_token").display(), "admin token kept in the data dir");
    }
    let data_dir = config.server.data_dir.clone();
    if config.secrets.jwt_key.is_empty() {
        config.secrets.jwt_key = secrets::load_or_generate(&data_dir, "jwt_key")?;
        tracing::info!(path = %data_dir.join("jwt_key").display(), "JWT signing key kept in the data dir");
    }
    if config.secrets.master_key.is_empty() {
        config.secrets.master_key =
            secrets::load_or_generate_with(&data_dir, "master_key", || {
                Ok(clawdeploy_store::secrets::generate_key_base64()?.to_string())
            })?;
        tracing::info!(path = %data_dir.join("master_key").display(), "master key kept in the data dir");
    }
    Ok(())
}

/// The master key (and older keys) that seal secrets at rest.
fn build_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let mut keyring =
        Keyring::from_base64(&config.secrets.master_key_id, &config.secrets.master_key)
            .context("secrets.master_key")?;
    for (id, key) in config.secrets.previous_keys().unwrap_or_default() {
        keyring
            .add_previous_base64(&id, &key)
            .with_context(|| format!("secrets.previous_master_keys: key {id:?}"))?;
    }
    Ok(keyring)
}

/// Fails when `addr` (the value of config key `key`) cannot be bound, naming the key to change.
/// The probe socket is closed at once; Pingora binds the address again moments later.
fn ensure_free(key: &str, addr: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "{key} = {addr}: the address is already in use by another process; stop it or set {key} \
             (or CLAWDEPLOY_{}) to a free address",
            key.to_uppercase().replace('.', "__")
        ),
        Err(e) => anyhow::bail!("{key} = {addr}: cannot listen there ({e}); set {key} to an address of this machine"),
    }
}

/// What the background side needs to start; built by [`App::build`] before Pingora starts (the
/// control API's listener is bound first, so its address, an ephemeral port, is in the route
/// table).
struct Background {
    control_listener: std::net::TcpListener,
    database_url: String,
    store_options: StoreOptions,
    routes: Arc<RouteTable>,
    drain: Arc<Drain>,
    ctx: Arc<ApiContext>,
    verifier: Arc<SessionVerifier>,
    certs: Option<Arc<CertManager>>,
    llm_meter: Option<LlmMeterService>,
    usage_flush: UsageFlush,
    /// Instances' traffic at the edge, read by the pool to put idle ones to sleep.
    activity: Arc<Activity>,
    /// The edge's waker, given the pool once it exists.
    waker: Arc<PoolWaker>,
}

/// The skill catalogue (bundled skills and the curated directory, `<data dir>/skills` by default)
/// and the registry serving it to instances, which the control API shares.
fn skills(config: &Config) -> anyhow::Result<(Arc<RwLock<Catalogue>>, Arc<Registry>)> {
    let catalogue = Catalogue::load(&config.skills, &config.server.data_dir.join("skills"))
        .context("loading the skill catalogue ([skills])")?;
    tracing::info!(
        skills = catalogue.skills().count(),
        "skill catalogue loaded"
    );
    let catalogue = Arc::new(RwLock::new(catalogue));
    let registry = Arc::new(Registry::new(catalogue.clone(), config.skills.clone()));
    Ok((catalogue, registry))
}

/// The LLM meter the config asks for: at a fixed address, or (`auto`) on the listener the pool
/// binds where its instances reach it (handed over through `handoff`); `None` when off.
fn llm_meter(
    config: &Config,
    meter: &Arc<Meter>,
    keyring: &Arc<Keyring>,
    handoff: &ListenerHandoff,
) -> Option<LlmMeterService> {
    let listen = match config.llm.listen_mode() {
        LlmListen::Off => return None,
        LlmListen::At(address) => MeterListen::Bind(address.to_string()),
        LlmListen::Auto(_) => MeterListen::Handoff(handoff.clone()),
    };
    Some(
        LlmMeterService::new(
            listen,
            meter.clone(),
            keyring.clone(),
            config.secrets.jwt_key.as_bytes().to_vec(),
            Upstreams {
                openai: config.llm.openai_url.clone(),
                anthropic: config.llm.anthropic_url.clone(),
                google: config.llm.google_url.clone(),
            },
            config.llm.allowed_private_networks(),
        )
        .with_credits(clawdeploy_llm_egress::credits::Credits::new(
            &config.billing,
        )),
    )
}

/// The usage flush the config asks for (with Redis, it also syncs the shared counters).
fn usage_flush(config: &Config, meter: &Arc<Meter>) -> UsageFlush {
    let flush = UsageFlush::new(
        meter.clone(),
        Duration::from_secs(config.metering.flush_interval_secs),
    );
    if config.redis.url.is_empty() {
        flush
    } else {
        flush.with_redis(
            config.redis.url.clone(),
            Duration::from_millis(config.redis.sync_interval_ms),
        )
    }
}

/// Mails an instance's owner when it ends `crashed`.
struct MailOwner {
    store: Store,
    ctx: Arc<ApiContext>,
}

#[async_trait]
impl CrashNotice for MailOwner {
    async fn crashed(&self, instance: &Instance, reason: &str) {
        let user = match self.store.get_user(instance.user_id).await {
            Ok(Some(user)) => user,
            Ok(None) => return,
            Err(e) => return tracing::warn!(instance = %instance.id, "crash mail not sent: {e}"),
        };
        let body = format!(
            "Hello,\n\nYour assistant at {sub}.{base} has stopped: {reason}. Its data is kept.\n\n\
             Restart it from your dashboard: {app}/dashboard\n\nIf it keeps stopping, check your \
             SOUL.md and the security log there, or reply to this mail.\n\n-- ClawDeploy\n",
            sub = instance.subdomain,
            base = self.ctx.config.server.base_domain,
            app = self.ctx.app_origin(),
        );
        let subject = format!("Your assistant {} has stopped", instance.subdomain);
        if let Err(e) = self
            .ctx
            .mailer
            .send(&self.store, &user.email, &subject, &body)
            .await
        {
            tracing::warn!(instance = %instance.id, "crash mail not sent: {e}");
        }
    }
}

/// [`Background`] as a Pingora background service (it starts once).
struct BackgroundApp(Mutex<Option<Background>>);

#[async_trait]
impl BackgroundService for BackgroundApp {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(app) = self.0.lock().ok().and_then(|mut a| a.take()) else {
            tracing::error!("the app started twice");
            return;
        };
        app.run(shutdown).await;
    }
}

impl Background {
    async fn run(self, mut shutdown: ShutdownWatch) {
        let store = match Store::open_with(&self.database_url, self.store_options.clone()).await {
            Ok(store) => store,
            Err(e) => {
                tracing::error!("the app cannot open the database: {e}");
                return;
            }
        };
        let listener = match self
            .control_listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(self.control_listener))
        {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!("control API listener unusable: {e}");
                return;
            }
        };
        // The change broadcast; the route table and the revoked sessions follow it.
        let bus = ChangeBus::new(store.clone(), &self.database_url);
        tokio::spawn(bus.clone().listen(shutdown.clone()));
        tokio::spawn(routing::follow(
            store.clone(),
            self.routes.clone(),
            bus.subscribe(),
        ));
        if let Err(e) = self.verifier.reload(&store).await {
            tracing::error!("cannot load revoked sessions: {e}");
        }
        tokio::spawn(self.verifier.clone().follow(store.clone(), bus.subscribe()));
        let pool = match clawdeploy_pool::setup::pool_from_config(
            &self.ctx.config,
            store.clone(),
            bus.clone(),
            self.ctx.llm_listener.as_ref(),
            self.ctx.keyring.clone(),
            self.activity,
        )
        .await
        {
            Ok(pool) => pool,
            Err(e) => {
                tracing::error!(
                    "the instance runtime is unavailable, instances will not start: {e}"
                );
                None
            }
        };
        if let Some(pool) = &pool {
            self.waker.set(pool.clone());
            pool.notify_crashes(Arc::new(MailOwner {
                store: store.clone(),
                ctx: self.ctx.clone(),
            }));
            tokio::spawn(pool.clone().run(shutdown.clone()));
        }
        if let Some(certs) = &self.certs {
            tokio::spawn(
                certs
                    .clone()
                    .run(store.clone(), bus.clone(), shutdown.clone()),
            );
        }
        if let Some(llm_meter) = self.llm_meter {
            tokio::spawn(llm_meter.run(store.clone(), shutdown.clone()));
        }
        if let Some(registry) = self.ctx.registry.clone() {
            tokio::spawn(async move { registry.refresh_upstream().await });
        }
        tokio::spawn(self.usage_flush.run(store.clone(), shutdown.clone()));
        let state = ApiState {
            routes: self.routes,
            drain: self.drain,
            store: store.clone(),
            ctx: self.ctx,
            bus,
            pool,
            verifier: self.verifier,
            certs: self.certs,
        };
        let sweeper = tokio::spawn(account::sweep_forever(state.clone()));
        let billing_sweeper = tokio::spawn(clawdeploy_control_api::billing::sweep_forever(
            state.clone(),
        ));
        let serve = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!("control API stopped: {e}");
        }
        sweeper.abort();
        billing_sweeper.abort();
        store.close().await;
    }
}
