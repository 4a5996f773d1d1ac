//! One process's link to RabbitMQ: a connection that is rebuilt, with the
//! fleet's topology, whenever it is lost.
//!
//! lapin's own recovery stays off: it gives up after a fixed number of
//! attempts (about ten minutes with its defaults) and then leaves the
//! process without a broker for good. Instead, every user of the link asks
//! it for a channel when it starts and again after any error, backing off
//! between attempts; the link hands out channels of its connection while
//! that connection lives, and builds a new one when it is gone. So a broker
//! away for any length of time is waited out, and every consumer and
//! publisher comes back on its own. Delivery tags die with their channel:
//! nothing acks across a rebuild.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use regatta_proto::names::redact_url;
use regatta_proto::Names;
use regatta_telemetry::backoff::{wait_at_start, START_PATIENCE};
use tokio::sync::Mutex;

use crate::{declare_topology, Error};

/// How long one connection attempt may take before it counts as failed (a
/// partitioned broker drops the handshake's packets instead of refusing).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A supervised connection, shared by every task of a process. Cheap to clone.
#[derive(Clone)]
pub struct BrokerLink {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    name: String,
    names: Names,
    state: Mutex<State>,
    /// Connections built after the first: a loss each.
    rebuilds: AtomicU64,
}

struct State {
    /// The current connection; `None` once closed for shutdown.
    connection: Option<Connection>,
    /// The last failed rebuild: callers queued behind it get its error
    /// at once instead of each waiting out an attempt of their own.
    failed: Option<(tokio::time::Instant, String)>,
}

/// How long a failed rebuild answers for the link before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long opening a channel or declaring the topology may take on a
/// connection that looks alive but is not (until heartbeats notice).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

impl BrokerLink {
    /// Connects and declares the topology. A broker that does not answer yet
    /// is waited for, with logged retries, for at most
    /// [`START_PATIENCE`](regatta_telemetry::backoff::START_PATIENCE) (a fleet
    /// whose services start together); then this fails, naming the broker, so
    /// a wrong URL still shows at start-up.
    pub async fn connect(url: &str, name: &str, names: Names) -> Result<BrokerLink, Error> {
        let broker = format!("RabbitMQ at {}", redact_url(url));
        let connection = wait_at_start(&broker, START_PATIENCE, || open(url, name)).await?;
        let channel = connection.create_channel().await?;
        declare_topology(&channel, &names).await?;
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(BrokerLink {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                name: name.to_owned(),
                names,
                state: Mutex::new(State {
                    connection: Some(connection),
                    failed: None,
                }),
                rebuilds: AtomicU64::new(0),
            }),
        })
    }

    /// A new channel on a live connection. If the connection is lost, a new
    /// one is built and the topology declared on it first; if that fails,
    /// the error says why and the caller tries again after a pause.
    pub async fn channel(&self) -> Result<Channel, Error> {
        let mut state = self.inner.state.lock().await;
        let Some(connection) = state.connection.as_ref() else {
            return Err(Error::Closed);
        };
        if connection.status().connected() {
            match bounded(connection.create_channel()).await {
                Ok(channel) => return Ok(channel),
                // Anything but a lost connection is the caller's to see.
                Err(e) if connection.status().connected() => return Err(e),
                Err(_) => {}
            }
        }
        if let Some((at, reason)) = &state.failed {
            if at.elapsed() < RETRY_AFTER {
                return Err(Error::Unavailable(reason.clone()));
            }
        }
        match self.rebuild().await {
            Ok((connection, channel)) => {
                let rebuilds = self.inner.rebuilds.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(
                    broker = %redact_url(&self.inner.url),
                    rebuilds,
                    "broker connection rebuilt; topology declared"
                );
                state.connection = Some(connection);
                state.failed = None;
                Ok(channel)
            }
            Err(e) => {
                state.failed = Some((tokio::time::Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// A new connection with the topology declared on it, and a channel.
    async fn rebuild(&self) -> Result<(Connection, Channel), Error> {
        let connection = open(&self.inner.url, &self.inner.name).await?;
        let channel = bounded(connection.create_channel()).await?;
        bounded(declare_topology(&channel, &self.inner.names)).await?;
        Ok((connection, channel))
    }

    /// A new channel with publisher confirms on.
    pub async fn confirm_channel(&self) -> Result<Channel, Error> {
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(channel)
    }

    /// How many times the connection was rebuilt after a loss.
    pub fn rebuilds(&self) -> u64 {
        self.inner.rebuilds.load(Ordering::Relaxed)
    }

    /// Closes the connection for shutdown.
    pub async fn close(&self, reason: &str) {
        if let Some(connection) = self.inner.state.lock().await.connection.take() {
            let _ = connection.close(200, reason.into()).await;
        }
    }
}

/// Runs one broker operation within [`OPERATION_TIMEOUT`].
async fn bounded<T>(
    operation: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Error::Unavailable(format!(
            "no answer within {} s",
            OPERATION_TIMEOUT.as_secs()
        ))),
    }
}

/// Opens one connection, with heartbeats, within [`CONNECT_TIMEOUT`].
async fn open(url: &str, name: &str) -> Result<Connection, Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(&with_heartbeat(url), properties),
    )
    .await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(Error::Connect {
            url: redact_url(url),
            source,
        }),
        Err(_) => Err(Error::ConnectTimeout {
            url: redact_url(url),
            seconds: CONNECT_TIMEOUT.as_secs(),
        }),
    }
}

/// Adds a 10 s heartbeat unless the URL sets its own, so a dead peer is
/// noticed in seconds, not after the TCP timeout.
fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&heartbeat=10")
    } else {
        format!("{url}?heartbeat=10")
    }
}

#[cfg(test)]
mod tests {
    use super::with_heartbeat;

    #[test]
    fn a_heartbeat_is_added_unless_the_url_sets_one() {
        assert_eq!(
            with_heartbeat("amqp://h:5672/%2f"),
            "amqp://h:5672/%2f?heartbeat=10"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?frame_max=8192"),
            "amqp://h/%2f?frame_max=8192&heartbeat=10"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?heartbeat=5"),
            "amqp://h/%2f?heartbeat=5"
        );
    }
}
