//! One coordinator per namespace: a second one started beside the first
//! waits, publishing nothing, until the first is gone; then it takes the
//! namespace over and finishes the batch.

use std::time::{Duration, Instant};

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_tests::{write_file, Fleet, KilledOnDrop};

#[tokio::test(flavor = "multi_thread")]
async fn a_second_coordinator_waits_until_the_first_is_gone_then_takes_over() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "manifest.yaml",
        "batch: lock\nplaybook:\n  name: p\n  run: sleep 0.2\nunits:\n  - id: a\n  - id: b\n    depends_on: [a]\n  - id: c\n    depends_on: [b]\n",
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let env = [("REGATTA_LOCK_TTL", "2s"), ("REGATTA_INSTANCE", "first")];
    let mut fleet = Fleet::start_with_env("coordinator-lock", 0, 1, "30s", &env).await;

    let (rival, lines) = fleet.spawn_rival_coordinator(&[("REGATTA_INSTANCE", "second")]);
    let mut rival = KilledOnDrop(rival);
    // While the first lives, the second does not start (no API, no publishing).
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        lines.try_recv().is_err(),
        "a second coordinator started while the first held the namespace"
    );
    assert!(
        rival.0.try_wait().expect("rival status").is_none(),
        "the second coordinator waits, it does not exit"
    );

    // The first dies without letting go: the second takes over after the TTL.
    fleet.kill_coordinator();
    let killed = Instant::now();
    let first_line = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("the second coordinator started once the first was gone");
    let api = first_line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"));
    eprintln!("took over {:?} after the kill", killed.elapsed());
    fleet.use_api(api);
    fleet.add_worker(1);
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(30)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    drop(rival);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_coordinator_that_lost_its_lock_stops_when_it_wakes() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "manifest.yaml",
        "batch: paused\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: a\n  - id: b\n    depends_on: [a]\n",
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let env = [("REGATTA_LOCK_TTL", "2s"), ("REGATTA_INSTANCE", "first")];
    let mut fleet = Fleet::start_with_env("coordinator-pause", 0, 1, "30s", &env).await;
    let (rival, lines) = fleet.spawn_rival_coordinator(&[("REGATTA_INSTANCE", "second")]);
    let _rival = KilledOnDrop(rival);
    std::thread::sleep(Duration::from_secs(1));
    assert!(lines.try_recv().is_err(), "the rival waits");

    // Paused past its lock's TTL: the rival takes the namespace over.
    let first = Pid::from_raw(fleet.coordinator_pid() as i32);
    kill(first, Signal::SIGSTOP).expect("SIGSTOP the coordinator");
    let took_over = lines.recv_timeout(Duration::from_secs(20));
    kill(first, Signal::SIGCONT).expect("SIGCONT the coordinator");
    let first_line = took_over.expect("the rival took over from the paused coordinator");
    let api = first_line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"));

    // Awake, the first finds its lock taken and stops, with a failure.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = fleet.coordinator_exit() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the paused coordinator still runs after it woke without its lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "it stops with a failure: {status}");

    fleet.use_api(api);
    fleet.add_worker(1);
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(30)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_whose_lock_renewal_is_overdue_writes_nothing() {
    use redis::AsyncCommands;
    use regatta_coordinator::lock::Tenure;
    use regatta_coordinator::store::{Store, Write};

    let namespace = regatta_tests::unique_namespace("tenure");
    let keys = regatta_proto::Keys::new(&namespace).expect("keys");
    let tenure = Tenure::new(Duration::from_millis(300));
    // The writer runs in `tasks` until the test ends (dropping them).
    let mut tasks = regatta_telemetry::tasks::Tasks::new();
    let store = Store::connect(
        &regatta_tests::redis_url(),
        keys.clone(),
        Some(tenure.clone()),
        &tokio_util::sync::CancellationToken::new(),
        &mut tasks,
    )
    .await
    .expect("connect the store");
    let key = keys.batch("b");
    let mut redis = regatta_tests::redis().await;

    // Two thirds of the TTL pass without a renewal: the write waits.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!tenure.is_current());
    store.write(Write::Hash {
        key: key.clone(),
        fields: vec![("state".into(), "running".into())],
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let early: Option<String> = redis.hget(&key, "state").await.expect("read");
    assert_eq!(
        early, None,
        "written while the lock was not known to be held"
    );

    // Renewed: the queued write lands, in order.
    tenure.renewed();
    tokio::time::timeout(Duration::from_secs(5), store.flushed())
        .await
        .expect("the write lands once the lock is renewed")
        .expect("this store's tenure still holds the lock");
    let late: Option<String> = redis.hget(&key, "state").await.expect("read");
    assert_eq!(late.as_deref(), Some("running"));
    regatta_tests::delete_keys(&mut redis, &namespace).await;
}
