//! RabbitMQ plumbing shared by the coordinator's publisher and consumer:
//! connection, topology and confirmed publishing.
//!
//! lapin retries a lost connection by itself when asked to
//! (`enable_auto_recover`). The event consumer declares the topology again
//! each time it (re)subscribes, and treats delivery tags from before a
//! failure as void; a connection that stays lost is a known limit (see the
//! README's guarantees).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use regatta_proto::{Names, QueueArgument};

pub use regatta_proto::names::DELIVERY_LIMIT;

/// Connects to the broker, with heartbeats and automatic recovery on.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let url = with_heartbeat(url);
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .enable_auto_recover();
    Connection::connect(&url, properties).await
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

/// Declares every queue of the fleet; idempotent, so both sides call it.
pub async fn declare_topology(channel: &Channel, names: &Names) -> lapin::Result<()> {
    for queue in names.queues(DELIVERY_LIMIT) {
        let mut arguments = FieldTable::default();
        for (key, value) in queue.arguments {
            let value = match value {
                QueueArgument::Text(text) => AMQPValue::LongString(LongString::from(text)),
                QueueArgument::Number(n) => AMQPValue::LongLongInt(n),
            };
            arguments.insert(key.into(), value);
        }
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.name.as_str().into(), options, arguments)
            .await?;
    }
    Ok(())
}

/// Opens a channel with publisher confirms on.
pub async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Why a publish did not make it into a queue.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the message (a full or unavailable queue).
    #[error("the broker refused the message (nack) for queue '{0}'")]
    Nacked(String),
    /// The message matched no queue: the topology is missing.
    #[error("no queue '{0}' to route the message to: is the topology declared?")]
    Unroutable(String),
}

/// Publishes a persistent message to a queue and waits for the broker's confirm.
///
/// The publish is `mandatory`: a message that reaches no queue comes back
/// and is reported as [`PublishError::Unroutable`], not silently dropped.
pub async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            payload,
            properties.with_delivery_mode(2),
        )
        .await?
        .await?;
    check_confirmation(confirm, queue)
}

/// Turns a broker confirmation into success or a named failure.
pub fn check_confirmation(confirm: Confirmation, queue: &str) -> Result<(), PublishError> {
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable(queue.to_owned())),
        Confirmation::Nack(_) => Err(PublishError::Nacked(queue.to_owned())),
    }
}
