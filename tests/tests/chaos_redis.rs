//! Chaos that restarts the shared Redis empty: run alone, after every other
//! test, by `scripts/test.sh` (ignored by a plain `cargo test`). Redis is
//! always started again, even when an assertion fails.

use std::time::Duration;

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_tests::invariants::{check_fleet_batch, write_session_script, Recording};
use regatta_tests::{redis_url, write_file, Fleet};

/// Starts Redis again (as `scripts/services.sh` does) when dropped.
struct RedisDown;

impl RedisDown {
    /// Shuts Redis down without saving: it comes back empty.
    async fn shut_down() -> RedisDown {
        let mut con = regatta_tests::redis().await;
        // The server closes the connection: an error is the expected answer.
        let _: Result<(), _> = redis::cmd("SHUTDOWN")
            .arg("NOSAVE")
            .query_async(&mut con)
            .await;
        RedisDown
    }
}

impl Drop for RedisDown {
    fn drop(&mut self) {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg("redis")
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "Redis did not come back: start it with `scripts/services.sh redis` ({})",
            redis_url()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "restarts the shared Redis empty: scripts/test.sh runs it alone, after the other tests"]
async fn a_redis_restart_that_loses_every_lease_over_admits_nothing_and_the_batch_completes() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_session_script(dir.path());
    let timings = dir.path().join("timings.txt");
    let mut units = String::new();
    for i in 0..16 {
        units.push_str(&format!("  - id: r{i}\n"));
        if i % 2 == 0 {
            units.push_str("    uses: [db]\n");
        }
        if i >= 4 {
            units.push_str(&format!("    depends_on: [r{}]\n", i - 4));
        }
    }
    write_file(
        dir.path(),
        "manifest.yaml",
        &format!(
            "batch: redis-restart\nconcurrency: 4\nretries: 3\nresources: {{db: 2}}\nplaybook:\n  name: record\n  run: ./session.sh\n  env: {{TIMINGS: {}, SLEEP: '1'}}\nunits:\n{units}",
            timings.display()
        ),
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid");
    let fleet =
        Fleet::start_with_env("chaos-redis", 2, 2, "3s", &[("REGATTA_LEASE_TTL", "3s")]).await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    for _ in 0..100 {
        if Recording::read(&timings).sessions.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let _down = RedisDown::shut_down().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(180)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let report = check_fleet_batch(&fleet, &batch, &manifest, &timings).await;
    assert!(report.is_clean(), "{report}");
    // The batch was written back: a restarted coordinator would find it.
    let mut con = regatta_tests::redis().await;
    let keys = regatta_proto::Keys::new(&fleet.namespace).expect("keys");
    let stored: bool = redis::cmd("HEXISTS")
        .arg(keys.batch(&batch))
        .arg("manifest")
        .query_async(&mut con)
        .await
        .expect("hexists");
    assert!(stored, "the batch's manifest is back in Redis");
    fleet.stop().await;
}
