//! The worker's errors, each saying what the operator can do.

/// What can go wrong in a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker link failed (unreachable at start-up, or an operation refused).
    #[error(transparent)]
    Link(#[from] regatta_broker::Error),
    #[error("publishing to '{queue}' failed: {reason}")]
    Publish { queue: String, reason: String },
    #[error("Redis at {url} is unreachable or failed: {source}; is it running, and does --redis-url (REGATTA_REDIS_URL) point at it?")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis command failed: {0}")]
    RedisCommand(#[from] redis::RedisError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot prepare the session folder {path}: {source}")]
    WorkDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the session: {0}")]
    Spawn(#[source] std::io::Error),
    /// The session's output could not be written to its log (a full or
    /// broken work disk): the log is incomplete.
    #[error("cannot write the session log {path}: {source}; the log is incomplete")]
    SessionLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Says whether the unit, not the worker, is why a process could not
    /// start: the kernel refuses an environment or argument over its limits
    /// (`E2BIG`: one variable over 128 KiB, such as a huge `task`). Every
    /// worker would fail the same way, so such a session fails (and uses a
    /// retry) instead of taking worker after worker out of service.
    pub fn is_units_fault(&self) -> bool {
        matches!(self, Error::Spawn(e) if e.raw_os_error() == Some(nix::libc::E2BIG))
    }
}
