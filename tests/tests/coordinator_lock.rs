//! One coordinator per namespace: a second one started beside the first
//! waits, publishing nothing, until the first is gone; then it takes the
//! namespace over and finishes the batch.

use std::time::{Duration, Instant};

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_tests::{write_file, Fleet};

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

/// A process killed when the test ends, however it ends.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
