//! The worker's side of RabbitMQ's outgoing traffic: events back to the
//! coordinator, and the dead-letter queue for orders that can never run.

use std::sync::Arc;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use regatta_broker::{publish_confirmed, BrokerLink, KeptChannel};
use regatta_proto::{seal, Names, SessionEvent, Signer, REASON_HEADER};
use regatta_telemetry::backoff::Backoff;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Publishes events and dead letters with confirms.
#[derive(Clone)]
pub struct Reporter {
    link: BrokerLink,
    /// The confirm channel, reopened from the link after any loss.
    channel: Arc<Mutex<KeptChannel>>,
    names: Names,
    signer: Signer,
}

impl Reporter {
    pub fn new(link: BrokerLink, names: Names, signer: Signer) -> Self {
        Reporter {
            link,
            channel: Arc::default(),
            names,
            signer,
        }
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
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let properties = BasicProperties::default().with_headers(headers.clone());
            match self.publish(&queue, &payload, properties).await {
                Ok(()) => return Ok(()),
                Err(reason) => {
                    tracing::warn!(queue = %queue, session = %event.session_id, %reason, "event publish failed; retrying");
                    // After shutdown, give up only once the grace is clearly over.
                    let delay = backoff.next_delay();
                    if shutdown.is_cancelled() && delay >= Duration::from_secs(5) {
                        return Err(Error::Publish { queue, reason });
                    }
                    tokio::time::sleep(delay).await;
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
        // The lock only hands out the channel: publishes run side by side.
        let channel = {
            let mut current = self.channel.lock().await;
            current
                .get_or_open(|| self.link.confirm_channel())
                .await
                .map_err(|e| e.to_string())?
                .clone()
        };
        publish_confirmed(&channel, queue, payload, properties)
            .await
            .map_err(|e| e.to_string())
    }
}
