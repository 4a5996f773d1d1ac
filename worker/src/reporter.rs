//! The worker's side of RabbitMQ: topology, events back to the coordinator,
//! and the dead-letter queue for orders that can never run.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use regatta_proto::{seal, Names, QueueArgument, SessionEvent, Signer, REASON_HEADER};
use tokio_util::sync::CancellationToken;

use crate::Error;

use regatta_proto::names::DELIVERY_LIMIT;

/// Connects with heartbeats and lapin's automatic recovery on.
pub async fn connect(url: &str, name: &str) -> Result<Connection, Error> {
    let with_heartbeat = if url.contains("heartbeat=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&heartbeat=10")
    } else {
        format!("{url}?heartbeat=10")
    };
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .enable_auto_recover();
    Connection::connect(&with_heartbeat, properties)
        .await
        .map_err(|source| Error::Broker {
            url: regatta_proto::names::redact_url(url),
            source,
        })
}

/// Declares the fleet's queues, exactly as the coordinator does.
pub async fn declare_topology(channel: &Channel, names: &Names) -> lapin::Result<()> {
    for queue in names.queues(DELIVERY_LIMIT) {
        let mut arguments = FieldTable::default();
        for (key, value) in queue.arguments {
            arguments.insert(
                key.into(),
                match value {
                    QueueArgument::Text(text) => AMQPValue::LongString(LongString::from(text)),
                    QueueArgument::Number(n) => AMQPValue::LongLongInt(n),
                },
            );
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.name.as_str().into(), durable, arguments)
            .await?;
    }
    Ok(())
}

/// Publishes events and dead letters with confirms.
#[derive(Clone)]
pub struct Reporter {
    channel: Channel,
    names: Names,
    signer: Signer,
}

impl Reporter {
    /// Opens a confirm channel and declares the topology.
    pub async fn new(connection: &Connection, names: Names, signer: Signer) -> Result<Self, Error> {
        let broker = |source| Error::Broker {
            url: String::from("(connected)"),
            source,
        };
        let channel = connection.create_channel().await.map_err(broker)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker)?;
        declare_topology(&channel, &names).await.map_err(broker)?;
        Ok(Reporter {
            channel,
            names,
            signer,
        })
    }

    /// Sends an event to the coordinator, retrying with backoff through a
    /// broker outage: a result is never dropped while the worker lives.
    pub async fn event(
        &self,
        event: &SessionEvent,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let payload = seal(event, &self.signer);
        let queue = self.names.events_queue();
        // The coordinator's handling of the event joins the session's trace.
        let mut headers = FieldTable::default();
        regatta_telemetry::inject(&tracing::Span::current(), &mut headers);
        let mut backoff = Duration::from_millis(100);
        loop {
            let properties = BasicProperties::default().with_headers(headers.clone());
            match self.publish(&queue, &payload, properties).await {
                Ok(()) => return Ok(()),
                Err(reason) => {
                    tracing::warn!(queue = %queue, session = %event.session_id, %reason, "event publish failed; retrying");
                    // After shutdown, give up only once the grace is clearly over.
                    if shutdown.is_cancelled() && backoff >= Duration::from_secs(5) {
                        return Err(Error::Publish { queue, reason });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Puts a message that can never be processed on the dead-letter queue,
    /// with its reason in a header.
    pub async fn dead_letter(&self, payload: &[u8], reason: &str) -> Result<(), Error> {
        let mut headers = FieldTable::default();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason.to_owned())),
        );
        let queue = self.names.dead_letter_queue();
        self.publish(
            &queue,
            payload,
            BasicProperties::default().with_headers(headers),
        )
        .await
        .map_err(|reason| Error::Publish { queue, reason })
    }

    async fn publish(
        &self,
        queue: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), String> {
        let confirm = self
            .channel
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
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(format!("no queue '{queue}'")),
            Confirmation::Nack(_) => Err(format!("the broker refused the message for '{queue}'")),
        }
    }
}
