//! Skill archives: zip files holding a skill's directory (`SKILL.md` at the root, or in one
//! top-level folder). Curated directories are packed here; upstream archives are checked here
//! before any instance can download them.

use std::io::{Cursor, Read, Write};
use std::path::{Component, Path};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

/// Most entries an archive may hold.
const MAX_ENTRIES: usize = 2_000;

/// A checked skill archive and its SHA-256 (lower-case hex), which the registry sends as
/// `x-clawhub-sha256` and OpenClaw's installer verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// The zip file.
    pub bytes: Bytes,
    /// SHA-256 of `bytes`, hex.
    pub sha256: String,
}

impl Archive {
    fn new(bytes: Vec<u8>) -> Self {
        let sha256 = sha256_hex(&bytes);
        Self {
            bytes: Bytes::from(bytes),
            sha256,
        }
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why an archive (or a directory to pack) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Larger than `skills.max_archive_bytes`, packed or unpacked.
    #[error("larger than the {0}-byte limit")]
    TooBig(u64),
    /// More than 2000 entries.
    #[error("more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// An entry's path is absolute, climbs out with `..`, or is not plain UTF-8.
    #[error("entry {0:?} escapes the skill's directory")]
    Traversal(String),
    /// An entry is a symbolic link (it could point anywhere in the instance).
    #[error("entry {0:?} is a symbolic link")]
    Symlink(String),
    /// No `SKILL.md` at the root or in a single top-level folder.
    #[error("no SKILL.md at its root")]
    NoSkillMd,
    /// The download's SHA-256 is not the one the registry announced.
    #[error("checksum mismatch: announced {announced}, got {actual}")]
    Checksum {
        /// The announced hash.
        announced: String,
        /// The downloaded bytes' hash.
        actual: String,
    },
    /// Not a readable zip file.
    #[error("not a zip archive: {0}")]
    Zip(String),
    /// Reading a curated directory failed.
    #[error("{0}")]
    Io(String),
}

/// Packs a curated skill directory into a deterministic zip (sorted entries, fixed times, so
/// its checksum only changes with its contents). Symbolic links are refused, not followed.
pub fn pack_dir(dir: &Path, max_bytes: u64) -> Result<Archive, ArchiveError> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    if files.len() > MAX_ENTRIES {
        return Err(ArchiveError::TooManyEntries);
    }
    if !files.iter().any(|f| f == "SKILL.md") {
        return Err(ArchiveError::NoSkillMd);
    }
    let mut total = 0u64;
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for name in &files {
        let data =
            std::fs::read(dir.join(name)).map_err(|e| ArchiveError::Io(format!("{name}: {e}")))?;
        total += data.len() as u64;
        if total > max_bytes {
            return Err(ArchiveError::TooBig(max_bytes));
        }
        zip.start_file(name.as_str(), options)
            .map_err(|e| ArchiveError::Zip(e.to_string()))?;
        zip.write_all(&data)
            .map_err(|e| ArchiveError::Io(e.to_string()))?;
    }
    let bytes = zip
        .finish()
        .map_err(|e| ArchiveError::Zip(e.to_string()))?
        .into_inner();
    if bytes.len() as u64 > max_bytes {
        return Err(ArchiveError::TooBig(max_bytes));
    }
    Ok(Archive::new(bytes))
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), ArchiveError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| ArchiveError::Io(format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| ArchiveError::Io(e.to_string()))?;
        let path = entry.path();
        let relative = path
            .strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str())
            .ok_or_else(|| ArchiveError::Traversal(path.display().to_string()))?
            .to_string();
        let kind = entry
            .file_type()
            .map_err(|e| ArchiveError::Io(e.to_string()))?;
        if kind.is_symlink() {
            return Err(ArchiveError::Symlink(relative));
        }
        if relative == "clawdeploy.toml" {
            continue; // the platform's manifest, not part of the skill
        }
        if kind.is_dir() {
            collect(root, &path, out)?;
        } else if kind.is_file() {
            out.push(relative);
            if out.len() > MAX_ENTRIES {
                return Err(ArchiveError::TooManyEntries);
            }
        }
    }
    Ok(())
}

/// Checks a downloaded archive before any instance may have it: at most `max_bytes` packed and
/// unpacked (a zip bomb is cut off while reading, whatever the sizes it declares), every entry a
/// plain file or folder inside the skill's directory (no absolute paths, no `..`, no symbolic
/// links), and a `SKILL.md` at its root or in one top-level folder. `announced`: the SHA-256 the
/// source gave, checked when present.
pub fn check(
    bytes: Bytes,
    max_bytes: u64,
    announced: Option<&str>,
) -> Result<Archive, ArchiveError> {
    if bytes.len() as u64 > max_bytes {
        return Err(ArchiveError::TooBig(max_bytes));
    }
    let sha256 = sha256_hex(&bytes);
    if let Some(announced) = announced {
        if !announced.eq_ignore_ascii_case(&sha256) {
            return Err(ArchiveError::Checksum {
                announced: announced.to_string(),
                actual: sha256,
            });
        }
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(&bytes[..]))
        .map_err(|e| ArchiveError::Zip(e.to_string()))?;
    if zip.len() > MAX_ENTRIES {
        return Err(ArchiveError::TooManyEntries);
    }
    let mut unpacked = 0u64;
    let mut skill_md = false;
    let mut buf = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| ArchiveError::Zip(e.to_string()))?;
        let name = entry
            .name()
            .map_err(|_| ArchiveError::Traversal(format!("entry {i} (not UTF-8)")))?
            .to_string();
        let path = Path::new(&name);
        let plain =
            !name.contains('\\') && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain || entry.enclosed_name().is_none() {
            return Err(ArchiveError::Traversal(name));
        }
        if entry.is_symlink() {
            return Err(ArchiveError::Symlink(name));
        }
        if entry.is_dir() {
            continue;
        }
        let depth = path.components().count();
        if path.file_name().is_some_and(|f| f == "SKILL.md") && depth <= 2 {
            skill_md = true;
        }
        buf.clear();
        let limit = max_bytes - unpacked + 1;
        let read = (&mut entry)
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| ArchiveError::Zip(format!("{name}: {e}")))?;
        unpacked += read as u64;
        if unpacked > max_bytes {
            return Err(ArchiveError::TooBig(max_bytes));
        }
    }
    if !skill_md {
        return Err(ArchiveError::NoSkillMd);
    }
    Ok(Archive { bytes, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(entries: &[(&str, &[u8])], symlink: Option<(&str, &str)>) -> Bytes {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default();
        for (name, data) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        if let Some((name, target)) = symlink {
            zip.add_symlink(name, target, options).unwrap();
        }
        Bytes::from(zip.finish().unwrap().into_inner())
    }

    const SKILL: &[u8] = b"---\nname: hello\ndescription: hi\n---\n";

    #[test]
    fn a_plain_skill_passes_and_its_checksum_is_checked() {
        let z = zip_of(&[("SKILL.md", SKILL), ("scripts/run.sh", b"echo")], None);
        let a = check(z.clone(), 1 << 20, None).unwrap();
        assert_eq!(a.sha256, sha256_hex(&z));
        assert!(check(z.clone(), 1 << 20, Some(&a.sha256.to_uppercase())).is_ok());
        assert!(matches!(
            check(z, 1 << 20, Some(&"0".repeat(64))),
            Err(ArchiveError::Checksum { .. })
        ));
        // One top-level folder is fine too (ClawHub's own layout).
        assert!(check(zip_of(&[("hello/SKILL.md", SKILL)], None), 1 << 20, None).is_ok());
    }

    #[test]
    fn traversal_symlinks_bombs_and_missing_skill_md_are_refused() {
        for evil in [
            "../evil.sh",
            "/etc/cron.d/evil",
            "a/../../evil",
            "a\\..\\evil",
        ] {
            let z = zip_of(&[("SKILL.md", SKILL), (evil, b"x")], None);
            assert!(
                matches!(check(z, 1 << 20, None), Err(ArchiveError::Traversal(_))),
                "{evil}"
            );
        }
        let z = zip_of(&[("SKILL.md", SKILL)], Some(("link", "/etc/passwd")));
        assert!(matches!(
            check(z, 1 << 20, None),
            Err(ArchiveError::Symlink(_))
        ));
        // 4 MiB of zeros packs to a few KiB: the unpacked size is what counts.
        let zeros = vec![0u8; 4 << 20];
        let z = zip_of(&[("SKILL.md", SKILL), ("zeros", &zeros)], None);
        assert!(z.len() < 64 << 10);
        assert!(matches!(
            check(z, 1 << 20, None),
            Err(ArchiveError::TooBig(_))
        ));
        let z = zip_of(&[("README.md", b"no skill")], None);
        assert!(matches!(
            check(z, 1 << 20, None),
            Err(ArchiveError::NoSkillMd)
        ));
        assert!(matches!(
            check(Bytes::from_static(b"not a zip"), 1 << 20, None),
            Err(ArchiveError::Zip(_))
        ));
    }

    #[test]
    fn packing_is_deterministic_and_refuses_symlinks() {
        let dir = std::env::temp_dir().join(format!("cd-pack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("scripts")).unwrap();
        std::fs::write(dir.join("SKILL.md"), SKILL).unwrap();
        std::fs::write(dir.join("scripts/run.sh"), b"echo").unwrap();
        std::fs::write(dir.join("clawdeploy.toml"), b"category = \"x\"").unwrap();
        let a = pack_dir(&dir, 1 << 20).unwrap();
        assert_eq!(a, pack_dir(&dir, 1 << 20).unwrap());
        let checked = check(a.bytes.clone(), 1 << 20, Some(&a.sha256)).unwrap();
        let mut zip = zip::ZipArchive::new(Cursor::new(&checked.bytes[..])).unwrap();
        let names: Vec<String> = (0..zip.len())
            .map(|i| zip.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        assert_eq!(names, ["SKILL.md", "scripts/run.sh"]);
        std::os::unix::fs::symlink("/etc/passwd", dir.join("scripts/passwd")).unwrap();
        assert!(matches!(
            pack_dir(&dir, 1 << 20),
            Err(ArchiveError::Symlink(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
