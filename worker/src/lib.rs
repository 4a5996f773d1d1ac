//! regatta's worker: takes signed work orders, holds leases, runs sessions
//! and reports what happened.
//!
//! The data path of one unit attempt:
//!
//! 1. [`intake`]: a free slot consumes exactly one delivery from the work
//!    queue, then stops consuming until the session is over, so that a unit
//!    never waits in a busy worker's buffer while another worker is idle;
//! 2. the order is opened ([`regatta_proto::open`]); a bad one goes to the
//!    dead-letter queue with its reason;
//! 3. [`lease`]: the slot acquires every lease the unit needs in one Lua
//!    script, then acks the delivery (the claim is in Redis now, so the
//!    session may outlast RabbitMQ's `consumer_timeout`);
//! 4. [`command`]: the command runs under a [`leader`] process in its own
//!    process group, with a deadline, its output captured to a bounded log
//!    ([`session_log`]), while a heartbeat renews the leases and kills the
//!    session if they are lost;
//! 5. [`gate`]: verification gates run with their repairs;
//! 6. [`artifact`] and [`evidence`]: outputs, artifacts and the log are
//!    hashed into the artifact store with the session's evidence pack, still
//!    under the leases;
//! 7. [`reporter`]: `started` and `finished` events go back to the
//!    coordinator, and the leases are released at once.

pub mod artifact;
pub mod cgroup;
pub mod command;
mod command_span;
pub mod config;
pub mod containment;
pub mod control;
pub mod error;
pub mod evidence;
pub mod fault;
pub mod gate;
pub mod health;
pub mod intake;
pub mod leader;
pub mod lease;
mod lease_span;
pub mod reporter;
pub mod session_log;

pub use config::WorkerConfig;
pub use error::Error;
pub use intake::run;
