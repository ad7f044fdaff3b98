//! `clawdeploy`: the one binary of a ClawDeploy edge node.
//!
//! `serve` builds the node ([`app::App`]: the edge proxy on the public listeners, the control API
//! and everything beside it) and runs it. `check-config` validates and prints the config;
//! `migrate` applies database migrations; `admin` manages operator credentials; `image build`
//! builds the OpenClaw image.

mod app;
mod certs;
mod logging;
mod secrets;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use clawdeploy_config::{mask_url_password, Config};
use clawdeploy_store::{Role, Store};

use app::{block_on, open_store, App};

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
        // Never inside a tokio runtime: Pingora owns its runtimes.
        Command::Serve { config } => App::build(config.as_deref()).and_then(App::run),
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
