//! The worker's settings, validated once at start.

use std::path::PathBuf;
use std::time::Duration;

use regatta_proto::{Keys, Names, Signer};

/// Everything a worker needs to run; built by `main` from flags and
/// environment, or by tests directly.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub amqp_url: String,
    pub redis_url: String,
    pub names: Names,
    pub keys: Keys,
    pub signer: Signer,
    /// How many sessions run at once.
    pub slots: usize,
    /// Where session logs and artifact folders are written.
    pub work_dir: PathBuf,
    /// The artifact store: where each session's outputs, artifacts, log and
    /// evidence pack are kept once it ends (`artifact` and `evidence`).
    pub artifact_store: PathBuf,
    /// How long a lease lives without renewal; renewed every third of it.
    pub lease_ttl: Duration,
    /// How long a session may take to stop after SIGTERM before SIGKILL,
    /// and how long running sessions get to finish on shutdown.
    pub grace: Duration,
    /// The name this worker gives in events and leases.
    pub name: String,
    /// The largest session log kept on disk; output past it is dropped.
    pub max_log_bytes: u64,
    /// The session leader, the user sessions run as, and their cgroups.
    pub containment: crate::containment::Containment,
    /// A session sends `started` only once it has run this long; a shorter
    /// one reports its start in `finished` (see [`crate::start_notice`]).
    pub started_after: Duration,
}

impl WorkerConfig {
    /// The default worker name: host name and process id.
    pub fn default_name() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "worker".to_owned());
        format!("{host}:{}", std::process::id())
    }
}
