//! regatta's coordinator: it turns a manifest into a running batch.
//!
//! The data path:
//!
//! - [`manifest`] reads and validates a manifest (all errors at once), and
//!   [`dag`] holds its dependency graph; [`plan`] shows its shape (all three
//!   from the `regatta-manifest` crate);
//! - [`service`] accepts a batch, and its [`scheduler`] decides which units
//!   may start under the batch cap and the resources' capacities;
//!   [`order`] turns each into a signed work order that the broker link
//!   (`regatta_broker`) publishes with confirms;
//! - worker events come back through the same [`service`], which applies them
//!   to the scheduler and writes every change through [`store`] into Redis;
//! - [`api`] serves the state over HTTP (and [`metrics`] on `/metrics`), and
//!   [`client`] is how the CLI and tests talk to it;
//! - [`evidence`] assembles a batch's evidence pack and verifies one;
//! - [`lock`] keeps a namespace to one coordinator.

pub mod api;
pub mod client;
pub mod evidence;
pub mod lock;
pub mod metrics;
pub mod order;
pub mod report;
pub mod scheduler;
pub mod service;
pub mod store;

/// The crate's error enum.
pub mod error;

/// The manifest, its DAG and plan live in `regatta-manifest`; they are
/// re-exported here under their old paths.
pub use regatta_manifest::{dag, duration, manifest, plan};

pub use error::Error;
pub use regatta_manifest::{
    Dag, Gate, Manifest, ManifestError, ManifestErrorKind, ManifestErrors, ManifestSummary, Plan,
    Playbook, Unit,
};
