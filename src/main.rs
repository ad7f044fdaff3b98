//! `clawdeploy`: the one binary of a ClawDeploy edge node.
//!
//! `serve` wires the crates into one Pingora server: the edge proxy on the public listeners and the
//! control API as a background service behind it. `check-config` validates and prints the config;
//! `migrate` applies database migrations; `admin` manages operator credentials.

mod app;
mod certs;
mod secrets;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};

use clawdeploy_config::{mask_url_password, Config, LogFormat};
use clawdeploy_control_api::{ApiContext, SessionVerifier};
use clawdeploy_metering::Meter;
use clawdeploy_proxy::{Drain, DrainingShutdown, EdgeProxy, EdgeSettings, Listeners, RouteTable};
use clawdeploy_store::{Instance, Keyring, Role, Store, StoreOptions};

#[derive(Parser)]
#[command(
    name = "clawdeploy",
    version,
    about = "Managed OpenClaw hosting: the edge server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge: proxy, control API and everything beside them.
    Serve {
        /// TOML config file; without one the embedded defaults apply.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate the config and print it with secrets masked (non-zero exit on errors).
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Apply the database migrations (`serve` also does this at start).
    Migrate {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Operator credentials.
    Admin {
        #[arg(long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The OpenClaw instance image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the OpenClaw image locally (Debian by debootstrap, Node and OpenClaw from the npm
    /// registry, pinned), showing progress; cached steps make a second build fast.
    Build {
        /// Image tag.
        #[arg(long, default_value = clawdeploy_pool::image::OPENCLAW_IMAGE)]
        tag: String,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a named admin token: printed once, only its hash is stored.
    CreateToken { name: String },
    /// Revoke the active admin token with this name.
    RevokeToken { name: String },
    /// Give the user with this email the operator role (admin pages with a normal login).
    Grant { email: String },
    /// Take the operator role away.
    Revoke { email: String },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(config),
        Command::Migrate { config } => migrate(config),
        Command::Admin { config, command } => admin(config, command),
        Command::Image {
            command: ImageCommand::Build { tag },
        } => block_on(async {
            let built = clawdeploy_pool::image::build(Some(&tag)).await?;
            if clawdeploy_pool::image::exists(&built).await {
                println!("{built}");
            } else {
                eprintln!("no Docker Engine: OpenClaw is installed for the process runtime only (development)");
            }
            anyhow::Ok(())
        })
        .and_then(|built| built),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn check_config(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(path.as_deref())?;
    print!("{}", config.to_masked_toml());
    Ok(())
}

/// A small runtime for one-off database work outside `serve`.
fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    Ok(rt.block_on(f))
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
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

fn migrate(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(path.as_deref())?;
    block_on(async {
        let store = open_store(&config).await?;
        store.close().await;
        anyhow::Ok(())
    })??;
    println!(
        "migrations applied to {}",
        mask_url_password(&config.database_url())
    );
    Ok(())
}

fn admin(path: Option<PathBuf>, command: AdminCommand) -> anyhow::Result<()> {
    let config = Config::load(path.as_deref())?;
    block_on(async {
        let store = open_store(&config).await?;
        let result = match command {
            AdminCommand::CreateToken { name } => {
                let name = name.trim();
                anyhow::ensure!(
                    !name.is_empty() && name.len() <= 64,
                    "the token name must be 1 to 64 characters"
                );
                let (token, hash) = clawdeploy_store::secrets::new_token()?;
                store.create_admin_token(name, &hash).await.map_err(|e| {
                    if e.is_conflict(clawdeploy_store::Conflict::AdminTokenName) {
                        anyhow::anyhow!(
                            "an active admin token is already named {name:?}; revoke it first"
                        )
                    } else {
                        e.into()
                    }
                })?;
                eprintln!("admin token {name:?} created; it is shown only now, keep it safe:");
                println!("{token}");
                Ok(())
            }
            AdminCommand::RevokeToken { name } => {
                anyhow::ensure!(
                    store.revoke_admin_token(&name).await?,
                    "no active admin token is named {name:?}"
                );
                println!("admin token {name:?} revoked");
                Ok(())
            }
            AdminCommand::Grant { email } => set_role(&store, &email, Role::Operator).await,
            AdminCommand::Revoke { email } => set_role(&store, &email, Role::User).await,
        };
        store.close().await;
        result
    })?
}

async fn set_role(store: &Store, email: &str, role: Role) -> anyhow::Result<()> {
    let user = store
        .get_user_by_email(email)
        .await?
        .with_context(|| format!("no user has the email {email:?}"))?;
    store.set_user_role(user.id, role).await?;
    println!("{} now has the {} role", user.email, role.as_str());
    Ok(())
}

/// Runs the server until a signal stops it. Never inside a tokio runtime: Pingora owns its runtimes.
fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = Config::load(path.as_deref())?;
    init_logging(config.server.log_format);
    // Before anything records: every crate records through the `metrics` facade.
    let metrics_handle = clawdeploy_metering::install_recorder()?;
    load_secrets(&mut config)?;
    // Built once: the store, the API, the pool, the certificate manager and the LLM meter share it.
    let keyring = Arc::new(build_keyring(&config)?);

    let mut meter = clawdeploy_metering::Meter::new(config.tiers.clone());
    if !config.redis.url.is_empty() {
        meter = meter.shared();
    }
    let meter = Arc::new(meter);
    let instances = prepare_store(&config, &keyring, &meter)?;
    let server_config = &config.server;

    let routes = route_table(&config, &meter, &instances)?;
    // The control API listens on an ephemeral loopback port that only the edge routes to.
    let control_listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding the control API listener")?;
    routes.set_control_plane(control_listener.local_addr()?);
    tracing::info!(listen = %control_listener.local_addr()?, "control API listening (for the edge only)");

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
    let metering = edge_metering(&config, &meter, &mut server);
    // Only this process's edge can call its control API (random per start, never stored).
    let control_plane_secret = secrets::random_hex()?;
    let edge = EdgeProxy::new(
        routes.clone(),
        EdgeSettings::from(server_config),
        drain.clone(),
        verifier.clone(),
    )
    .with_metering(Arc::new(metering))
    .with_control_plane_secret(&control_plane_secret)
    .with_gateway_proof_key(config.secrets.jwt_key.as_bytes());
    // Idle instances sleep: the edge records their traffic for the pool and wakes them on a
    // request (the pool, made by the app, is handed to the waker when it starts).
    let activity = clawdeploy_proxy::Activity::new();
    let waker = clawdeploy_pool::PoolWaker::new();
    let edge = edge.with_sleep(activity.clone(), waker.clone());
    // HTTPS: certificates chosen per SNI from the certificate manager's store (issue #6).
    let cert_manager = certs::start(&config, keyring.clone(), routes.clone())?;
    let edge = match &cert_manager {
        Some(manager) => edge.with_tls(certs::edge_tls(&config, manager)),
        None => edge,
    };
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

    let database_url = config.database_url();
    let options = store_options(&config);
    if !config.metrics.listen.is_empty() {
        let listener = std::net::TcpListener::bind(&config.metrics.listen).with_context(|| {
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
    let llm_handoff = clawdeploy_llm_egress::ListenerHandoff::new();
    let (catalogue, registry) = app::skills(&config)?;
    // The skill registry is served beside the meter, where instances reach it.
    let llm_meter = app::llm_meter(&config, &meter, &keyring, &llm_handoff)
        .map(|m| m.with_routes(registry.clone().router()));
    let usage_flush = app::usage_flush(&config, &meter);
    let http_listen = server_config.http_listen.clone();
    let base_domain = server_config.base_domain.clone();
    let grace = Duration::from_secs(server_config.grace_period_secs);
    let admin_token = config.server.admin_token.clone();
    let jwt_key = config.secrets.jwt_key.as_bytes().to_vec();
    let mut ctx = ApiContext::new(config, admin_token, jwt_key, keyring).context("[smtp]")?;
    ctx.meter = Some(meter.clone());
    ctx.llm_listener = Some(llm_handoff);
    ctx.catalogue = catalogue;
    ctx.registry = llm_meter.is_some().then_some(registry);
    ctx.edge_secret = control_plane_secret.into();
    tracing::info!(mail = ctx.mailer.kind(), "outgoing mail");
    let app = app::AppService::new(app::App {
        control_listener,
        database_url: database_url.clone(),
        store_options: options.clone(),
        routes: routes.clone(),
        drain: drain.clone(),
        ctx: Arc::new(ctx),
        verifier,
        certs: cert_manager,
        llm_meter,
        usage_flush,
        activity,
        waker,
    });
    let mut app_service = pingora::services::background::background_service("app", app);
    app_service.threads = Some(2);
    server.add_service(app_service);

    tracing::info!(
        http = %http_listen,
        app = %format!("http://{}", routes.app_domain()),
        base_domain = %base_domain,
        "clawdeploy serving"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainingShutdown { drain, grace }),
    });
    // Pingora's runtimes are gone: the counts since the last flush are written here.
    match block_on(async {
        let store = Store::open_with(&database_url, options).await?;
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

/// What the edge meters and limits: the meter, rate limits (shared through Redis by a service of
/// their own when configured) and where a refused user is sent to upgrade.
fn edge_metering(
    config: &Config,
    meter: &Arc<Meter>,
    server: &mut Server,
) -> clawdeploy_proxy::EdgeMetering {
    let upgrade_url = if config.metering.upgrade_url.is_empty() {
        format!(
            "{}/billing",
            config.public_origin(&config.server.app_domain())
        )
    } else {
        config.metering.upgrade_url.clone()
    };
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
        upgrade_url: upgrade_url.into(),
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

/// Migrations, re-sealing after a key rotation, the meter's counts and the instances the route
/// table starts with, on a runtime dropped before Pingora starts its own (a database pool is
/// bound to the runtime that made it, so the app opens its own).
fn prepare_store(
    config: &Config,
    keyring: &Keyring,
    meter: &Meter,
) -> anyhow::Result<Vec<Instance>> {
    block_on(async {
        let store = open_store(config).await?;
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
        match clawdeploy_metering::flush::seed_from_store(meter, &store).await {
            Ok(n) => tracing::info!(instances = n, "usage counters loaded from the store"),
            Err(e) => tracing::error!("cannot load this period's usage: {e}"),
        }
        store.close().await;
        anyhow::Ok(instances)
    })?
}

/// The route table: the config's operator routes and every instance in the store.
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
        routes.upsert_operator(&route.host, upstream)?;
    }
    routes.inform_meter(meter.clone());
    for inst in instances {
        routes.upsert_subdomain(&inst.subdomain, clawdeploy_pool::routing::route_for(inst));
    }
    tracing::info!(
        instances = instances.len(),
        "route table loaded from the store"
    );
    Ok(routes)
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

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
