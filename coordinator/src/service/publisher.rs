//! Publishing orders: the `publish` span of each, confirms awaited many at
//! a time, and re-sends until the broker confirms, on a channel reopened
//! from the broker link after any loss.

use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use regatta_broker::{check_confirmation, BrokerLink};
use regatta_proto::{seal, Signer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A sealed order on its way to the work queue.
pub(super) struct Outgoing {
    payload: Vec<u8>,
    session_id: String,
    /// The `publish` span: it lasts until the broker confirms, and its trace
    /// context travels in the message headers to the worker.
    span: tracing::Span,
}

impl Outgoing {
    pub(super) fn new(order: &regatta_proto::WorkOrder, signer: &Signer) -> Outgoing {
        let span = tracing::info_span!(
            "publish",
            batch = %order.batch_id,
            unit = %order.unit_id,
            attempt = order.attempt,
            session = %order.session_id,
        );
        Outgoing {
            payload: seal(order, signer),
            session_id: order.session_id.clone(),
            span,
        }
    }
}

/// Publishes sealed orders with confirms, many in flight at once, and
/// re-sends any that the broker did not confirm: an order is never dropped.
pub(super) async fn publish_loop(
    link: BrokerLink,
    queue: String,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Outgoing>();
    let mut confirms = FuturesUnordered::new();
    let mut channel: Option<Channel> = None;
    loop {
        let next = tokio::select! {
            Some(job) = outgoing.recv() => job,
            Some(job) = retry_rx.recv() => job,
            Some(()) = confirms.next() => continue,
            _ = shutdown.cancelled() => return,
        };
        let channel = match channel.take() {
            Some(open) if open.status().connected() => channel.insert(open),
            _ => match open_channel(&link, &shutdown).await {
                Some(open) => channel.insert(open),
                None => return,
            },
        };
        let mut headers = FieldTable::default();
        regatta_telemetry::inject(&next.span, &mut headers);
        let sent = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &next.payload,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await;
        let retry = retry_tx.clone();
        let queue = queue.clone();
        let span = next.span.clone();
        confirms.push(tracing::Instrument::instrument(async move {
            let result = match sent {
                Ok(confirm) => match confirm.await {
                    Ok(confirmation) => check_confirmation(confirmation, &queue).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            if let Err(reason) = result {
                tracing::warn!(session = %next.session_id, %reason, "publishing an order failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = retry.send(next);
            }
        }, span));
    }
}

/// A confirm channel from the link, retried with backoff through an outage;
/// `None` on shutdown.
async fn open_channel(link: &BrokerLink, shutdown: &CancellationToken) -> Option<Channel> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match link.confirm_channel().await {
            Ok(channel) => return Some(channel),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a channel to publish orders; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
