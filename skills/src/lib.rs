//! Skills: the catalogue users install from ([`catalogue`]), the archives curated and upstream
//! skills travel in ([`archive`]), the ClawHub-compatible registry instances install them from
//! ([`registry`]), and the agent presets that start an instance with some of them ([`presets`]).

#![warn(missing_docs)]

pub mod archive;
pub mod catalogue;
pub mod presets;
pub mod registry;

pub use catalogue::{Catalogue, ConfigError, FieldKind, Origin, Skill};
pub use presets::{preset, presets, Preset};
pub use registry::{Registry, RegistryError};

/// Errors of the skills crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest (`bundled.toml`, a curated skill's `SKILL.md` or `clawdeploy.toml`) is invalid;
    /// says what is wrong.
    #[error("skill manifest: {0}")]
    Manifest(String),
    /// Reading the curated directory failed.
    #[error("{0}")]
    Io(String),
    /// A curated skill's files cannot be packed.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// A registry skill cannot be served.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Result alias of the skills crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
