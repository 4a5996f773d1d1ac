//! Publishing that either lands in a queue or says why not.

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};

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

/// Publishes a persistent message to a queue and waits for the broker's
/// confirm (the channel must be in confirm mode).
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
