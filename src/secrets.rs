//! Secrets the embedded default generates on first start and keeps in the data dir (mode 0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Reads `data_dir/name`, or creates it with 32 random bytes in hex.
pub fn load_or_generate(data_dir: &Path, name: &str) -> anyhow::Result<String> {
    load_or_generate_with(data_dir, name, random_hex)
}

/// 32 random bytes in hex.
pub fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads `data_dir/name`, or creates it (mode 0600) with what `generate` makes.
pub fn load_or_generate_with(
    data_dir: &Path,
    name: &str,
    generate: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let path = data_dir.join(name);
    match fs::read_to_string(&path) {
        Ok(existing) if !existing.trim().is_empty() => return Ok(existing.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700)).ok();
    let secret = generate()?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    Ok(secret)
}
