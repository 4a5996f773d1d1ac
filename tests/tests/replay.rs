//! A work order replayed after its session's tombstone expired never runs
//! again: the lease script admits only the session that the coordinator
//! stored as the unit's current queued one, for as long as the batch lives,
//! not only for the day a tombstone lasts.

use std::path::Path;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::BasicProperties;
use regatta_broker as broker;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_proto::{open, Keys, Names, Outcome, Signer, WorkOrder};
use regatta_tests::{rabbitmq, redis, write_file, Fleet};

/// Appends the session id to `ran.txt`: one line per run of the unit.
const MANIFEST: &str = "batch: replay\nplaybook:\n  name: p\n  run: echo \"$REGATTA_SESSION_ID\" >> ran.txt\nunits:\n  - id: once\n";

fn runs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("ran.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Takes the next order off the work queue within `timeout`: its exact bytes.
async fn capture_order(channel: &lapin::Channel, names: &Names, timeout: Duration) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = channel
            .basic_get(
                names.work_queue().as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .expect("basic.get on the work queue");
        if let Some(message) = got {
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack the captured order");
            return message.delivery.data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the coordinator published no order within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_replayed_after_its_tombstone_expired_is_dead_lettered_and_never_runs() {
    // No worker yet: the test takes the order off the queue first.
    let mut fleet = Fleet::start("replay", 0, 1, "5s").await;
    let names = Names::new(&fleet.namespace).expect("names");
    let keys = Keys::new(&fleet.namespace).expect("keys");
    let connection = rabbitmq().await;
    let channel = regatta_tests::confirm_channel(&connection).await;
    broker::declare_topology(&channel, &names)
        .await
        .expect("topology");
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "manifest.yaml", MANIFEST);
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid manifest");
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");

    let captured = capture_order(&channel, &names, Duration::from_secs(20)).await;
    let order: WorkOrder =
        open(&captured, &Signer::new(fleet.secret.as_bytes())).expect("a valid order");
    let publish = |payload: Vec<u8>| {
        let channel = channel.clone();
        let queue = names.work_queue();
        async move {
            broker::publish_confirmed(&channel, &queue, &payload, BasicProperties::default())
                .await
                .expect("publish the captured order");
        }
    };
    publish(captured.clone()).await;
    fleet.add_worker(1);
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    assert_eq!(runs(dir.path()), vec![order.session_id.clone()], "one run");

    // A day later the tombstone is gone, and someone replays the order.
    let mut con = redis().await;
    let deleted: i64 = redis::cmd("DEL")
        .arg(keys.done(&order.session_id))
        .query_async(&mut con)
        .await
        .expect("delete the tombstone");
    assert_eq!(deleted, 1, "the finished session had a tombstone to expire");
    publish(captured).await;

    let letters = regatta_tests::dead_letters(&channel, &names, 1, Duration::from_secs(30)).await;
    let reasons: Vec<&str> = letters.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        reasons.len(),
        1,
        "the replayed order was dead-lettered within 30 s (runs so far: {:?})",
        runs(dir.path())
    );
    assert!(
        reasons[0].contains("stale or replayed order")
            && reasons[0].contains(&order.session_id)
            && reasons[0].contains("succeeded"),
        "{reasons:?}"
    );
    // Give a wrongly admitted replay time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        runs(dir.path()),
        vec![order.session_id.clone()],
        "the replay did not run the unit again"
    );
    let units = client.units(&batch, None).await.expect("units");
    let once = units.iter().find(|u| u.id == "once").expect("unit once");
    assert_eq!(once.history.len(), 1, "{:?}", once.history);
    assert_eq!(once.history[0].outcome, Some(Outcome::Succeeded));
    let leases: i64 = redis::cmd("ZCARD")
        .arg(keys.leases())
        .query_async(&mut con)
        .await
        .expect("zcard leases");
    assert_eq!(leases, 0, "the replay holds no lease");
    fleet.stop().await;
}

/// Two copies of one order (a redelivery after a lost ack) taken at once by
/// two slots of one worker carry the same lease owner: only the claim, one
/// per delivery, tells them apart, so the copy is refused, not handed the
/// lease that the first copy's claim holds.
#[tokio::test(flavor = "multi_thread")]
async fn two_copies_of_an_order_on_two_slots_of_one_worker_run_once() {
    let mut fleet = Fleet::start("replay-copies", 0, 1, "5s").await;
    let names = Names::new(&fleet.namespace).expect("names");
    let connection = rabbitmq().await;
    let channel = regatta_tests::confirm_channel(&connection).await;
    broker::declare_topology(&channel, &names)
        .await
        .expect("topology");
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "manifest.yaml",
        "batch: copies\nplaybook:\n  name: p\n  run: echo \"$REGATTA_SESSION_ID\" >> ran.txt; sleep 2\nunits:\n  - id: once\n",
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid manifest");
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");
    let captured = capture_order(&channel, &names, Duration::from_secs(20)).await;
    for _ in 0..2 {
        broker::publish_confirmed(
            &channel,
            &names.work_queue(),
            &captured,
            BasicProperties::default(),
        )
        .await
        .expect("publish a copy of the order");
    }
    fleet.add_worker(2);
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    assert_eq!(runs(dir.path()).len(), 1, "one run: {:?}", runs(dir.path()));
    let units = client.units(&batch, None).await.expect("units");
    let once = units.iter().find(|u| u.id == "once").expect("unit once");
    assert_eq!(once.history.len(), 1, "{:?}", once.history);
    fleet.stop().await;
}
