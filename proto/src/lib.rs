//! The contract between regatta's coordinator and its workers.
//!
//! Both sides depend on this crate and on nothing of each other, so it stays
//! passive: plain types, names and script texts, no I/O.
//!
//! The data path:
//!
//! - the coordinator builds a [`WorkOrder`] per unit attempt, seals it in an
//!   [`envelope`] (format version + HMAC-SHA256) and publishes it on the work
//!   queue named by [`Names`];
//! - a worker opens the envelope (refusing an unknown version or a bad
//!   signature), claims the unit's leases with the [`scripts`] in Redis under
//!   the keys of [`Keys`], runs the session and reports [`SessionEvent`]s on
//!   the events queue, sealed the same way.

pub mod agent;
pub mod batch_budget;
pub mod duration;
pub mod envelope;
pub mod error;
pub mod event;
pub mod evidence;
pub mod git;
pub mod health;
pub mod keys;
pub mod lease;
pub mod names;
pub mod notice;
pub mod order;
pub mod scripts;
pub mod sign;

pub use agent::{AgentAdapter, AgentOrder, Budget, ModelPrice, Prices, Usage};
pub use batch_budget::{BudgetReservation, BudgetSpend};
pub use envelope::{open, seal, Message, FORMAT_VERSION};
pub use error::Error;
pub use event::{EventKind, EvidenceRef, GateReport, Outcome, SessionEvent};
pub use git::{GitOrder, GitReport, GitSession, INTEGRATION_UNIT};
pub use health::WorkerHealth;
pub use keys::Keys;
pub use lease::LeaseOwner;
pub use names::{Names, QueueArgument, QueueSpec, REASON_HEADER};
pub use notice::Notice;
pub use order::{GateSpec, LeaseDemand, ResourceDemand, WorkOrder};
pub use sign::Signer;

/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "regatta";
