//! `clawdeploy`: the one binary of a ClawDeploy edge node.
//!
//! `serve` wires the crates into one Pingora server: the edge proxy on the public listeners and the
//! control API as a background service behind it. `check-config` validates and prints the config.

mod secrets;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};

use clawdeploy_config::{Config, LogFormat};
use clawdeploy_control_api::{ApiState, ControlApiService};
use clawdeploy_proxy::{Drain, DrainingShutdown, EdgeProxy, EdgeSettings, Listeners, RouteTable};

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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(config),
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

/// Runs the server until a signal stops it. Never inside a tokio runtime: Pingora owns its runtimes.
fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = Config::load(path.as_deref())?;
    init_logging(config.server.log_format);
    if config.server.admin_token.is_empty() {
        config.server.admin_token =
            secrets::load_or_generate(&config.server.data_dir, "admin_token")?;
        tracing::info!(path = %config.server.data_dir.join("admin_token").display(), "admin token kept in the data dir");
    }
    let server_config = &config.server;

    let routes = Arc::new(RouteTable::new(
        &server_config.base_domain,
        &server_config.app_domain(),
    ));
    for route in &config.routes {
        let upstream = route.upstream.parse().context("validated upstream")?;
        routes.upsert_operator(&route.host, upstream)?;
    }
    // The control API listens on an ephemeral loopback port that only the edge routes to.
    let control_listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding the control API listener")?;
    routes.set_control_plane(control_listener.local_addr()?);

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

    let edge = EdgeProxy::new(
        routes.clone(),
        EdgeSettings::from(server_config),
        drain.clone(),
        Arc::new(clawdeploy_proxy::DenyAll),
    );
    let listeners = Listeners {
        http: vec![server_config.http_listen.clone()],
    };
    server.add_service(clawdeploy_proxy::edge_service(
        &server.configuration,
        edge,
        &listeners,
    ));

    let api_state = ApiState {
        routes: routes.clone(),
        admin_token: config.server.admin_token.as_str().into(),
        drain: drain.clone(),
    };
    let api = ControlApiService::new(control_listener, clawdeploy_control_api::router(api_state));
    let mut api_service = pingora::services::background::background_service("control api", api);
    api_service.threads = Some(2);
    server.add_service(api_service);

    tracing::info!(
        http = %server_config.http_listen,
        app = %format!("http://{}", routes.app_domain()),
        base_domain = %server_config.base_domain,
        "clawdeploy serving"
    );
    let grace = Duration::from_secs(server_config.grace_period_secs);
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainingShutdown { drain, grace }),
    });
    tracing::info!("clawdeploy stopped");
    Ok(())
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
