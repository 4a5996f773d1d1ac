//! A worker cut off from RabbitMQ and Redis mid-session, for longer than its
//! lease TTL, then reconnected (contract 3, docs/contracts.md). The worker runs in a
//! network namespace of the test's own, joined to the host by a veth pair;
//! the cut takes the link down, so its packets are dropped in the kernel and
//! its connections hang, as a real partition does (see `regatta_tests::netns`).
//! This needs root; without it the test fails and says so, it never skips.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_proto::Keys;
use regatta_proto::Outcome;
use regatta_tests::invariants::{
    check_fleet_batch, now_ms, process_alive, write_session_script, Recording,
};
use regatta_tests::netns::NetworkNamespace;
use regatta_tests::{write_file, Fleet};

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cut_off_from_the_network_kills_its_session_before_the_re_run() {
    let namespace = NetworkNamespace::create();
    let amqp = namespace.forward("127.0.0.1:5672").await;
    let redis = namespace.forward("127.0.0.1:6379").await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_session_script(dir.path());
    let timings = dir.path().join("timings.txt");
    write_file(
        dir.path(),
        "manifest.yaml",
        &format!(
            "batch: partition\nretries: 1\nresources: {{db: 1}}\nplaybook:\n  name: record\n  run: ./session.sh\n  env: {{TIMINGS: {}, SLEEP: '1'}}\nunits:\n  - id: long\n    uses: [db]\n    env: {{SLEEP_ATTEMPT_1: '20'}}\n  - id: after\n    depends_on: [long]\n    uses: [db]\n",
            timings.display()
        ),
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let mut fleet = Fleet::start("chaos-partition", 0, 1, "3s").await;
    // Short heartbeats: the partition outlasts them, so the worker's broker
    // connection dies for good and must be rebuilt after the cut.
    let amqp_url = format!("amqp://guest:guest@{amqp}/%2f?heartbeat=2");
    let redis_url = format!("redis://{redis}/");
    fleet.add_worker_in(
        &namespace.exec_prefix(),
        1,
        &[
            ("REGATTA_AMQP_URL", amqp_url.as_str()),
            ("REGATTA_REDIS_URL", redis_url.as_str()),
        ],
    );
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    // The first attempt runs on the worker in the namespace (the only one).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (pid, session) = loop {
        let recording = Recording::read(&timings);
        if let Some(first) = recording.of_unit("long").find(|s| s.attempt == 1) {
            let pid = first.pid.expect("the session recorded its pid");
            break (pid, first.session.clone());
        }
        assert!(Instant::now() < deadline, "long never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A healthy worker joins, then the first one is cut off for 8 s: more
    // than twice its TTL, and than its broker heartbeat timeout.
    fleet.add_worker(1);
    namespace.cut();
    // From now on nothing renews the lease: its expiry is final.
    let keys = Keys::new(&fleet.namespace).expect("keys");
    let mut redis_direct = regatta_tests::redis().await;
    let expiry: Option<f64> = redis_direct
        .zscore(keys.leases(), &session)
        .await
        .expect("read the lease");
    let expiry_ms = expiry.expect("the session holds its lease at the cut") as i64;
    let cut_at = Instant::now();
    let mut died_at_ms = None;
    while cut_at.elapsed() < Duration::from_secs(8) {
        if died_at_ms.is_none() && !process_alive(pid) {
            died_at_ms = Some(now_ms());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    namespace.restore();
    let died_at_ms = died_at_ms.expect("the cut-off worker's session died during the cut");
    assert!(
        died_at_ms < expiry_ms,
        "the session must die before its lease expires: it died at {died_at_ms}, the lease expired at {expiry_ms}"
    );

    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let units = fleet.client().units(&batch, None).await.expect("units");
    let long = units.iter().find(|u| u.id == "long").expect("long");
    assert_eq!(
        long.history[0].outcome,
        Some(Outcome::Lost),
        "{:?}",
        long.history
    );
    assert_eq!(
        long.history.last().and_then(|a| a.outcome),
        Some(Outcome::Succeeded)
    );
    let report = check_fleet_batch(&fleet, &batch, &manifest, &timings).await;
    assert!(report.is_clean(), "{report}");

    // Back on the network, the cut-off worker rebuilt its connections: with
    // the healthy worker gone, it alone runs the next batch.
    fleet.kill_worker(1);
    write_file(
        dir.path(),
        "after.yaml",
        "batch: after-partition\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: one\n",
    );
    let after = Manifest::load(&dir.path().join("after.yaml")).expect("valid");
    let next = fleet.client().enqueue(&after).await.expect("enqueue");
    let summary = fleet.wait_for_end(&next, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let units = fleet.client().units(&next, None).await.expect("units");
    assert_eq!(
        units[0].history.last().and_then(|a| a.worker.as_deref()),
        Some("w0"),
        "the batch after the partition ran on the restored worker"
    );
    fleet.stop().await;
}
