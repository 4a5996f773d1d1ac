//! Dispatch end to end: a real coordinator, real workers, real RabbitMQ and
//! Redis. Each test has its own namespace, so they run side by side.

use std::path::Path;
use std::time::Duration;

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{BatchState, UnitState};
use regatta_tests::{read_timings, write_file, Fleet};

/// A session script that records its unit's start and end times (ms).
const RECORD: &str = r#"#!/bin/sh
start=$(date +%s%3N)
sleep "${SLEEP:-0.05}"
echo "$REGATTA_UNIT_ID $start $(date +%s%3N)" >> "$TIMINGS"
"#;

fn manifest(dir: &Path, yaml: &str) -> Manifest {
    write_file(dir, "manifest.yaml", yaml);
    Manifest::load(&dir.join("manifest.yaml"))
        .unwrap_or_else(|e| panic!("test manifest is valid: {e}"))
}

fn state_of(units: &[regatta_coordinator::service::UnitView], id: &str) -> UnitState {
    units
        .iter()
        .find(|u| u.id == id)
        .map(|u| u.state)
        .unwrap_or_else(|| panic!("unit {id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dag_runs_in_dependency_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "record.sh", RECORD);
    let timings = dir.path().join("timings.txt");
    // Six layers of five: fan-out, fan-in and diamonds.
    let mut units = String::new();
    for layer in 0..6 {
        for i in 0..5 {
            let id = format!("u{layer}-{i}");
            units.push_str(&format!("  - id: {id}\n"));
            if layer > 0 {
                let deps: Vec<String> = (0..=(i % 3))
                    .map(|k| format!("u{}-{}", layer - 1, (i + k) % 5))
                    .collect();
                units.push_str(&format!("    depends_on: [{}]\n", deps.join(", ")));
            }
        }
    }
    let m = manifest(
        dir.path(),
        &format!(
            "batch: dag\nconcurrency: 8\nplaybook:\n  name: record\n  run: ./record.sh\n  env: {{TIMINGS: {}}}\nunits:\n{units}",
            timings.display()
        ),
    );
    let fleet = Fleet::start("dag", 3, 3, "30s").await;
    let batch = fleet.client().enqueue(&m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(90)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    assert_eq!(summary.counts.get(&UnitState::Succeeded), Some(&30));

    let recorded = read_timings(&timings);
    assert_eq!(recorded.len(), 30, "every unit ran once: {recorded:?}");
    for unit in &m.units {
        let (start, _) = recorded[&unit.id];
        for dep in &unit.depends_on {
            let (_, dep_end) = recorded[dep];
            assert!(
                start >= dep_end,
                "{} started at {start} before its dependency {dep} ended at {dep_end}",
                unit.id
            );
        }
    }
    // The coordinator's own records agree.
    let views = fleet.client().units(&batch, None).await.expect("units");
    for view in &views {
        assert_eq!(view.history.len(), 1, "{} ran once", view.id);
        assert!(view.history[0].started_at_ms.is_some() && view.history[0].ended_at_ms.is_some());
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_unit_is_retried_then_needs_review_and_blocks_its_descendants() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "attempts.txt", "");
    let m = manifest(
        dir.path(),
        "batch: failing\nretries: 1\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  \
         - id: bad\n    run: echo attempt >> attempts.txt; exit 3\n  \
         - id: child\n    depends_on: [bad]\n  \
         - id: grandchild\n    depends_on: [child]\n  \
         - id: independent\n",
    );
    let fleet = Fleet::start("failing", 3, 2, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Failed);
    let units = client.units(&batch, None).await.expect("units");
    assert_eq!(state_of(&units, "bad"), UnitState::NeedsReview);
    assert_eq!(state_of(&units, "child"), UnitState::Blocked);
    assert_eq!(state_of(&units, "grandchild"), UnitState::Blocked);
    assert_eq!(state_of(&units, "independent"), UnitState::Succeeded);
    let attempts = std::fs::read_to_string(dir.path().join("attempts.txt")).expect("attempts");
    assert_eq!(attempts.lines().count(), 2, "retries + 1 attempts");
    let bad = units.iter().find(|u| u.id == "bad").expect("bad");
    assert_eq!(bad.history.len(), 2);
    assert!(bad.history.iter().all(|a| a.exit_code == Some(3)));
    let failed = client
        .sessions(&batch, Some("needs_review"))
        .await
        .expect("sessions");
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("status 3"),
        "{failed:?}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retrying_after_a_fix_and_skipping_both_unblock_descendants() {
    let dir = tempfile::tempdir().expect("temp dir");
    let m = manifest(
        dir.path(),
        "batch: fixable\nretries: 0\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  \
         - id: needs-input\n    run: test -f input.txt\n  \
         - id: after-fix\n    depends_on: [needs-input]\n  \
         - id: hopeless\n    run: exit 1\n  \
         - id: after-skip\n    depends_on: [hopeless]\n",
    );
    let fleet = Fleet::start("fixable", 2, 2, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    assert_eq!(
        fleet
            .wait_for_end(&batch, Duration::from_secs(60))
            .await
            .state,
        BatchState::Failed
    );
    let units = client.units(&batch, None).await.expect("units");
    assert_eq!(state_of(&units, "after-fix"), UnitState::Blocked);

    write_file(dir.path(), "input.txt", "fixed");
    client
        .retry(&batch, Some("needs-input"))
        .await
        .expect("retry");
    client.skip(&batch, "hopeless").await.expect("skip");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let units = client.units(&batch, None).await.expect("units");
    assert_eq!(state_of(&units, "needs-input"), UnitState::Succeeded);
    assert_eq!(state_of(&units, "after-fix"), UnitState::Succeeded);
    assert_eq!(state_of(&units, "hopeless"), UnitState::Skipped);
    assert_eq!(state_of(&units, "after-skip"), UnitState::Succeeded);
    fleet.stop().await;
}

fn alive(pid_file: &Path) -> bool {
    let pid = std::fs::read_to_string(pid_file).unwrap_or_default();
    let pid = pid.trim();
    if pid.is_empty() {
        return false;
    }
    // A zombie has exited; only a running or sleeping process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_past_its_deadline_is_killed_with_its_whole_process_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let m = manifest(
        dir.path(),
        "batch: deadline\nretries: 0\ntimeout: 1s\nplaybook:\n  name: p\n  \
         run: 'sleep 300 & echo $! > grandchild.pid; wait'\nunits:\n  - id: slow\n",
    );
    let fleet = Fleet::start("deadline", 1, 1, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(30)).await;
    assert_eq!(summary.state, BatchState::Failed);
    let units = client.units(&batch, None).await.expect("units");
    let slow = &units[0];
    assert_eq!(slow.state, UnitState::NeedsReview);
    assert_eq!(slow.history.len(), 1);
    assert_eq!(
        slow.history[0].outcome,
        Some(regatta_proto::Outcome::TimedOut)
    );
    assert!(
        dir.path().join("grandchild.pid").exists(),
        "the session started its grandchild"
    );
    assert!(
        !alive(&dir.path().join("grandchild.pid")),
        "the grandchild sleep was killed with its group"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_running_sessions_and_starts_nothing_new() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut units = String::new();
    for i in 0..8 {
        units.push_str(&format!("  - id: s{i}\n"));
    }
    let m = manifest(
        dir.path(),
        &format!(
            "batch: cancel\nconcurrency: 2\nplaybook:\n  name: p\n  \
             run: 'echo $REGATTA_UNIT_ID >> started.txt; sleep 300 & echo $! > $REGATTA_UNIT_ID.pid; wait'\nunits:\n{units}"
        ),
    );
    let fleet = Fleet::start("cancel", 2, 2, "3s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    // Wait for two running sessions.
    let started = dir.path().join("started.txt");
    for _ in 0..200 {
        if std::fs::read_to_string(&started)
            .unwrap_or_default()
            .lines()
            .count()
            >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running: Vec<String> = std::fs::read_to_string(&started)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(running.len(), 2, "two sessions run under the cap of 2");
    client.control(&batch, "cancel").await.expect("cancel");
    let summary = client.batch(&batch).await.expect("summary");
    assert_eq!(summary.state, BatchState::Cancelled);
    // Running sessions die within a lease renewal period or so.
    for _ in 0..100 {
        if running
            .iter()
            .all(|u| !alive(&dir.path().join(format!("{u}.pid"))))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for unit in &running {
        assert!(
            !alive(&dir.path().join(format!("{unit}.pid"))),
            "{unit}'s session was killed"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = std::fs::read_to_string(&started)
        .unwrap_or_default()
        .lines()
        .count();
    assert_eq!(after, 2, "no unit started after the cancel");
    let units = client.units(&batch, None).await.expect("units");
    assert!(
        units.iter().all(|u| u.state == UnitState::Cancelled),
        "{units:?}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_new_starts_and_resume_continues() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "record.sh", RECORD);
    let timings = dir.path().join("timings.txt");
    let mut units = String::new();
    for i in 0..6 {
        units.push_str(&format!("  - id: p{i}\n"));
    }
    let m = manifest(
        dir.path(),
        &format!(
            "batch: pause\nconcurrency: 1\nplaybook:\n  name: p\n  run: ./record.sh\n  env: {{TIMINGS: {}, SLEEP: '0.5'}}\nunits:\n{units}",
            timings.display()
        ),
    );
    let fleet = Fleet::start("pause", 1, 2, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.control(&batch, "pause").await.expect("pause");
    // What was already published finishes; then nothing new starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let summary = client.batch(&batch).await.expect("summary");
        let live = summary.counts.get(&UnitState::Queued).copied().unwrap_or(0)
            + summary
                .counts
                .get(&UnitState::Running)
                .copied()
                .unwrap_or(0);
        if live == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions never drained: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = read_timings(&timings).len();
    assert!(during < 6, "the pause held some units back: {during}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        read_timings(&timings).len(),
        during,
        "nothing started while paused"
    );
    assert_eq!(
        client.batch(&batch).await.expect("summary").state,
        BatchState::Paused
    );
    client.control(&batch, "resume").await.expect("resume");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded);
    assert_eq!(read_timings(&timings).len(), 6);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_batches_run_side_by_side() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = tempfile::tempdir_in(dir.path()).expect("a");
    let b = tempfile::tempdir_in(dir.path()).expect("b");
    let yaml = "batch: side\nplaybook:\n  name: p\n  run: echo $REGATTA_UNIT_ID >> done.txt\nunits:\n  - id: one\n  - id: two\n    depends_on: [one]\n  - id: three\n    depends_on: [one]\n";
    let ma = manifest(a.path(), yaml);
    let mb = manifest(b.path(), yaml);
    let fleet = Fleet::start("side", 2, 2, "30s").await;
    let client = fleet.client();
    let (ba, bb) = tokio::join!(client.enqueue(&ma), client.enqueue(&mb));
    let (ba, bb) = (ba.expect("a"), bb.expect("b"));
    assert_ne!(ba, bb);
    for (batch, folder) in [(&ba, a.path()), (&bb, b.path())] {
        assert_eq!(
            fleet
                .wait_for_end(batch, Duration::from_secs(60))
                .await
                .state,
            BatchState::Succeeded
        );
        let done = std::fs::read_to_string(folder.join("done.txt")).expect("done");
        let mut lines: Vec<&str> = done.lines().collect();
        lines.sort();
        assert_eq!(lines, ["one", "three", "two"]);
    }
    assert_eq!(client.batches().await.expect("list").len(), 2);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_coordinator_resumes_without_re_running_succeeded_units() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "record.sh", RECORD);
    let timings = dir.path().join("timings.txt");
    let mut units = String::new();
    for i in 0..12 {
        units.push_str(&format!("  - id: r{i}\n"));
        if i > 0 {
            units.push_str(&format!("    depends_on: [r{}]\n", i - 1));
        }
    }
    let m = manifest(
        dir.path(),
        &format!(
            "batch: restart\nplaybook:\n  name: p\n  run: ./record.sh\n  env: {{TIMINGS: {}, SLEEP: '0.2'}}\nunits:\n{units}",
            timings.display()
        ),
    );
    let mut fleet = Fleet::start("restart", 2, 1, "30s").await;
    let batch = fleet.client().enqueue(&m).await.expect("enqueue");
    for _ in 0..100 {
        if read_timings(&timings).len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet.restart_coordinator().await;
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let text = std::fs::read_to_string(&timings).expect("timings");
    assert_eq!(
        text.lines().count(),
        12,
        "each unit ran exactly once:\n{text}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_with_sigterm_hands_its_session_back_uncounted() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "record.sh", RECORD);
    let timings = dir.path().join("timings.txt");
    let m = manifest(
        dir.path(),
        &format!(
            "batch: drain\nretries: 0\nplaybook:\n  name: p\n  run: 'echo $REGATTA_ATTEMPT >> attempts.txt; ./record.sh'\n  env: {{TIMINGS: {}, SLEEP: '8'}}\nunits:\n  - id: long\n",
            timings.display()
        ),
    );
    let mut fleet = Fleet::start("drain", 1, 1, "30s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    let attempts = dir.path().join("attempts.txt");
    for _ in 0..200 {
        if attempts.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(attempts.exists(), "the session started");
    // SIGTERM: the worker stops taking work, waits its 2 s grace, then
    // interrupts the session and reports it.
    let pid = nix::unistd::Pid::from_raw(fleet.workers[0].id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("sigterm");
    let status = tokio::task::spawn_blocking({
        let mut worker = std::mem::replace(
            &mut fleet.workers[0],
            std::process::Command::new("true").spawn().expect("true"),
        );
        move || worker.wait()
    })
    .await
    .expect("join")
    .expect("wait");
    assert!(status.success(), "the worker exited cleanly: {status:?}");
    fleet.add_worker(1);
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    // retries: 0, yet the unit succeeded: the interruption did not count.
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let units = client.units(&batch, None).await.expect("units");
    assert_eq!(units[0].history.len(), 2);
    assert_eq!(
        units[0].history[0].outcome,
        Some(regatta_proto::Outcome::Interrupted)
    );
    assert_eq!(units[0].failures, 0);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_never_see_the_fleets_secret_or_connection_urls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let m = manifest(
        dir.path(),
        "batch: secrets\nplaybook:\n  name: p\n  run: 'echo \"${REGATTA_SECRET:-none} ${REGATTA_AMQP_URL:-none} ${REGATTA_REDIS_URL:-none} $REGATTA_UNIT_ID\" > seen.txt'\nunits:\n  - id: curious\n",
    );
    let fleet = Fleet::start("secrets", 1, 1, "30s").await;
    let batch = fleet.client().enqueue(&m).await.expect("enqueue");
    assert_eq!(
        fleet
            .wait_for_end(&batch, Duration::from_secs(30))
            .await
            .state,
        BatchState::Succeeded
    );
    let seen = std::fs::read_to_string(dir.path().join("seen.txt")).expect("the session ran");
    assert_eq!(
        seen.trim(),
        "none none none curious",
        "the session saw: {seen}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resource_keeps_one_capacity_across_the_fleet() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = tempfile::tempdir_in(dir.path()).expect("a");
    let b = tempfile::tempdir_in(dir.path()).expect("b");
    let first = manifest(a.path(), "batch: one\nresources: {db: 2}\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: x\n    uses: [db]\n");
    let second = manifest(b.path(), "batch: two\nresources: {db: 5}\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: y\n    uses: [db]\n");
    let fleet = Fleet::start("capacity", 1, 1, "30s").await;
    let client = fleet.client();
    client
        .enqueue(&first)
        .await
        .expect("the first batch sets db's capacity");
    let refused = client
        .enqueue(&second)
        .await
        .expect_err("another capacity for db");
    let message = refused.to_string();
    assert!(
        message.contains("409") && message.contains("'db' has capacity 2"),
        "{message}"
    );
    assert_eq!(
        client.batches().await.expect("list").len(),
        1,
        "nothing of the refused batch was accepted"
    );
    fleet.stop().await;
}
