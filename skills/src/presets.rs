//! Agent presets: a starting SOUL.md and AGENTS.md for the instance's agent, and the bundled
//! skills it starts with (`presets.toml`).

use serde::{Deserialize, Serialize};

/// One preset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// `general`, `coder`, `researcher`, `writer` or `analyst`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// One sentence for the chooser.
    pub summary: String,
    /// Bundled skills installed with it (those the tier allows).
    pub skills: Vec<String>,
    /// The workspace's SOUL.md.
    pub soul: String,
    /// The workspace's AGENTS.md.
    pub agents: String,
}

#[derive(Deserialize)]
struct PresetsFile {
    preset: Vec<Preset>,
}

/// Every preset, in the chooser's order.
pub fn presets() -> &'static [Preset] {
    static PRESETS: std::sync::OnceLock<Vec<Preset>> = std::sync::OnceLock::new();
    PRESETS.get_or_init(|| {
        // Checked by a test; an empty list (never shipped) would only hide the chooser.
        toml::from_str::<PresetsFile>(include_str!("presets.toml"))
            .map(|f| f.preset)
            .unwrap_or_default()
    })
}

/// The preset named `id`.
pub fn preset(id: &str) -> Option<&'static Preset> {
    presets().iter().find(|p| p.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalogue;

    #[test]
    fn the_five_presets_load_and_name_free_bundled_skills_within_the_free_cap() {
        let ids: Vec<&str> = presets().iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["general", "coder", "researcher", "writer", "analyst"]);
        let catalogue = Catalogue::bundled().unwrap();
        let free_cap = clawdeploy_config::TiersConfig::default().free.skills as usize;
        for p in presets() {
            assert!(p.skills.len() <= free_cap, "{}", p.id);
            for s in &p.skills {
                let skill = catalogue.get(s).unwrap_or_else(|| panic!("{}: {s}", p.id));
                assert_eq!(skill.min_tier, clawdeploy_config::Tier::Free, "{s}");
                assert!(skill.fields.iter().all(|f| !f.required), "{s} needs config");
            }
            assert!(
                p.soul.starts_with("# ") && p.agents.starts_with("# "),
                "{}",
                p.id
            );
        }
    }
}
