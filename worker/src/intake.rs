//! The worker's main loop: slots that take one unit at a time off the work
//! queue, claim its leases, run its session and report the result.
//!
//! Intake control (contract 2, docs/contracts.md): each slot has its own channel with a
//! prefetch of one and consumes only while it is free. On a delivery it
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
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use regatta_broker::BrokerLink;
use regatta_proto::{open, EventKind, LeaseOwner, Outcome, SessionEvent, WorkOrder};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::command::{run_command, Beats, CommandSpec, Ending, Stop};
use crate::gate::run_gates;
use crate::lease::{Claim, Heartbeat, LeaseClient, StopCause};
use crate::lease_span::{describe_claim, lease_span};
use crate::reporter::Reporter;
use crate::session_log::log_tail;
use crate::{Error, WorkerConfig};

/// What every slot shares.
struct Shared {
    config: WorkerConfig,
    link: BrokerLink,
    reporter: Reporter,
    leases: LeaseClient,
    /// Cancelled when the worker stops taking work.
    shutdown: CancellationToken,
    /// Cancelled when running sessions must be killed (grace period over).
    kill_sessions: CancellationToken,
    /// Whether this worker's disks work; slots take no work while not.
    health: Arc<crate::health::Health>,
    /// Cancels and revokes, heard at once from the coordinator.
    notices: crate::control::Notices,
}

/// Runs a worker until `shutdown` is cancelled, then stops taking work,
/// lets running sessions finish within the grace period, kills the rest
/// (reporting them as interrupted, so the coordinator re-runs them), and
/// returns.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let link = BrokerLink::connect(&config.amqp_url, &config.name, config.names.clone()).await?;
    let reporter = Reporter::new(link.clone(), config.names.clone(), config.signer.clone());
    let leases = LeaseClient::connect(&config.redis_url, config.keys.clone()).await?;
    tokio::fs::create_dir_all(&config.work_dir)
        .await
        .map_err(|source| Error::WorkDir {
            path: config.work_dir.display().to_string(),
            source,
        })?;
    let health = crate::health::start(&config, &shutdown).await;
    let notices = crate::control::Notices::start(&config.redis_url, &config.keys);
    let shared = Arc::new(Shared {
        notices,
        config,
        link,
        reporter,
        leases,
        shutdown: shutdown.clone(),
        kill_sessions: CancellationToken::new(),
        health,
    });
    tracing::info!(worker = %shared.config.name, slots = shared.config.slots, queue = %shared.config.names.work_queue(), "worker ready");

    let mut slots = JoinSet::new();
    for slot in 0..shared.config.slots {
        slots.spawn(slot_loop(shared.clone(), slot));
    }
    shutdown.cancelled().await;
    tracing::info!(grace = ?shared.config.grace, "shutting down: no new work; waiting for running sessions");
    let grace = tokio::time::sleep(shared.config.grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = slots.join_next() => if next.is_none() { break },
            _ = &mut grace, if !shared.kill_sessions.is_cancelled() => {
                tracing::warn!("grace period over: interrupting running sessions");
                shared.kill_sessions.cancel();
            }
        }
    }
    shared.link.close("worker shutdown").await;
    Ok(())
}

/// One slot: consume one delivery, stop consuming, handle it, repeat.
async fn slot_loop(shared: Arc<Shared>, slot: usize) {
    let mut backoff = Duration::from_millis(200);
    // The slot keeps its channel from unit to unit: opening one per unit
    // costs the broker more than the unit's own messages.
    let mut channel: Option<Channel> = None;
    while !shared.shutdown.is_cancelled() {
        // A worker whose disks fail takes no work until they work again.
        if !shared.health.wait_healthy(&shared.shutdown).await {
            break;
        }
        let result = match &channel {
            Some(open) if open.status().connected() => take_one(&shared, open, slot)
                .await
                .map_err(regatta_broker::Error::from),
            _ => match slot_channel(&shared).await {
                Ok(open) => {
                    channel = Some(open);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(Some(delivery)) => {
                backoff = Duration::from_millis(200);
                handle(&shared, delivery).await;
            }
            Ok(None) if shared.shutdown.is_cancelled() => break,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(slot, error = %e, "cannot consume from the work queue; retrying");
                // Deliveries of a broken channel are void: start afresh.
                if let Some(broken) = channel.take() {
                    let _ = broken.close(200, "slot reset".into()).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    if let Some(open) = channel {
        let _ = open.close(200, "worker shutdown".into()).await;
    }
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
    let tag = format!(
        "{}-slot{slot}-{}",
        shared.config.name,
        uuid::Uuid::new_v4().simple()
    );
    let mut consumer = channel
        .basic_consume(
            shared.config.names.work_queue().as_str().into(),
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
    let span = tracing::info_span!(
        "session",
        otel.kind = "consumer",
        batch = %order.batch_id,
        unit = %order.unit_id,
        attempt = i64::from(order.attempt),
        session = %order.session_id,
        worker = %shared.config.name,
        queue_wait_ms = (chrono::Utc::now().timestamp_millis() - order.published_at_ms).max(0),
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
    run_order(shared, delivery, order).instrument(span).await;
}

async fn run_order(shared: &Shared, delivery: Delivery, order: WorkOrder) {
    let config = &shared.config;
    let owner = LeaseOwner {
        worker: config.name.clone(),
        batch_id: order.batch_id.clone(),
        unit_id: order.unit_id.clone(),
        attempt: order.attempt,
        session_id: order.session_id.clone(),
    };
    let event = |fencing: u64, kind: EventKind| SessionEvent {
        batch_id: order.batch_id.clone(),
        unit_id: order.unit_id.clone(),
        session_id: order.session_id.clone(),
        attempt: order.attempt,
        fencing,
        worker: config.name.clone(),
        at_ms: chrono::Utc::now().timestamp_millis(),
        kind,
    };
    let lease_wait = std::time::Instant::now();
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
            let deferred = event(
                0,
                EventKind::Deferred {
                    reason: format!("waiting for {semaphore}"),
                },
            );
            let _ = shared.reporter.event(&deferred, &shared.shutdown).await;
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return;
        }
        Ok(Claim::Cancelled) => {
            tracing::info!("batch cancelled; the order is dropped");
            let cancelled = event(
                0,
                EventKind::Finished {
                    outcome: Outcome::Cancelled,
                    exit_code: None,
                    duration_ms: 0,
                    reason: Some("the batch was cancelled".into()),
                    log_tail: String::new(),
                    log_path: String::new(),
                    gates: vec![],
                    evidence: None,
                },
            );
            let _ = shared.reporter.event(&cancelled, &shared.shutdown).await;
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
    let _ = shared
        .reporter
        .event(
            &event(
                fence,
                EventKind::Started {
                    lease_wait_ms: lease_wait.elapsed().as_millis() as u64,
                },
            ),
            &shared.shutdown,
        )
        .await;

    let started_at = chrono::Utc::now();
    let (outcome, exit_code, duration, reason, log_path, gates) =
        run_session(shared, &order, fence).await;
    let ended_at = chrono::Utc::now();
    let log_tail = log_tail(&log_path, 20).await;
    // Evidence is collected and the result reported under the leases,
    // renewed meanwhile: an output may be a touched file, and a worker that
    // dies now must be reaped.
    let renewal = Heartbeat::for_result(
        shared.leases.clone(),
        &order,
        fence,
        config.lease_ttl,
        shared.notices.listen(),
    )
    .start();
    let trace = regatta_telemetry::TraceRef::current();
    let session_end = crate::evidence::SessionEnd {
        order: &order,
        worker: &config.name,
        started_at,
        ended_at,
        outcome,
        exit_code,
        reason: reason.as_deref(),
        gates: &gates,
        log_path: &log_path,
        trace_id: trace.as_ref().map(|t| t.trace_id.as_str()),
    };
    let store = crate::artifact::ArtifactStore::new(&config.artifact_store);
    let stored = crate::evidence::record_session(&store, &session_end).await;
    let (outcome, reason, evidence) =
        crate::fault::after_evidence(&shared.health, outcome, reason, stored);
    tracing::info!(
        ?outcome,
        exit_code,
        reason = reason.as_deref().unwrap_or(""),
        "session finished"
    );
    regatta_telemetry::status::session_ended(&tracing::Span::current(), outcome, reason.as_deref());
    let finished = EventKind::Finished {
        outcome,
        exit_code,
        duration_ms: duration.as_millis() as u64,
        reason,
        log_tail,
        log_path: log_path.display().to_string(),
        gates,
        evidence,
    };
    // The leases stay renewed until the broker holds the result: a worker
    // that dies before then leaves leases that expire, so the reaper re-runs
    // the unit; released first, the unit would stay `running` for good.
    let reported = shared
        .reporter
        .event(&event(fence, finished), &shared.shutdown)
        .await;
    renewal.stop().await;
    match reported {
        Ok(()) => {
            // The coordinator releases them too when it applies the result.
            if let Err(e) = shared.leases.release(&order.session_id, fence).await {
                tracing::warn!(error = %e, "releasing leases failed; they expire with their TTL");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot report the session's end; its leases expire and the coordinator re-runs the unit");
        }
    }
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

type SessionSummary = (
    Outcome,
    Option<i32>,
    Duration,
    Option<String>,
    std::path::PathBuf,
    Vec<regatta_proto::GateReport>,
);

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
    let mut backoff = Duration::from_millis(100);
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
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the session's command and gates while a heartbeat renews its leases.
async fn run_session(shared: &Shared, order: &WorkOrder, fence: u64) -> SessionSummary {
    let config = &shared.config;
    let started = Instant::now();
    let session_dir = config
        .work_dir
        .join(&order.batch_id)
        .join(&order.unit_id)
        .join(&order.session_id);
    let artifact_dir = session_dir.join("artifacts");
    let log_path = session_dir.join("session.log");
    if let Err(e) = tokio::fs::create_dir_all(&artifact_dir).await {
        let what = format!(
            "cannot create the session folder {}: {e}",
            session_dir.display()
        );
        let (outcome, reason) = crate::fault::worker_fault(&shared.health, &what);
        return (
            outcome,
            None,
            started.elapsed(),
            Some(reason),
            log_path,
            vec![],
        );
    }
    let stop = Stop {
        gently: shared.kill_sessions.child_token(),
        now: CancellationToken::new(),
    };
    // The heartbeat renews until the session is over, also while it is
    // being killed, so its slots are never handed on while it still runs.
    let (heartbeat, renewals) = Heartbeat::for_session(
        shared.leases.clone(),
        order,
        fence,
        config.lease_ttl,
        shared.notices.listen(),
        stop.clone(),
    );
    let heartbeat = heartbeat.start();
    let lost = heartbeat.cause();
    let mut env: Vec<(String, String)> = order
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend([
        ("REGATTA_BATCH_ID".into(), order.batch_id.clone()),
        ("REGATTA_UNIT_ID".into(), order.unit_id.clone()),
        ("REGATTA_TASK".into(), order.task.clone()),
        ("REGATTA_INPUTS".into(), order.inputs.join("\n")),
        ("REGATTA_OUTPUTS".into(), order.outputs.join("\n")),
        ("REGATTA_ATTEMPT".into(), order.attempt.to_string()),
        ("REGATTA_SESSION_ID".into(), order.session_id.clone()),
        ("REGATTA_FENCING".into(), fence.to_string()),
        ("REGATTA_WORKSPACE".into(), order.workdir.clone()),
        (
            "REGATTA_ARTIFACT_DIR".into(),
            artifact_dir.display().to_string(),
        ),
    ]);
    let spec = CommandSpec {
        command: order.run.clone(),
        workdir: order.workdir.clone().into(),
        env,
        timeout: Duration::from_millis(order.timeout_ms),
        log_path: log_path.clone(),
        max_log_bytes: config.max_log_bytes,
        grace: config.grace.min(Duration::from_secs(30)),
        containment: config.containment.clone(),
        // Two renewal periods: the leader kills a stalled worker's session
        // before its lease can expire and the unit re-run elsewhere.
        beats: Some(Beats {
            renewals,
            deadline: config.lease_ttl * 2 / 3,
        }),
    };
    let stopped_outcome = |cause: &StopCause| {
        if cause.cancelled() {
            (
                Outcome::Cancelled,
                "the batch was cancelled; the session was killed".to_owned(),
            )
        } else if cause.lost() {
            (
                Outcome::Lost,
                "the session's leases were lost; it was killed so it cannot overlap a re-run"
                    .to_owned(),
            )
        } else {
            (
                Outcome::Interrupted,
                "the worker shut down before the session ended".to_owned(),
            )
        }
    };
    let command = run_command(&spec, &stop);
    // The command's own errors are the worker's: its log, its leader.
    let faulted = |e: Error, exit_code| match (e, lost) {
        (_, cause) if cause.cancelled() || cause.lost() => {
            let (outcome, reason) = stopped_outcome(cause);
            (outcome, exit_code, Some(reason), vec![])
        }
        (e, _) => {
            let (outcome, reason) = crate::fault::worker_fault(&shared.health, &e.to_string());
            (outcome, exit_code, Some(reason), vec![])
        }
    };
    let result = match command.await {
        Err(e) => faulted(e, None),
        Ok((Ending::Exited(0), _)) => match run_gates(&order.gates, &spec, &stop).await {
            Err(e) => faulted(e, Some(0)),
            Ok(verdict) if verdict.stopped => {
                let (outcome, reason) = stopped_outcome(lost);
                (outcome, Some(0), Some(reason), verdict.reports)
            }
            Ok(verdict) => match verdict.escalation {
                Some(reason) => (Outcome::Failed, Some(0), Some(reason), verdict.reports),
                None => match missing_output(order).await {
                    Some(reason) => (Outcome::Failed, Some(0), Some(reason), verdict.reports),
                    None => (Outcome::Succeeded, Some(0), None, verdict.reports),
                },
            },
        },
        // The leader gave up on a worker that stalled past its lease (a
        // SIGSTOP, a VM pause): the unit already re-runs elsewhere.
        Ok((Ending::Abandoned, _)) => (
            Outcome::Lost,
            None,
            Some(
                "lost: the worker stalled past its lease and the session leader killed the session"
                    .to_owned(),
            ),
            vec![],
        ),
        Ok((Ending::Exited(code), _)) => (
            Outcome::Failed,
            Some(code),
            Some(format!("the command exited with status {code}")),
            vec![],
        ),
        Ok((Ending::TimedOut, _)) => (
            Outcome::TimedOut,
            None,
            Some(format!(
                "the deadline of {} passed; the session was killed",
                humantime::format_duration(spec.timeout)
            )),
            vec![],
        ),
        Ok((Ending::Stopped, _)) => {
            let (outcome, reason) = stopped_outcome(lost);
            (outcome, None, Some(reason), vec![])
        }
    };
    heartbeat.stop().await;
    let (outcome, exit_code, reason, gates) = result;
    (
        outcome,
        exit_code,
        started.elapsed(),
        reason,
        log_path,
        gates,
    )
}

/// Names the first declared output that the session did not produce.
async fn missing_output(order: &WorkOrder) -> Option<String> {
    for output in &order.outputs {
        let path = std::path::Path::new(&order.workdir).join(output);
        if tokio::fs::metadata(&path).await.is_err() {
            return Some(format!("declared output '{output}' is missing"));
        }
    }
    None
}
