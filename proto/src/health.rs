//! A worker's health record: what a worker says about itself in Redis
//! (`{ns}:worker:{name}`, with a TTL), so that the coordinator can list the
//! fleet's workers and which of them take no work, and why.

use serde::{Deserialize, Serialize};

/// Written by a worker every few seconds; gone when the worker is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerHealth {
    pub worker: String,
    /// `false` while its disks fail: it takes no work.
    pub healthy: bool,
    /// Why it takes no work, when unhealthy.
    pub reason: Option<String>,
    pub slots: usize,
    /// When it was written (ms since the epoch, the worker's clock).
    pub at_ms: i64,
}
