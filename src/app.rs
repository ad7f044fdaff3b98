//! The app beside the edge: the control API, the change broadcast and what follows it (routes,
//! revoked sessions), the instance pool, the certificate manager's work, the LLM meter and the
//! usage flush. They run on one Pingora background service, so they share one runtime and one
//! database pool: tokio I/O belongs to the runtime that created it, so a pool cannot be shared
//! across Pingora's services.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use anyhow::Context;
use clawdeploy_certs::CertManager;
use clawdeploy_config::{Config, LlmListen};
use clawdeploy_control_api::{account, router, ApiContext, ApiState, SessionVerifier};
use clawdeploy_llm_egress::{ListenerHandoff, LlmMeterService, MeterListen, Upstreams};
use clawdeploy_metering::{Meter, UsageFlush};
use clawdeploy_pool::{routing, CrashNotice, PoolWaker};
use clawdeploy_proxy::{Activity, Drain, RouteTable};
use clawdeploy_skills::{Catalogue, Registry};
use clawdeploy_store::changes::ChangeBus;
use clawdeploy_store::{Instance, Keyring, Store, StoreOptions};

/// What the app needs to start; built by `serve` before Pingora starts (the control API's
/// listener is bound first, so its address, an ephemeral port, is in the route table).
pub struct App {
    pub control_listener: std::net::TcpListener,
    pub database_url: String,
    pub store_options: StoreOptions,
    pub routes: Arc<RouteTable>,
    pub drain: Arc<Drain>,
    pub ctx: Arc<ApiContext>,
    pub verifier: Arc<SessionVerifier>,
    pub certs: Option<Arc<CertManager>>,
    pub llm_meter: Option<LlmMeterService>,
    pub usage_flush: UsageFlush,
    /// Instances' traffic at the edge, read by the pool to put idle ones to sleep.
    pub activity: Arc<Activity>,
    /// The edge's waker, given the pool once it exists.
    pub waker: Arc<PoolWaker>,
}

/// The skill catalogue (bundled skills and the curated directory, `<data dir>/skills` by default)
/// and the registry serving it to instances, which the control API shares.
pub fn skills(config: &Config) -> anyhow::Result<(Arc<RwLock<Catalogue>>, Arc<Registry>)> {
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
pub fn llm_meter(
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
    Some(LlmMeterService::new(
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
    ))
}

/// The usage flush the config asks for (with Redis, it also syncs the shared counters).
pub fn usage_flush(config: &Config, meter: &Arc<Meter>) -> UsageFlush {
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

/// [`App`] as a Pingora background service (it starts once).
pub struct AppService(Mutex<Option<App>>);

impl AppService {
    pub fn new(app: App) -> Self {
        Self(Mutex::new(Some(app)))
    }
}

#[async_trait]
impl BackgroundService for AppService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(app) = self.0.lock().ok().and_then(|mut a| a.take()) else {
            tracing::error!("the app started twice");
            return;
        };
        app.run(shutdown).await;
    }
}

impl App {
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
        let serve = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!("control API stopped: {e}");
        }
        sweeper.abort();
        store.close().await;
    }
}
