//! Instances: the lifecycle behind the [`Runtime`] trait, with a hardened Docker implementation
//! ([`docker`]) and a local-process one for machines without Docker ([`process`]), and the
//! instance network's egress rules ([`egress`]).

#![warn(missing_docs)]

pub mod docker;
pub mod egress;
pub mod image;
pub mod instance_config;
pub mod manager;
pub mod openclaw;
pub mod process;
pub mod ready;
pub mod routing;
pub mod runtime;
pub mod setup;
pub mod skills;
pub mod sleep;
pub mod work;

pub use docker::{DockerOptions, DockerRuntime};
pub use egress::{EgressRules, NetworkInfo};
pub use instance_config::FixtureConfig;
pub use manager::{
    AppliedProbe, Assigned, CrashNotice, Error, InstanceConfig, NodeStatus, PoolManager,
    PoolSettings, Resize, Result,
};
pub use openclaw::OpenClawConfig;
pub use process::ProcessRuntime;
pub use runtime::{
    ConfigFile, Inspection, InstanceRef, InstanceSpec, MemoryUse, Resources, RunState, Runtime,
    RuntimeError, RuntimeEvent, Sleep,
};
pub use sleep::PoolWaker;
