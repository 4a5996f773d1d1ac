//! A worker whose session ended but whose result never reached the broker:
//! it keeps the session's leases renewed while it retries, so that if it
//! dies there, the leases expire and the unit re-runs. Had it released them
//! first, nothing would ever find the unit again: `running` for good.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{BatchState, UnitState};
use regatta_proto::{Keys, Outcome};
use regatta_tests::invariants::{check_fleet_batch, write_session_script, Recording};
use regatta_tests::proxy::Proxy;
use regatta_tests::{write_file, Fleet};

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_dies_before_its_result_is_sent_costs_a_re_run_not_a_stuck_unit() {
    let amqp = Proxy::start("127.0.0.1:5672").await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_session_script(dir.path());
    let timings = dir.path().join("timings.txt");
    write_file(
        dir.path(),
        "manifest.yaml",
        &format!(
            "batch: report\nretries: 1\nresources: {{db: 1}}\nplaybook:\n  name: record\n  run: ./session.sh\n  env: {{TIMINGS: {}, SLEEP: '0'}}\nunits:\n  - id: work\n    uses: [db]\n    env: {{SLEEP_ATTEMPT_1: '3'}}\n  - id: after\n    depends_on: [work]\n    uses: [db]\n",
            timings.display()
        ),
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let mut fleet = Fleet::start("chaos-report", 0, 1, "3s").await;
    let amqp_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", amqp.port);
    fleet.add_worker_with_env(1, &[("REGATTA_AMQP_URL", amqp_url.as_str())]);
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");

    // While the first attempt runs, the worker loses the broker (not Redis).
    let session = wait_for(Duration::from_secs(20), "work to start", || {
        let recording = Recording::read(&timings);
        let first = recording.of_unit("work").find(|s| s.attempt == 1)?;
        Some(first.session.clone())
    })
    .await;
    amqp.cut();
    wait_for(Duration::from_secs(20), "work to end", || {
        let recording = Recording::read(&timings);
        recording.session(&session)?.end_ms
    })
    .await;

    // The result cannot be sent: past a whole TTL, the lease is still held.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let keys = Keys::new(&fleet.namespace).expect("keys");
    let mut redis = regatta_tests::redis().await;
    let held: Option<f64> = redis
        .zscore(keys.leases(), &session)
        .await
        .expect("read leases");
    assert!(
        held.is_some(),
        "a worker that could not report its result released the session's leases"
    );

    // It dies there; another worker takes over once the leases expire.
    fleet.kill_worker(0);
    fleet.add_worker(1);
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let units = fleet.client().units(&batch, None).await.expect("units");
    let work = units.iter().find(|u| u.id == "work").expect("work");
    let outcomes: Vec<_> = work.history.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![Some(Outcome::Lost), Some(Outcome::Succeeded)],
        "{:?}",
        work.history
    );
    let report = check_fleet_batch(&fleet, &batch, &manifest, &timings).await;
    assert!(report.is_clean(), "{report}");
    fleet.stop().await;
}

async fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The coordinator frees a finished session's leases itself, as it applies
/// the result: a worker that cannot reach Redis to release them (here, cut
/// off from it after its session) does not hold the next unit back until
/// the lease TTL runs out.
#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_frees_a_finished_sessions_leases_when_it_applies_the_result() {
    let redis_proxy = Proxy::start("127.0.0.1:6379").await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_session_script(dir.path());
    let timings = dir.path().join("timings.txt");
    write_file(
        dir.path(),
        "manifest.yaml",
        &format!(
            "batch: release\nresources: {{db: 1}}\nplaybook:\n  name: record\n  run: ./session.sh\n  env: {{TIMINGS: {}, SLEEP: '0'}}\nunits:\n  - id: work\n    uses: [db]\n    env: {{SLEEP_ATTEMPT_1: '2'}}\n  - id: after\n    depends_on: [work]\n    uses: [db]\n",
            timings.display()
        ),
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    // A 30 s TTL: were the leases left to expire, `after` would wait that long.
    let mut fleet = Fleet::start("chaos-release", 0, 1, "30s").await;
    let redis_url = format!("redis://127.0.0.1:{}/", redis_proxy.port);
    fleet.add_worker_with_env(1, &[("REGATTA_REDIS_URL", redis_url.as_str())]);
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    let session = wait_for(Duration::from_secs(20), "work to start", || {
        let recording = Recording::read(&timings);
        let first = recording.of_unit("work").next().map(|s| s.session.clone());
        first
    })
    .await;
    // A second worker for `after`; the first loses Redis, so it cannot
    // release the leases it holds once its session ends.
    fleet.add_worker(1);
    redis_proxy.cut();
    let ended_ms = wait_for(Duration::from_secs(20), "work to end", || {
        Recording::read(&timings).session(&session)?.end_ms
    })
    .await;
    let client = fleet.client();
    for _ in 0..200 {
        let units = client.units(&batch, None).await.expect("units");
        if units
            .iter()
            .any(|u| u.id == "work" && u.state == UnitState::Succeeded)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Out of the way, so that `after` runs on the healthy worker.
    fleet.kill_worker(0);
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let started_ms = Recording::read(&timings)
        .of_unit("after")
        .next()
        .expect("after ran")
        .start_ms;
    assert!(
        started_ms - ended_ms < 15_000,
        "`after` waited {} ms for leases the coordinator should have freed",
        started_ms - ended_ms
    );
    let report = check_fleet_batch(&fleet, &batch, &manifest, &timings).await;
    assert!(report.is_clean(), "{report}");
    fleet.stop().await;
}
