//! The catalogue: every skill a user can install, from one list — the bundled OpenClaw skills
//! the platform offers (`bundled.toml`), the operator's curated skills (`skills.curated_dir`)
//! and the upstream ClawHub skills the operator allowed (`skills.upstream_allow`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use clawdeploy_config::{SkillsConfig, Tier};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::archive::{self, Archive};
use crate::Error;

/// The OpenClaw version the bundled table describes (`bundled.toml`): an installed bundled skill's
/// version.
pub const BUNDLED_VERSION: &str = "2026.9.6";

/// Where a catalogue skill comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Shipped with OpenClaw: installing it enables it in the instance's config.
    Bundled,
    /// The operator's curated directory, served by the platform's registry.
    Curated,
    /// An upstream ClawHub, proxied and cached by the platform's registry.
    Upstream,
}

impl Origin {
    /// Whether OpenClaw's installer fetches it from the platform's registry.
    pub fn from_registry(self) -> bool {
        !matches!(self, Origin::Bundled)
    }
}

/// What kind of value a config field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// Sealed at rest, never shown again, delivered only to the instance.
    Secret,
    /// Plain text, shown back.
    String,
}

/// One config field of a skill, delivered to the instance as the environment variable `name`
/// of the skill's `skills.entries.<id>.env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigField {
    /// The environment variable, e.g. `NOTION_API_TOKEN`.
    pub name: String,
    /// What a person is asked for.
    pub label: String,
    /// Secret or plain.
    pub kind: FieldKind,
    /// Installing without it is refused.
    #[serde(default)]
    pub required: bool,
}

/// A skill as `bundled.toml` and a curated `clawdeploy.toml` describe it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    emoji: Option<String>,
    #[serde(default = "other")]
    category: String,
    #[serde(default)]
    tags: Vec<String>,
    homepage: Option<String>,
    #[serde(default)]
    min_tier: Tier,
    #[serde(default)]
    fields: Vec<ConfigField>,
    version: Option<String>,
}

fn other() -> String {
    "other".into()
}

#[derive(Deserialize)]
struct BundledFile {
    skill: Vec<Spec>,
}

/// One installable skill.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skill {
    /// OpenClaw's name for it: the bundled skill's name, or the registry slug.
    pub id: String,
    /// Display name.
    pub name: String,
    /// One or two sentences.
    pub description: String,
    /// An emoji for the card, if any.
    pub emoji: Option<String>,
    /// `productivity`, `development`, `creative`, `media`, `automation`, … (`other` by default).
    pub category: String,
    /// Search tags.
    pub tags: Vec<String>,
    /// The skill's home page, if any.
    pub homepage: Option<String>,
    /// The version installed now.
    pub version: String,
    /// Where it comes from.
    pub origin: Origin,
    /// The cheapest tier that may install it.
    pub min_tier: Tier,
    /// Config fields asked at install.
    pub fields: Vec<ConfigField>,
}

/// Config given at install or change, split by kind.
#[derive(Debug, Default)]
pub struct SplitConfig {
    /// Plain fields.
    pub plain: Map<String, Value>,
    /// Secret fields (sealed by the store).
    pub secrets: BTreeMap<String, String>,
}

/// Why a config was refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required field is missing or empty.
    #[error("{0} is required")]
    Missing(String),
    /// The skill has no such field.
    #[error("{field} is not a config field of {skill} (its fields: {known})")]
    Unknown {
        /// The field given.
        field: String,
        /// The skill.
        skill: String,
        /// Its fields, comma-separated (or "none").
        known: String,
    },
    /// A field's value is not a string (or null, to clear it on a change).
    #[error("{0} must be a string")]
    NotText(String),
    /// A value longer than 4096 bytes or holding a control character.
    #[error("{0} must be at most 4096 characters of text without control characters")]
    BadText(String),
}

impl Skill {
    /// Checks `config` against the skill's fields and splits it into plain and secret values.
    /// `complete`: every required field must be there (an install); otherwise only the fields
    /// given are checked (a change; `null` or "" clears a field).
    pub fn split_config(
        &self,
        config: &Map<String, Value>,
        complete: bool,
    ) -> Result<SplitConfig, ConfigError> {
        let mut out = SplitConfig::default();
        for (key, value) in config {
            let Some(field) = self.fields.iter().find(|f| &f.name == key) else {
                let known: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
                return Err(ConfigError::Unknown {
                    field: key.clone(),
                    skill: self.id.clone(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                });
            };
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Null if !complete => String::new(),
                _ => return Err(ConfigError::NotText(key.clone())),
            };
            if text.len() > 4096 || text.chars().any(char::is_control) {
                return Err(ConfigError::BadText(key.clone()));
            }
            match field.kind {
                FieldKind::Secret => {
                    out.secrets.insert(key.clone(), text);
                }
                FieldKind::String if text.is_empty() => {
                    out.plain.insert(key.clone(), Value::Null);
                }
                FieldKind::String => {
                    out.plain.insert(key.clone(), Value::String(text));
                }
            }
        }
        if complete {
            for field in self.fields.iter().filter(|f| f.required) {
                let given = config
                    .get(&field.name)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty());
                if !given {
                    return Err(ConfigError::Missing(field.name.clone()));
                }
            }
        }
        Ok(out)
    }
}

/// Every installable skill, with the curated skills' archives.
#[derive(Debug, Default)]
pub struct Catalogue {
    skills: BTreeMap<String, Skill>,
    archives: HashMap<String, Archive>,
}

/// Whether `slug` can name a skill: 1–64 of `[a-z0-9-]`, starting with a letter or digit.
pub fn valid_slug(slug: &str) -> bool {
    !slug.is_empty()
        && slug.len() <= 64
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
}

impl Catalogue {
    /// The bundled table plus the curated skills of `config.curated_dir` (`default_dir` when that
    /// is empty). A curated skill that fails its checks (no SKILL.md, a symlink, too big, a name
    /// that is not its directory's) is left out and logged; the others load.
    pub fn load(config: &SkillsConfig, default_dir: &Path) -> Result<Catalogue, Error> {
        let mut catalogue = Catalogue::bundled()?;
        let dir = if config.curated_dir.as_os_str().is_empty() {
            default_dir.to_path_buf()
        } else {
            config.curated_dir.clone()
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(catalogue),
            Err(e) => return Err(Error::Io(format!("{}: {e}", dir.display()))),
        };
        let mut dirs: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        dirs.sort();
        for path in dirs.into_iter().filter(|p| p.is_dir()) {
            match curated(&path, config.max_archive_bytes) {
                Ok((skill, archive)) => {
                    if catalogue.skills.contains_key(&skill.id) {
                        tracing::warn!(skill = %skill.id, "curated skill skipped: a bundled skill has its name");
                        continue;
                    }
                    catalogue.archives.insert(skill.id.clone(), archive);
                    catalogue.skills.insert(skill.id.clone(), skill);
                }
                Err(e) => tracing::warn!(path = %path.display(), "curated skill refused: {e}"),
            }
        }
        Ok(catalogue)
    }

    /// The bundled table alone.
    pub fn bundled() -> Result<Catalogue, Error> {
        let file: BundledFile = toml::from_str(include_str!("bundled.toml"))
            .map_err(|e| Error::Manifest(format!("bundled.toml: {e}")))?;
        let mut skills = BTreeMap::new();
        for spec in file.skill {
            let skill = skill_from(
                spec.clone(),
                spec.id.clone(),
                Origin::Bundled,
                BUNDLED_VERSION.into(),
            );
            skills.insert(skill.id.clone(), skill);
        }
        Ok(Catalogue {
            skills,
            archives: HashMap::new(),
        })
    }

    /// A skill by id.
    pub fn get(&self, id: &str) -> Option<&Skill> {
        self.skills.get(id)
    }

    /// Every skill, by id.
    pub fn skills(&self) -> impl Iterator<Item = &Skill> {
        self.skills.values()
    }

    /// A curated skill's archive.
    pub fn archive(&self, id: &str) -> Option<&Archive> {
        self.archives.get(id)
    }

    /// Adds an upstream skill the registry has fetched and checked (its metadata from the
    /// upstream's detail answer).
    pub fn insert_upstream(&mut self, skill: Skill) {
        self.skills.entry(skill.id.clone()).or_insert(skill);
    }
}

fn skill_from(spec: Spec, id: String, origin: Origin, version: String) -> Skill {
    Skill {
        name: if spec.name.is_empty() {
            id.clone()
        } else {
            spec.name
        },
        id,
        description: spec.description,
        emoji: spec.emoji,
        category: spec.category,
        tags: spec.tags,
        homepage: spec.homepage,
        version,
        origin,
        min_tier: spec.min_tier,
        fields: spec.fields,
    }
}

/// A curated skill directory: `SKILL.md` (whose frontmatter `name` must be the directory's
/// name, the slug OpenClaw installs it under) and an optional `clawdeploy.toml`.
fn curated(dir: &Path, max_bytes: u64) -> Result<(Skill, Archive), Error> {
    let slug = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| valid_slug(n))
        .ok_or_else(|| {
            Error::Manifest("the directory name is not a slug (1-64 of a-z, 0-9, -)".into())
        })?
        .to_string();
    let skill_md = std::fs::read_to_string(dir.join("SKILL.md"))
        .map_err(|e| Error::Manifest(format!("SKILL.md: {e}")))?;
    let front = frontmatter(&skill_md);
    if front.get("name").map(String::as_str) != Some(slug.as_str()) {
        return Err(Error::Manifest(format!(
            "SKILL.md's frontmatter name must be {slug:?}, the directory's name"
        )));
    }
    let spec: Spec = match std::fs::read_to_string(dir.join("clawdeploy.toml")) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| Error::Manifest(format!("clawdeploy.toml: {e}")))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            toml::from_str("").map_err(|e| Error::Manifest(e.to_string()))?
        }
        Err(e) => return Err(Error::Io(format!("clawdeploy.toml: {e}"))),
    };
    let mut spec = spec;
    if spec.description.is_empty() {
        spec.description = front.get("description").cloned().unwrap_or_default();
    }
    let version = spec.version.clone().unwrap_or_else(|| "1.0.0".into());
    let archive = archive::pack_dir(dir, max_bytes)?;
    Ok((skill_from(spec, slug, Origin::Curated, version), archive))
}

/// The `key: value` lines of a SKILL.md's YAML frontmatter (top-level scalars only: `name` and
/// `description` are all the catalogue reads, so a YAML parser is not pulled in for them).
pub fn frontmatter(skill_md: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut lines = skill_md.lines();
    if lines.next().map(str::trim_end) != Some("---") {
        return out;
    }
    for line in lines {
        if line.trim_end() == "---" {
            break;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            out.insert(key.trim().to_string(), value.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_table_loads_and_names_real_fields() {
        let c = Catalogue::bundled().unwrap();
        assert!(c.skills().count() >= 10);
        let notion = c.get("notion").unwrap();
        assert_eq!(notion.origin, Origin::Bundled);
        assert_eq!(notion.fields[0].kind, FieldKind::Secret);
        assert_eq!(c.get("taskflow").unwrap().min_tier, Tier::Pro);
        assert_eq!(c.get("weather").unwrap().min_tier, Tier::Free);
        for s in c.skills() {
            assert!(valid_slug(&s.id) && !s.description.is_empty(), "{s:?}");
        }
    }

    #[test]
    fn config_is_checked_and_split() {
        let c = Catalogue::bundled().unwrap();
        let notion = c.get("notion").unwrap();
        let cfg = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            notion
                .split_config(&cfg(serde_json::json!({})), true)
                .unwrap_err(),
            ConfigError::Missing("NOTION_API_TOKEN".into())
        );
        let err = notion
            .split_config(&cfg(serde_json::json!({"TOKEN": "x"})), true)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "TOKEN is not a config field of notion (its fields: NOTION_API_TOKEN)"
        );
        assert_eq!(
            notion
                .split_config(&cfg(serde_json::json!({"NOTION_API_TOKEN": 5})), true)
                .unwrap_err(),
            ConfigError::NotText("NOTION_API_TOKEN".into())
        );
        assert_eq!(
            notion
                .split_config(&cfg(serde_json::json!({"NOTION_API_TOKEN": "a\nb"})), true)
                .unwrap_err(),
            ConfigError::BadText("NOTION_API_TOKEN".into())
        );
        let split = notion
            .split_config(
                &cfg(serde_json::json!({"NOTION_API_TOKEN": "secret_x"})),
                true,
            )
            .unwrap();
        assert!(split.plain.is_empty());
        assert_eq!(split.secrets["NOTION_API_TOKEN"], "secret_x");
    }

    #[test]
    fn frontmatter_reads_top_level_scalars() {
        let f = frontmatter("---\nname: hello\ndescription: \"Says hi\"\nmetadata:\n  x: 1\n---\n# body\nname: not this\n");
        assert_eq!(f["name"], "hello");
        assert_eq!(f["description"], "Says hi");
        assert!(!f.contains_key("x"));
        assert!(frontmatter("# no frontmatter\nname: x").is_empty());
    }
}
