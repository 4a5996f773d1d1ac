//! The broker side of a unit's path: a slot takes one delivery off the work
//! queue, opens (verifies) its order, claims its leases in Redis, acks it,
//! and hands the session over to [`session`](crate::session); an order that
//! must never run is dead-lettered with its reason.
//!
//! Intake control (contract 2, docs/contracts.md): each slot has its own channel with a
//! prefetch of one and takes work only while it is free: a unit already in
//! the queue with one `basic.get`, else by consuming until one arrives. On a delivery it
//! cancels its consumer *before* acking, so the broker cannot push it a
//! second unit: a unit never waits in a busy worker's buffer, and a worker
//! never holds more units than it has free slots. The ack follows the claim
//! in Redis, so a session can run for hours without tripping RabbitMQ's
//! `consumer_timeout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use regatta_broker::KeptChannel;
use regatta_proto::{open, EventKind, LeaseOwner, Outcome, WorkOrder};
use regatta_telemetry::attempt_span::{attempt_span, Step};
use regatta_telemetry::backoff::Backoff;
use tracing::Instrument;

use crate::lease::Claim;
use crate::lease_span::{describe_claim, lease_span};
use crate::worker::Shared;
use crate::Error;

/// One slot: consume one delivery, stop consuming, handle it, repeat.
pub(crate) async fn slot_loop(shared: Arc<Shared>, slot: usize) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    // The slot keeps its channel from unit to unit: opening one per unit
    // costs the broker more than the unit's own messages.
    let mut channel = KeptChannel::new();
    while !shared.shutdown.is_cancelled() {
        // A worker whose disks fail takes no work until they work again.
        if !shared.health.wait_healthy(&shared.shutdown).await {
            break;
        }
        let result = match channel.get_or_open(|| slot_channel(&shared)).await {
            Ok(open) => take_one(&shared, open, slot)
                .await
                .map_err(regatta_broker::Error::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(Some(delivery)) => {
                backoff.reset();
                handle(&shared, delivery).await;
            }
            Ok(None) if shared.shutdown.is_cancelled() => break,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(slot, error = %e, "cannot consume from the work queue; retrying");
                // Deliveries of a broken channel are void: start afresh.
                channel.close("slot reset").await;
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = shared.shutdown.cancelled() => break,
                }
            }
        }
    }
    channel.close("worker shutdown").await;
}

/// Opens a slot's channel: a prefetch of one delivery.
async fn slot_channel(shared: &Shared) -> Result<Channel, regatta_broker::Error> {
    let channel = shared.link.channel().await?;
    // Again on every (re)opened slot: a queue deleted under a live
    // connection would otherwise fail every consume.
    regatta_broker::declare_topology(&channel, &shared.config.names).await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    Ok(channel)
}

/// Waits for one delivery and cancels the consumer before returning it,
/// so nothing else is pushed to this slot while it is busy. `None` on
/// shutdown, or when the worker became unhealthy meanwhile.
async fn take_one(
    shared: &Shared,
    channel: &Channel,
    slot: usize,
) -> Result<Option<Delivery>, lapin::Error> {
    // A unit already waiting is taken with one `basic.get`: to the broker
    // one command where a consumer costs three (consume, deliver, cancel),
    // which is what a busy fleet pays per unit. Only an empty queue is
    // waited on with a consumer.
    let queue = shared.config.names.work_queue();
    if let Some(waiting) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await?
    {
        return Ok(Some(waiting.delivery));
    }
    let tag = format!(
        "{}-slot{slot}-{}",
        shared.config.name,
        uuid::Uuid::new_v4().simple()
    );
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let delivery = tokio::select! {
        next = consumer.next() => next,
        _ = shared.shutdown.cancelled() => {
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            return Ok(None);
        }
        _ = shared.health.became_unhealthy() => {
            // Closing the channel hands back a delivery that may be in
            // flight to it; the slot opens a new one once healthy.
            let _ = channel
                .close(200, "worker unhealthy: taking no work".into())
                .await;
            return Ok(None);
        }
    };
    // Stop intake first: with this delivery unacked and a prefetch of one,
    // nothing else can be in flight to this channel, and the broker handles
    // the cancel before the ack that follows it on the same channel, so
    // there is no need to wait for its reply.
    channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions { nowait: true })
        .await?;
    match delivery {
        Some(Ok(delivery)) => Ok(Some(delivery)),
        Some(Err(e)) => Err(e),
        None => Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
            lapin::ChannelState::Closed,
            "consumer",
        ))),
    }
}

/// Dead-letters an order that must never run, with its reason, then acks
/// it; if the dead-letter queue cannot take it, it goes back to the queue
/// (its delivery limit dead-letters it in the end).
async fn refuse(shared: &Shared, delivery: Delivery, reason: &str) {
    tracing::warn!(%reason, "refusing a work order: dead-lettered");
    regatta_telemetry::status::failed(&tracing::Span::current(), "order.refused", reason);
    match shared.reporter.dead_letter(&delivery.data, reason).await {
        Ok(()) => {
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot dead-letter an order; it goes back to the queue");
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
        }
    }
}

/// Opens, claims, runs and reports one delivery.
async fn handle(shared: &Shared, delivery: Delivery) {
    let order: WorkOrder = match open(&delivery.data, &shared.config.signer) {
        Ok(order) => order,
        Err(e) => return refuse(shared, delivery, &e.to_string()).await,
    };
    // The receipt of the order (a CONSUMER span) is the session.
    let span = attempt_span(Step::Session, "consumer", (&order).into());
    span.record("worker", shared.config.name.as_str());
    span.record(
        "queue_wait_ms",
        (chrono::Utc::now().timestamp_millis() - order.published_at_ms).max(0),
    );
    // The session continues the trace of the coordinator's publish.
    regatta_telemetry::extract(&span, delivery.properties.headers().as_ref());
    regatta_telemetry::messaging::describe(
        &span,
        regatta_telemetry::messaging::Operation::Process,
        regatta_telemetry::messaging::Message {
            queue: &shared.config.names.work_queue(),
            id: &order.session_id,
            body_bytes: delivery.data.len(),
        },
    );
    claim_and_hand_over(shared, delivery, order)
        .instrument(span)
        .await;
}

/// Claims the order's leases; once they are held, acks the delivery and
/// runs the session. Any other answer of the claim settles the delivery
/// here: handed back, dropped, refused, or requeued.
async fn claim_and_hand_over(shared: &Shared, delivery: Delivery, order: WorkOrder) {
    let config = &shared.config;
    let owner = LeaseOwner {
        worker: config.name.clone(),
        batch_id: order.batch_id.clone(),
        unit_id: order.unit_id.clone(),
        attempt: order.attempt,
        session_id: order.session_id.clone(),
    };
    let lease_wait = Instant::now();
    let acquire = acquire_with_retries(shared, &order, &owner);
    let acquire_span = lease_span(&order);
    let claim = acquire.instrument(acquire_span.clone()).await;
    describe_claim(&acquire_span, &claim, lease_wait.elapsed());
    drop(acquire_span);
    let fence = match claim {
        Ok(Claim::Held { fence, .. }) => fence,
        Ok(Claim::Busy { semaphore }) => {
            // The coordinator's accounting said there was room, but a lease
            // is still held (a race, or a zombie about to expire): hand the
            // unit back; the coordinator re-publishes it when room appears.
            tracing::info!(%semaphore, "leases busy; handing the unit back");
            let deferred = EventKind::Deferred {
                reason: format!("waiting for {semaphore}"),
            };
            let _ = shared.report(&order, 0, deferred).await;
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return;
        }
        Ok(Claim::OverBatchBudget { reason }) => {
            // The batch budget has no room for this session's reservation:
            // handed back; the coordinator shows the reason while it waits.
            tracing::info!(%reason, "batch budget full; handing the unit back");
            let _ = shared
                .report(&order, 0, EventKind::Deferred { reason })
                .await;
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return;
        }
        Ok(Claim::Cancelled) => {
            tracing::info!("batch cancelled; the order is dropped");
            let cancelled = EventKind::ended_without_running(
                Outcome::Cancelled,
                "the batch was cancelled".into(),
            );
            let _ = shared.report(&order, 0, cancelled).await;
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return;
        }
        Ok(Claim::UnknownBatch) => {
            let reason = format!(
                "order for unknown batch '{}': no coordinator of namespace '{}' enqueued it",
                order.batch_id,
                config.names.namespace()
            );
            return refuse(shared, delivery, &reason).await;
        }
        Ok(Claim::NotCurrent { reason }) => {
            let reason = stale_order_reason(&order, &reason);
            return refuse(shared, delivery, &reason).await;
        }
        Ok(Claim::AlreadyHeld) => {
            tracing::warn!(
                "duplicate order of a session that holds its leases or already ran; dropped"
            );
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim leases; the order goes back to the queue");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
            return;
        }
    };
    // The claim is recorded in Redis: from here on, a lost worker is found
    // by the coordinator's reaper, not by RabbitMQ's redelivery.
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "ack after claim failed; the order may be redelivered and will be refused by its lease");
    }
    crate::session::run(shared, &order, fence, lease_wait).await;
}

/// Why an order that is not its unit's current queued session is refused:
/// dead-lettered rather than dropped, since once its tombstone is gone only
/// a replay or a long-lost copy can bring it, and a human should see it.
fn stale_order_reason(order: &WorkOrder, why: &str) -> String {
    format!(
        "stale or replayed order: session '{}' is not the current queued session of unit '{}' \
         of batch '{}' ({why}); never run",
        order.session_id, order.unit_id, order.batch_id
    )
}

/// Acquires a unit's leases, waiting out a Redis outage with backoff while
/// the delivery is held (a nack-requeue would loop hot and count towards the
/// queue's delivery limit). Gives up after a minute, well within RabbitMQ's
/// `consumer_timeout`, and then the order goes back to the queue.
async fn acquire_with_retries(
    shared: &Shared,
    order: &WorkOrder,
    owner: &LeaseOwner,
) -> Result<Claim, Error> {
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // One claim for every try: a try whose reply was lost left a lease that
    // the next try gets back instead of being refused as a duplicate.
    let claim = uuid::Uuid::new_v4().simple().to_string();
    loop {
        match shared
            .leases
            .acquire(order, owner, &claim, shared.config.lease_ttl)
            .await
        {
            Ok(claim) => return Ok(claim),
            Err(e)
                if started.elapsed() < Duration::from_secs(60)
                    && !shared.shutdown.is_cancelled() =>
            {
                tracing::warn!(error = %e, "cannot claim leases yet; retrying");
                backoff.wait().await;
            }
            Err(e) => return Err(e),
        }
    }
}
