//! Publishing orders: the `publish` span of each, confirms awaited many at
//! a time, and re-sends until the broker confirms, on a channel reopened
//! from the broker link after any loss. An order larger than the broker
//! accepts is never sent: its unit fails with the reason instead.

use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use regatta_broker::{check_confirmation, BrokerLink, KeptChannel};
use regatta_proto::{seal, Outcome, Signer};
use regatta_telemetry::attempt_span::{attempt_span, Step};
use regatta_telemetry::backoff::Backoff;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::order::work_order;
use crate::scheduler::{AttemptTrace, Effects, Finish, Fleet, Report};
use regatta_telemetry::messaging::{self, Message, Operation};
use regatta_telemetry::TraceRef;

/// The largest order published: RabbitMQ refuses a message over its
/// `max_message_size` (128 MiB up to 3.13, 16 MiB from 4.0), and a refused
/// order used to be re-sent forever. The smaller of the two, so that a
/// broker upgrade does not change what passes.
pub(super) const MAX_ORDER_BYTES: usize = 16 << 20;

/// A sealed order on its way to the work queue.
pub(super) struct Outgoing {
    payload: Vec<u8>,
    session_id: String,
    /// The `publish` span (a PRODUCER): it lasts until the broker confirms,
    /// and its trace context travels in the message headers to the worker.
    span: tracing::Span,
}

/// Where a `publish` span stands among traces.
pub(super) enum Origin<'a> {
    /// A new attempt: its own trace, linked to the span that made the unit
    /// ready (the current one, if any) and to the previous attempt's trace.
    Attempt { previous: Option<&'a AttemptTrace> },
    /// An order published again after a restart: it joins the trace its
    /// attempt already has, so the attempt stays one trace.
    Again(Option<&'a AttemptTrace>),
}

/// The telemetry view of a stored trace reference.
fn trace_ref(trace: &AttemptTrace) -> TraceRef {
    TraceRef {
        trace_id: trace.trace_id.clone(),
        span_id: trace.span_id.clone(),
    }
}

impl Outgoing {
    pub(super) fn new(
        order: &regatta_proto::WorkOrder,
        signer: &Signer,
        origin: Origin<'_>,
    ) -> Outgoing {
        // A root (see `attempt_span`).
        let span = attempt_span(Step::Publish, "producer", order.into());
        match origin {
            Origin::Attempt { previous } => {
                // The span the caller runs in (a `result.finished`) made the
                // unit ready; none when a person or a timer did.
                if let Some(made_ready) = TraceRef::current() {
                    made_ready.link_from(&span, "made_ready");
                }
                if let Some(previous) = previous {
                    trace_ref(previous).link_from(&span, "previous_attempt");
                }
            }
            Origin::Again(trace) => {
                if let Some(trace) = trace {
                    trace_ref(trace).adopt(&span);
                }
            }
        }
        Outgoing {
            payload: seal(order, signer),
            session_id: order.session_id.clone(),
            span,
        }
    }

    /// Where this order's attempt trace is, when spans are exported.
    pub(super) fn trace(&self) -> Option<AttemptTrace> {
        TraceRef::of(&self.span).map(|r| AttemptTrace {
            trace_id: r.trace_id,
            span_id: r.span_id,
        })
    }
}

/// Dispatches what can start and seals its orders. A unit whose order is
/// over [`MAX_ORDER_BYTES`] is not published: it fails at once with the
/// reason (a retry would build the same order, so it ends in
/// `needs_review` after its retries), and dispatch runs again for what that
/// frees. Returns the orders to publish; `effects.publish` lists their units.
pub(super) fn dispatch_orders<T>(
    fleet: &mut Fleet<T>,
    batch_id: &str,
    now_ms: i64,
    effects: &mut Effects,
    signer: &Signer,
    new_session: &mut dyn FnMut() -> String,
) -> Vec<Outgoing> {
    let mut outgoing = Vec::new();
    let mut sealed = 0;
    loop {
        let dispatched = fleet.dispatch(batch_id, now_ms, new_session);
        effects.publish.extend(dispatched.publish);
        effects.changed.extend(dispatched.changed);
        let Some(member) = fleet.get_mut(batch_id) else {
            return outgoing;
        };
        let batch = &mut member.batch;
        let mut refused = Vec::new();
        let mut kept = Vec::new();
        for &unit in &effects.publish[sealed..] {
            let order = work_order(batch, unit, now_ms);
            let previous = batch.units[unit].previous().and_then(|a| a.trace.as_ref());
            let sealed_order = Outgoing::new(&order, signer, Origin::Attempt { previous });
            if let Some(trace) = sealed_order.trace() {
                batch.units[unit].set_trace(trace);
            }
            if sealed_order.payload.len() > MAX_ORDER_BYTES {
                let bytes = sealed_order.payload.len();
                refused.push((unit, order, bytes, sealed_order.span));
            } else {
                tracing::debug!(batch = %order.batch_id, unit = %order.unit_id, attempt = order.attempt, session = %order.session_id, "publishing");
                outgoing.push(sealed_order);
                kept.push(unit);
            }
        }
        effects.publish.truncate(sealed);
        effects.publish.extend(kept);
        sealed = effects.publish.len();
        if refused.is_empty() {
            return outgoing;
        }
        for (unit, order, bytes, span) in refused {
            let reason = format!(
                "order of {bytes} bytes exceeds the broker's limit of {MAX_ORDER_BYTES}: \
                 shorten the unit's task, env or lists"
            );
            regatta_telemetry::status::failed(&span, "publish.refused", &reason);
            tracing::error!(batch = %order.batch_id, unit = %order.unit_id, %reason, "order not published");
            let failed = Finish {
                outcome: Outcome::Failed,
                exit_code: None,
                reason: Some(reason),
                at_ms: now_ms,
                log_tail: String::new(),
                log_path: String::new(),
                gates: Vec::new(),
                fencing: 0,
                evidence: None,
                git: None,
                usage: None,
                worker: None,
                started_at_ms: None,
            };
            let more = fleet.report(batch_id, unit, &order.session_id, Report::Finished(failed));
            effects.changed.extend(more.changed);
            effects.publish.extend(more.publish);
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
    let mut channel = KeptChannel::new();
    loop {
        let next = tokio::select! {
            Some(job) = outgoing.recv() => job,
            Some(job) = retry_rx.recv() => job,
            Some(()) = confirms.next() => continue,
            _ = shutdown.cancelled() => return,
        };
        // Never built by dispatch_orders; an order stored before this
        // check (re-published on restart) would be refused forever.
        if next.payload.len() > MAX_ORDER_BYTES {
            tracing::error!(session = %next.session_id, bytes = next.payload.len(), limit = MAX_ORDER_BYTES, "order larger than the broker accepts; not published");
            continue;
        }
        let opened =
            channel.get_or_open(|| async { open_channel(&link, &shutdown).await.ok_or(()) });
        let Ok(channel) = opened.await else {
            return;
        };
        messaging::describe(
            &next.span,
            Operation::Send,
            Message {
                queue: &queue,
                id: &next.session_id,
                body_bytes: next.payload.len(),
            },
        );
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
                    .with_message_id(next.session_id.as_str().into())
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
            if result.is_ok() {
                regatta_telemetry::status::succeeded(&next.span);
            }
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
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match link.confirm_channel().await {
            Ok(channel) => return Some(channel),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a channel to publish orders; retrying");
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}
