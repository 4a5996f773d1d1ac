//! The coordinator library's errors, each saying what the user or operator can do.

use crate::manifest::ManifestErrors;

/// Everything the coordinator library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest was refused; every problem is listed, with its file, line and unit.
    /// Fix them and submit the manifest again.
    #[error("invalid manifest:\n{0}")]
    Manifest(#[from] ManifestErrors),
    /// The broker link failed (unreachable at start-up, or an operation refused).
    #[error(transparent)]
    Link(#[from] regatta_broker::Error),
    /// Redis cannot be reached or refused an operation.
    #[error("Redis at {url} failed: {source}; is it running, and does --redis-url (REGATTA_REDIS_URL) point at it?")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    /// Redis refused a write for good (an error reply, not an outage): it
    /// is not retried, and the request that made it fails.
    #[error("Redis refused to store {what}: {reason}")]
    StoreRefused { what: String, reason: String },
    /// Redis refused a write because another coordinator holds the
    /// namespace now: this one stops.
    #[error("not stored: this coordinator lost the namespace's lock ({0})")]
    LockLost(String),
    /// The batch or unit named does not exist.
    #[error("no such {0}")]
    NotFound(String),
    /// The request does not fit the current state (retrying a unit that is not in review).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Something outside the coordinator that the request needs does not
    /// answer (git mode: the batch's repository).
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    pub fn redis(url: &str, source: redis::RedisError) -> Error {
        Error::Redis {
            url: regatta_proto::names::redact_url(url),
            source,
        }
    }
}
