//! What the broker link can fail with.

/// Everything the broker link can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker cannot be reached, or refused the connection.
    #[error("RabbitMQ at {url} is unreachable or refused the connection: {source}; is it running, and does --amqp-url (REGATTA_AMQP_URL) point at it?")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    /// The broker did not answer the connection in time (a partition).
    #[error("RabbitMQ at {url} did not answer within {seconds} s; is it reachable?")]
    ConnectTimeout { url: String, seconds: u64 },
    /// The broker did not answer in time, or the last attempt to reach it
    /// failed a moment ago (its reason).
    #[error("RabbitMQ unavailable: {0}")]
    Unavailable(String),
    /// The link was closed for shutdown.
    #[error("the broker link is closed (shutting down)")]
    Closed,
    /// An operation on a connected broker failed.
    #[error("RabbitMQ operation failed: {0}")]
    Broker(#[from] lapin::Error),
}
