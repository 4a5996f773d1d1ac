//! regatta's batch manifest, on its own: what a user writes, checked and
//! shaped before anything runs.
//!
//! The path of a manifest:
//!
//! - [`manifest`] reads YAML or JSON through a position-keeping reader,
//!   validates every rule at once (each error with its file, line, column
//!   and unit) and yields the domain types ([`Manifest`], [`Unit`],
//!   [`Playbook`], [`Gate`], and [`GitSpec`] for git mode), with [`duration`]
//!   for the spellings of time;
//! - [`dag`] builds the dependency graph and refuses cycles, printing one;
//! - [`plan`] shows the batch's shape: levels, critical path, resource
//!   demand.
//!
//! It depends on no broker, Redis or HTTP crate, so validation, its
//! fuzzers and the manifest benchmarks build and run alone; the coordinator
//! re-exports it under the same paths (`regatta_coordinator::manifest`...).

/// The dependency graph of a valid manifest.
pub mod dag;
/// Durations as manifests spell them (`90s`, `1h30m`).
pub mod duration;
/// Manifest and playbook: reading, validation, the domain types.
pub mod manifest;
/// The batch's shape before it runs: levels, critical path, resource demand.
pub mod plan;

pub use dag::Dag;
pub use manifest::{
    BatchBudget, Gate, GitSpec, Manifest, ManifestError, ManifestErrorKind, ManifestErrors,
    ManifestSummary, MergeMode, Playbook, Unit,
};
pub use plan::Plan;
