//! regatta's worker: takes signed work orders, holds leases, runs sessions
//! and reports what happened.
//!
//! [`worker`] connects, starts one slot per session it may run at once, and
//! on shutdown lets running sessions finish within the grace period. The
//! path of one unit attempt through a slot:
//!
//! 1. [`intake`], the broker side: a free slot consumes exactly one delivery
//!    from the work queue, then stops consuming until the session is over,
//!    so that a unit never waits in a busy worker's buffer while another
//!    worker is idle (contract 2, docs/contracts.md); the order is opened
//!    ([`regatta_proto::open`]), and a bad one goes to the dead-letter queue
//!    with its reason;
//! 2. [`lease`]: the slot acquires every lease the unit needs in one Lua
//!    script, then acks the delivery (the claim is in Redis now, so the
//!    session may outlast RabbitMQ's `consumer_timeout`) and hands the
//!    session over;
//! 3. [`session`], the lifecycle: a [`lease::Heartbeat`] renews the leases
//!    and stops the session if they are lost or its batch is cancelled
//!    (heard at once through [`control`]);
//! 4. [`command`]: the command runs under a [`leader`] process in its own
//!    process group and [`cgroup`] ([`containment`]), with a deadline, its
//!    output captured to a bounded log ([`session_log`], in memory until it
//!    outgrows it); an agent's stdout
//!    goes to its [`transcript`], and the [`meter`] reads its usage (from
//!    [`agent_stream`] and [`usage_channel`]) and kills it over its budget;
//! 5. [`gate`]: verification gates run with their repairs, then the
//!    declared outputs are checked;
//! 6. [`artifact`] and [`evidence`]: outputs, artifacts and the log are
//!    hashed into the artifact store with the session's evidence pack, still
//!    under the leases, and made durable ([`durable`], one fsync pass for
//!    sessions that end together);
//! 7. [`reporter`]: `finished` goes back to the coordinator, preceded by
//!    `started` only for a session that outlives a threshold
//!    ([`start_notice`]); the leases are released once the coordinator
//!    has not done so itself (see [`lease`]).
//!
//! When the worker itself is at fault (a disk), [`fault`] hands the unit
//! back uncounted and [`health`] keeps the worker from taking work until its
//! disks work again.

pub mod agent_stream;
pub mod artifact;
pub mod cgroup;
pub mod command;
mod command_span;
pub mod config;
pub mod containment;
pub mod control;
pub mod durable;
pub mod error;
pub mod evidence;
pub mod fault;
pub mod gate;
pub mod health;
pub mod intake;
pub mod leader;
pub mod lease;
mod lease_span;
pub mod meter;
pub mod plain_command;

pub mod reporter;
pub mod repository;
pub mod session;
pub mod session_log;
pub mod start_notice;
pub mod supervisor;
pub mod transcript;
pub mod usage_channel;
pub mod worker;

pub use config::WorkerConfig;
pub use error::Error;
pub use worker::run;
