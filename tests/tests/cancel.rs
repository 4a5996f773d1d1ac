//! Cancel stops the damage at once: workers hear of a cancel on the
//! fleet's control channel and kill the batch's sessions within a second or
//! two, not at their next lease renewal (a third of the lease TTL away).

use std::time::{Duration, Instant};

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_tests::{write_file, Fleet};

/// The pids that sessions wrote, once `count` are there.
async fn session_pids(path: &std::path::Path, count: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pids: Vec<i32> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() >= count {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {count} sessions started within 60 s",
            pids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True while the process runs: a zombie (killed, not yet reaped by
/// whoever inherited it) runs nothing.
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`: the state follows the last parenthesis.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("");
    !matches!(state, "Z" | "X" | "x")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_kills_running_sessions_within_seconds_not_at_the_next_renewal() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Each session writes its pid, then becomes `sleep 60` (same pid).
    write_file(
        dir.path(),
        "manifest.yaml",
        "batch: cancel-now\nconcurrency: 4\nplaybook:\n  name: p\n  run: 'echo $$ >> pids; exec sleep 60'\n\
         units:\n  - id: a\n  - id: b\n  - id: c\n  - id: d\n",
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    // A 30 s lease is renewed every 10 s: the old way, a cancel was heard
    // up to 10 s late.
    let fleet = Fleet::start("cancel-now", 1, 4, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");
    let pids = session_pids(&dir.path().join("pids"), 4).await;
    // Well inside the first renewal period of every session.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pids.iter().all(|&p| alive(p)), "every session runs");

    let cancelled = Instant::now();
    client.control(&batch, "cancel").await.expect("cancel");
    let deadline = cancelled + Duration::from_secs(20);
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "sessions still run 20 s after the cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = cancelled.elapsed();
    eprintln!(
        "cancel: {} sessions (lease TTL 30 s) killed {:.2} s after the cancel command",
        pids.len(),
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(3),
        "the sessions were killed {took:?} after the cancel, not within 3 s"
    );
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(30)).await;
    assert_eq!(summary.state, BatchState::Cancelled, "{summary:?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_whose_lease_is_reaped_is_killed_within_seconds() {
    use redis::AsyncCommands;

    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "manifest.yaml",
        "batch: revoke\nretries: 0\nplaybook:\n  name: p\n  run: 'echo $$ >> pids; exec sleep 60'\nunits:\n  - id: a\n",
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let fleet = Fleet::start("revoke-now", 1, 1, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");
    let pids = session_pids(&dir.path().join("pids"), 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leases = client.leases().await.expect("leases");
    let session = &leases.first().expect("the session's lease").session_id;

    // The lease expires in Redis (as if its renewals had been lost): the
    // coordinator's reaper takes it, and the worker must stop the session
    // now, not at its next renewal 9 s later.
    let keys = regatta_proto::Keys::new(&fleet.namespace).expect("keys");
    let mut redis = regatta_tests::redis().await;
    let expired = Instant::now();
    let _: () = redis
        .zadd(keys.leases(), session, 1)
        .await
        .expect("expire the lease");
    let deadline = expired + Duration::from_secs(20);
    while alive(pids[0]) {
        assert!(
            Instant::now() < deadline,
            "the session still runs 20 s after its lease was reaped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = expired.elapsed();
    eprintln!(
        "revoke: a session whose lease was reaped was killed {:.2} s later (lease TTL 30 s)",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(3),
        "the session was killed {took:?} after its lease was reaped, not within 3 s"
    );
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(30)).await;
    assert_eq!(summary.state, BatchState::Failed, "{summary:?}");
    fleet.stop().await;
}
