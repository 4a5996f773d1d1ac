//! The coordinator's store: every write is fenced in Redis by the lock's
//! tenure, so a coordinator's request that stalled on the network across a
//! failover is refused when it lands; and a write Redis refuses for good
//! fails its own request and blocks nothing after it.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_tests::proxy::Proxy;
use regatta_tests::{write_file, Fleet, KilledOnDrop};

fn manifest(dir: &std::path::Path, name: &str, body: &str) -> Manifest {
    let file = format!("{name}.yaml");
    write_file(dir, &file, body);
    Manifest::load(&dir.join(file)).expect("valid manifest")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_stalled_across_a_failover_is_refused_when_it_lands() {
    let dir = tempfile::tempdir().expect("temp dir");
    // No worker: the unit stays queued, the batch running.
    let batch_manifest = manifest(
        dir.path(),
        "stalled",
        "batch: stalled\nplaybook:\n  name: p\n  run: sleep 60\nunits:\n  - id: x\n",
    );
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let via_proxy = format!("redis://127.0.0.1:{}/", proxy.port);
    let env = [
        ("REGATTA_REDIS_URL", via_proxy.as_str()),
        ("REGATTA_LOCK_TTL", "3s"),
        ("REGATTA_INSTANCE", "first"),
    ];
    let mut fleet = Fleet::start_with_env("fencing", 0, 1, "30s", &env).await;
    let batch = fleet
        .client()
        .enqueue(&batch_manifest)
        .await
        .expect("enqueue");
    let keys = regatta_proto::Keys::new(&fleet.namespace).expect("keys");
    let mut redis = regatta_tests::redis().await;

    // Coordinator A's link to Redis stalls: its requests are held, not
    // dropped. An operator cancels the batch on A meanwhile: A sends the
    // write while its lock is still current.
    proxy.stall();
    let first = fleet.client();
    let stalled_batch = batch.clone();
    let cancel_on_first =
        tokio::spawn(async move { first.control(&stalled_batch, "cancel").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A's lock expires; coordinator B takes over and pauses the batch.
    let direct = regatta_tests::redis_url();
    let (rival, lines) = fleet.spawn_rival_coordinator(&[
        ("REGATTA_REDIS_URL", direct.as_str()),
        ("REGATTA_INSTANCE", "second"),
    ]);
    let _rival = KilledOnDrop(rival);
    let first_line =
        tokio::task::spawn_blocking(move || lines.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("join")
            .expect("coordinator B took over once A's lock expired");
    let api = first_line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"));
    fleet.use_api(api);
    fleet
        .client()
        .control(&batch, "pause")
        .await
        .expect("B pauses the batch");
    let state: Option<String> = redis.hget(keys.batch(&batch), "state").await.expect("read");
    assert_eq!(state.as_deref(), Some("paused"), "B's write is stored");

    // A's held requests land now: Redis must refuse them.
    proxy.release();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let state: Option<String> = redis.hget(keys.batch(&batch), "state").await.expect("read");
    let unit: Option<String> = redis.hget(keys.units(&batch), "x").await.expect("read");
    assert_eq!(
        state.as_deref(),
        Some("paused"),
        "a write of the deposed coordinator A landed after B took over; unit record: {unit:?}"
    );
    assert!(
        !unit.unwrap_or_default().contains("\"cancelled\""),
        "A's cancel reached the unit record"
    );
    let summary = fleet.client().batch(&batch).await.expect("B's view");
    assert_eq!(summary.state, BatchState::Paused, "{summary:?}");
    // A stops (it lost its lock), with a failure; its cancel never succeeded.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = fleet.coordinator_exit() {
            break status;
        }
        assert!(Instant::now() < deadline, "coordinator A still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "A stops with a failure: {status}");
    let cancel = cancel_on_first.await.expect("join");
    assert!(
        cancel.is_err(),
        "A's cancel was answered as done: {cancel:?}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_redis_refuses_fails_its_enqueue_and_later_writes_go_through() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = manifest(
        dir.path(),
        "running",
        "batch: running\nplaybook:\n  name: p\n  run: sleep 3\nunits:\n  - id: a\n",
    );
    let refused = manifest(
        dir.path(),
        "refused",
        "batch: refused\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: b\n",
    );
    let fleet = Fleet::start("refused-write", 1, 2, "30s").await;
    let keys = regatta_proto::Keys::new(&fleet.namespace).expect("keys");
    let mut redis = regatta_tests::redis().await;
    let client = fleet.client();
    let first = client.enqueue(&running).await.expect("enqueue");

    // The index of batches is no sorted set any more: Redis refuses, for
    // good, the enqueue's write to it (WRONGTYPE), however often it is sent.
    let _: () = redis
        .set(keys.batches(), "not a sorted set")
        .await
        .expect("spoil the index");
    let answer = tokio::time::timeout(Duration::from_secs(20), client.enqueue(&refused))
        .await
        .expect("the enqueue was answered (not retried forever)");
    let error = answer
        .expect_err("an enqueue Redis could not store fails")
        .to_string();
    eprintln!("the refused enqueue answered: {error}");
    assert!(
        error.contains("WRONGTYPE") && error.contains(&keys.batches()),
        "the error names Redis's reason and the key: {error}"
    );
    assert!(error.starts_with("500"), "a server error: {error}");
    // Nothing of the refused batch is left, in Redis or in the coordinator.
    let stored: Vec<String> = redis
        .keys(format!("{}*", keys.batch("")))
        .await
        .expect("keys");
    assert!(
        stored.iter().all(|k| k.starts_with(&keys.batch(&first))),
        "a refused batch left records: {stored:?}"
    );
    let listed = client.batches().await.expect("batches");
    assert_eq!(listed.len(), 1, "{listed:?}");

    // Later writes go through while the index is still spoiled: the
    // running batch's results are stored.
    let summary = fleet.wait_for_end(&first, Duration::from_secs(30)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state: Option<String> = redis.hget(keys.batch(&first), "state").await.expect("read");
        if state.as_deref() == Some("succeeded") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the running batch's end was not stored: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Once the key is fixed, the same enqueue goes through and runs.
    let _: () = redis.del(keys.batches()).await.expect("fix the index");
    let again = client.enqueue(&refused).await.expect("enqueue again");
    let summary = fleet.wait_for_end(&again, Duration::from_secs(30)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_writes_after_redis_lost_its_data_but_never_once_another_tenure_holds_the_lock() {
    use regatta_coordinator::lock::Tenure;
    use regatta_coordinator::store::{Store, Write};
    use regatta_coordinator::Error;

    let namespace = regatta_tests::unique_namespace("tenure-fence");
    let keys = regatta_proto::Keys::new(&namespace).expect("keys");
    let tenure = Tenure::named("me", Duration::from_secs(30));
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
    let mut redis = regatta_tests::redis().await;
    let state = |value: &str| Write::Hash {
        key: keys.batch("b"),
        fields: vec![("state".into(), value.into())],
    };

    // No lock and no tenure recorded (Redis lost its data): the holder
    // writes, and takes its lock back.
    store
        .store(vec![state("running")])
        .await
        .expect("stored after a data loss");
    let holder: Option<String> = redis.get(keys.coordinator()).await.expect("read");
    let recorded: Option<String> = redis.get(keys.coordinator_tenure()).await.expect("read");
    assert_eq!(holder.as_deref(), Some("me"));
    assert_eq!(recorded.as_deref(), Some(tenure.id.as_str()));

    // Another tenure took the lock (a restart in place under the same
    // name): every write of this one is refused, in Redis.
    let _: () = redis
        .set(keys.coordinator_tenure(), "me#another-run")
        .await
        .expect("another tenure");
    let refused = store.store(vec![state("cancelled")]).await;
    assert!(
        matches!(refused, Err(Error::LockLost(_))),
        "a deposed tenure's write: {refused:?}"
    );
    assert!(tenure.is_deposed(), "the lock holder is told to stop");
    store.write(state("paused"));
    assert!(
        matches!(store.flushed().await, Err(Error::LockLost(_))),
        "a deposed store says so when flushed"
    );
    let stored: Option<String> = redis.hget(keys.batch("b"), "state").await.expect("read");
    assert_eq!(stored.as_deref(), Some("running"), "a deposed write landed");
    regatta_tests::delete_keys(&mut redis, &namespace).await;
}
