//! The messages and Redis calls of a unit (issue 15): a short session sends
//! `finished` only, carrying its start; a worker releases its leases itself
//! when the coordinator is down; the coordinator applies a window of events
//! at once. A real coordinator, worker, RabbitMQ and Redis.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_proto::{open, EventKind, Keys, Names, Outcome, SessionEvent, Signer};
use regatta_tests::{rabbitmq, redis, write_file, Fleet};

fn manifest(dir: &Path, yaml: &str) -> Manifest {
    write_file(dir, "manifest.yaml", yaml);
    Manifest::load(&dir.join("manifest.yaml"))
        .unwrap_or_else(|e| panic!("test manifest is valid: {e}"))
}

/// How many sessions hold leases in the namespace right now.
async fn leases_held(keys: &Keys) -> usize {
    let mut connection = redis().await;
    redis::cmd("ZCARD")
        .arg(keys.leases())
        .query_async(&mut connection)
        .await
        .expect("zcard")
}

/// Waits until `held(n)` is true of the number of leases held.
async fn wait_for_leases(keys: &Keys, what: &str, held: impl Fn(usize) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = leases_held(keys).await;
        if held(now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {now} leases held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads every event waiting in the events queue without acking any: they
/// go back to the queue when the connection closes.
async fn peek_events(namespace: &str, secret: &str) -> Vec<SessionEvent> {
    let names = Names::new(namespace).expect("names");
    let signer = Signer::new(secret.as_bytes());
    let connection = rabbitmq().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            names.events_queue().as_str().into(),
            "peek".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut events = Vec::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
    {
        events.push(open(&delivery.data, &signer).expect("a sealed event"));
    }
    let _ = connection.close(200, "peeked".into()).await;
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn short_sessions_send_finished_only_and_their_worker_releases_while_the_coordinator_is_down()
{
    let dir = tempfile::tempdir().expect("temp dir");
    let gate = dir.path().join("gate");
    let wait = format!("until [ -e {} ]; do sleep 0.02; done", gate.display());
    let m = manifest(
        dir.path(),
        &format!(
            "batch: short\nconcurrency: 4\nplaybook: {{name: p, run: '{wait}'}}\nunits:\n\
             \x20 - {{id: a}}\n  - {{id: b}}\n  - {{id: c}}\n\
             \x20 - {{id: long, run: '{wait}; sleep 3'}}\n"
        ),
    );
    let mut fleet = Fleet::start("short", 0, 4, "3s").await;
    // `long` outlives the threshold, the others end well within it.
    fleet.add_worker_with_env(4, &[("REGATTA_STARTED_AFTER", "2s")]);
    let keys = Keys::new(&fleet.namespace).expect("keys");
    let batch = fleet.client().enqueue(&m).await.expect("enqueue");
    wait_for_leases(&keys, "every unit claimed", |n| n == 4).await;

    // With no coordinator to apply the results and release the leases, the
    // worker must release them itself before they expire: expired, they
    // would be reaped and the units re-run as lost.
    fleet.kill_coordinator();
    write_file(dir.path(), "gate", "");
    wait_for_leases(&keys, "leases released by the worker", |n| n == 0).await;

    let events = peek_events(&fleet.namespace, &fleet.secret).await;
    let mut by_unit: BTreeMap<String, Vec<SessionEvent>> = BTreeMap::new();
    for event in events {
        by_unit
            .entry(event.unit_id.clone())
            .or_default()
            .push(event);
    }
    for unit in ["a", "b", "c", "long"] {
        let events = by_unit.get(unit).map(Vec::as_slice).unwrap_or_default();
        let kinds: Vec<&EventKind> = events.iter().map(|e| &e.kind).collect();
        let finished = match (unit, kinds.as_slice()) {
            ("long", [EventKind::Started { .. }, finished]) => finished,
            ("long", _) => panic!("long: `started` then `finished` expected: {kinds:?}"),
            (_, [finished]) => finished,
            (_, _) => panic!("{unit}: `finished` alone expected: {kinds:?}"),
        };
        let EventKind::Finished {
            outcome,
            started_at_ms,
            lease_wait_ms,
            ..
        } = finished
        else {
            panic!("{unit}: the last event is not `finished`: {kinds:?}");
        };
        assert_eq!(*outcome, Outcome::Succeeded, "{unit}");
        let started = started_at_ms.unwrap_or_else(|| panic!("{unit}: no start in `finished`"));
        assert!(started <= events[events.len() - 1].at_ms, "{unit}");
        assert!(
            lease_wait_ms.is_some(),
            "{unit}: no lease wait in `finished`"
        );
    }

    // A new coordinator applies them: the batch completes, each unit once,
    // with where and when it ran on record.
    fleet.restart_coordinator().await;
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let views = fleet.client().units(&batch, None).await.expect("units");
    for view in &views {
        assert_eq!(view.history.len(), 1, "{} ran once: {view:?}", view.id);
        let attempt = &view.history[0];
        assert_eq!(attempt.worker.as_deref(), Some("w0"), "{}", view.id);
        let (Some(start), Some(end)) = (attempt.started_at_ms, attempt.ended_at_ms) else {
            panic!("{}: start and end on record: {attempt:?}", view.id);
        };
        assert!(start <= end, "{}: {attempt:?}", view.id);
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_waiting_in_the_queue_are_applied_in_windows() {
    let mut fleet = Fleet::start("window", 0, 1, "30s").await;
    fleet.kill_coordinator();
    // Results of an unknown batch: applied (as ignored) like any other.
    let events: Vec<SessionEvent> = (0..64)
        .map(|n| {
            let mut event = SessionEvent::example(EventKind::Deferred {
                reason: "test".into(),
            });
            event.session_id = format!("s-{n}");
            event
        })
        .collect();
    fleet.publish_events(&events).await;
    fleet.restart_coordinator().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let (windows, applied) = loop {
        let metrics = reqwest::get(format!("{}/metrics", fleet.api))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (windows, applied) = (
            value("regatta_event_window_events_count"),
            value("regatta_event_window_events_sum"),
        );
        if applied >= 64.0 {
            break (windows, applied);
        }
        assert!(Instant::now() < deadline, "64 events applied: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(applied, 64.0);
    // Waiting in the broker's buffer together, they are applied together:
    // one lock, one store flush and one ack per window.
    assert!(
        windows <= 16.0,
        "64 queued events applied in {windows} windows"
    );
    fleet.stop().await;
}
