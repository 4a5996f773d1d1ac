//! A worker cut off from RabbitMQ and Redis mid-session, for longer than its
//! lease TTL, then reconnected (DESIGN scenario 5). The worker runs in a
//! network namespace of the test's own, joined to the host by a veth pair;
//! the cut takes the link down, so its packets are dropped in the kernel and
//! its connections hang, as a real partition does (see `regatta_tests::netns`).
//! This needs root; without it the test fails and says so, it never skips.

use std::time::{Duration, Instant};

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_proto::Outcome;
use regatta_tests::invariants::{
    check_fleet_batch, process_alive, write_session_script, Recording,
};
use regatta_tests::netns::NetworkNamespace;
use regatta_tests::{write_file, Fleet};

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cut_off_from_the_network_kills_its_session_before_the_re_run() {
    let namespace = NetworkNamespace::create(std::process::id());
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
    let amqp_url = format!("amqp://guest:guest@{amqp}/%2f");
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
    let pid = loop {
        let recording = Recording::read(&timings);
        if let Some(first) = recording.of_unit("long").find(|s| s.attempt == 1) {
            break first.pid.expect("the session recorded its pid");
        }
        assert!(Instant::now() < deadline, "long never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A healthy worker joins, then the first one is cut off for twice its TTL.
    fleet.add_worker(1);
    namespace.cut();
    let cut_at = Instant::now();
    let mut dead_after = None;
    while cut_at.elapsed() < Duration::from_secs(6) {
        if dead_after.is_none() && !process_alive(pid) {
            dead_after = Some(cut_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    namespace.restore();
    let dead_after = dead_after.expect("the cut-off worker's session died during the cut");
    assert!(
        dead_after < Duration::from_secs(3),
        "the session must die before its 3 s lease can expire, it died after {dead_after:?}"
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
    fleet.stop().await;
}
