//! The worker's errors, each saying what the operator can do.

/// What can go wrong in a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker link failed (unreachable at start-up, or an operation refused).
    #[error(transparent)]
    Link(#[from] regatta_broker::Error),
    #[error("publishing to '{queue}' failed: {reason}")]
    Publish { queue: String, reason: String },
    #[error("Redis at {url} is unreachable or failed: {source}; start it with `scripts/services.sh redis`")]
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
