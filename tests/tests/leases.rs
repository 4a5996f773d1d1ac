//! Leases end to end: caps hold under load (checked against PostgreSQL's
//! own view of its connections), dead workers and lost leases cost a re-run
//! and nothing else, no head-of-line blocking, calibration, no leaked slots.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{BatchState, UnitState};
use regatta_proto::{Keys, Outcome};
use regatta_tests::{postgres, read_timings, redis, write_file, Fleet};

/// Records the unit's start and end (ms); holds a PostgreSQL connection
/// tagged with the unit when `USE_PG` is set, otherwise sleeps.
const SESSION: &str = r#"#!/bin/sh
start=$(date +%s%3N)
echo $$ > "$REGATTA_UNIT_ID.pid"
if [ -n "${USE_PG:-}" ]; then
  psql "host=127.0.0.1 user=postgres dbname=postgres application_name=$NS-$REGATTA_UNIT_ID" \
    -qAtc "select pg_sleep(${HOLD:-0.3})" >/dev/null
else
  sleep "${HOLD:-0.2}"
fi
echo "$REGATTA_UNIT_ID $start $(date +%s%3N)" >> timings.txt
"#;

fn load(dir: &Path, yaml: &str) -> Manifest {
    write_file(dir, "session.sh", SESSION);
    write_file(dir, "manifest.yaml", yaml);
    Manifest::load(&dir.join("manifest.yaml"))
        .unwrap_or_else(|e| panic!("test manifest is valid: {e}"))
}

/// The largest number of intervals open at once.
fn max_overlap<'a>(intervals: impl Iterator<Item = &'a (i64, i64)>) -> usize {
    let mut events: Vec<(i64, i32)> = Vec::new();
    for &(start, end) in intervals {
        events.push((start, 1));
        events.push((end, -1));
    }
    // At equal times, an end comes before a start.
    events.sort();
    let (mut open, mut max) = (0i32, 0i32);
    for (_, delta) in events {
        open += delta;
        max = max.max(open);
    }
    max as usize
}

async fn zcard(key: &str) -> usize {
    let mut con = redis().await;
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("zcard")
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_hold_under_load() {
    let fleet = Fleet::start("caps", 4, 4, "5s").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut units = String::new();
    for i in 0..60 {
        units.push_str(&format!("  - id: u{i:02}\n"));
        if i < 40 {
            units.push_str("    uses: [pg]\n    env: {USE_PG: '1'}\n");
        }
        if i % 12 == 0 {
            units.push_str("    touches: [schema/shared.sql]\n");
        }
    }
    let manifest = load(
        dir.path(),
        &format!(
            "batch: caps\nconcurrency: 6\nresources: {{pg: 3}}\nplaybook:\n  name: p\n  run: ./session.sh\n  env: {{NS: {}}}\nunits:\n{units}",
            fleet.namespace
        ),
    );

    // Sample PostgreSQL's own view of the connections tagged by our units.
    let pg = postgres().await;
    let stop = Arc::new(AtomicBool::new(false));
    let max_pg = Arc::new(AtomicI64::new(0));
    let pattern = format!("{}-%", fleet.namespace);
    let monitor = {
        let (stop, max_pg) = (stop.clone(), max_pg.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let row = pg
                    .query_one(
                        "select count(*) from pg_stat_activity where application_name like $1 and state = 'active'",
                        &[&pattern],
                    )
                    .await
                    .expect("pg_stat_activity");
                let n: i64 = row.get(0);
                max_pg.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(120)).await;
    stop.store(true, Ordering::SeqCst);
    monitor.await.expect("monitor");
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");

    let timings = read_timings(&dir.path().join("timings.txt"));
    assert_eq!(timings.len(), 60);
    let max_pg = max_pg.load(Ordering::SeqCst);
    assert!(max_pg >= 1, "the monitor saw the units' connections");
    assert!(
        max_pg <= 3,
        "at most 3 connections to PostgreSQL at once, saw {max_pg}"
    );
    let pg_units: Vec<_> = (0..40).map(|i| timings[&format!("u{i:02}")]).collect();
    assert!(
        max_overlap(pg_units.iter()) <= 3,
        "pg holders overlap beyond 3"
    );
    assert!(
        max_overlap(timings.values()) <= 6,
        "more than 6 sessions at once"
    );
    let shared: Vec<_> = (0..60)
        .step_by(12)
        .map(|i| timings[&format!("u{i:02}")])
        .collect();
    assert_eq!(
        max_overlap(shared.iter()),
        1,
        "two holders of the shared file's mutex at once"
    );
    assert_eq!(
        zcard(&Keys::new(&fleet.namespace).expect("keys").leases()).await,
        0,
        "every lease released"
    );
    fleet.stop().await;
}

fn alive(pid_file: &Path) -> bool {
    let pid = std::fs::read_to_string(pid_file).unwrap_or_default();
    let pid = pid.trim();
    !pid.is_empty()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.contains(") Z "))
            .unwrap_or(false)
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_costs_a_re_run_and_gives_its_slots_back() {
    let mut fleet = Fleet::start("kill9", 2, 1, "3s").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = load(
        dir.path(),
        "batch: kill9\nconcurrency: 1\nretries: 1\nplaybook:\n  name: p\n  run: ./session.sh\n  env: {HOLD: '3'}\nunits:\n  - id: long\n  - id: after\n    depends_on: [long]\n    env: {HOLD: '0.1'}\n",
    );
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");
    let pid_file = dir.path().join("long.pid");
    wait_until("the session to start", Duration::from_secs(20), || {
        alive(&pid_file)
    })
    .await;
    let leases = client.leases().await.expect("leases");
    let holder = leases
        .iter()
        .find(|l| l.unit_id == "long")
        .expect("a lease for long")
        .worker
        .clone();
    let index: usize = holder
        .trim_start_matches('w')
        .parse()
        .expect("worker name w<n>");
    let first_pid = std::fs::read_to_string(&pid_file).expect("pid");
    fleet.kill_worker(index);
    let killed_at = Instant::now();
    // The session dies with its worker.
    let first = dir.path().join("first.pid");
    std::fs::write(&first, &first_pid).expect("save pid");
    wait_until(
        "the orphaned session to die",
        Duration::from_secs(5),
        || !alive(&first),
    )
    .await;
    // The unit runs again on the other worker within TTL + 5 s.
    let mut rerun_after = None;
    while killed_at.elapsed() < Duration::from_secs(8) {
        let units = client.units(&batch, None).await.expect("units");
        let long = units.iter().find(|u| u.id == "long").expect("long");
        if long.history.len() == 2 && long.history[1].started_at_ms.is_some() {
            rerun_after = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rerun_after = rerun_after.expect("the unit re-ran within TTL + 5 s");
    assert!(
        rerun_after <= Duration::from_secs(8),
        "re-run within TTL + 5 s: {rerun_after:?}"
    );
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(30)).await;
    assert_eq!(summary.state, BatchState::Succeeded);
    let units = client.units(&batch, None).await.expect("units");
    let long = units.iter().find(|u| u.id == "long").expect("long");
    assert_eq!(
        long.history[0].outcome,
        Some(Outcome::Lost),
        "{:?}",
        long.history[0]
    );
    assert!(long.history[0]
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("lost"));
    assert_eq!(long.history[1].outcome, Some(Outcome::Succeeded));
    let keys = Keys::new(&fleet.namespace).expect("keys");
    assert_eq!(
        zcard(&keys.batch_semaphore(&batch)).await,
        0,
        "the cap's count is back to zero"
    );
    assert_eq!(zcard(&keys.leases()).await, 0);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_loses_its_lease_kills_its_session_before_any_re_run() {
    let fleet = Fleet::start("lost", 2, 1, "3s").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = load(
        dir.path(),
        "batch: lost\nretries: 1\nplaybook:\n  name: p\n  run: 'echo $$ >> starts.txt; exec ./session.sh'\n  env: {HOLD: '6'}\nunits:\n  - id: victim\n",
    );
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");
    let pid_file = dir.path().join("victim.pid");
    wait_until("the session to start", Duration::from_secs(20), || {
        alive(&pid_file)
    })
    .await;
    let first_pid = std::fs::read_to_string(&pid_file).expect("pid");
    let first = dir.path().join("first.pid");
    std::fs::write(&first, &first_pid).expect("save pid");
    // Delete the lease behind the worker's back.
    let leases = client.leases().await.expect("leases");
    let session = leases
        .iter()
        .find(|l| l.unit_id == "victim")
        .expect("lease")
        .session_id
        .clone();
    let keys = Keys::new(&fleet.namespace).expect("keys");
    let mut con = redis().await;
    let _: () = redis::cmd("DEL")
        .arg(keys.lease(&session))
        .query_async(&mut con)
        .await
        .expect("del");
    let deleted_at = Instant::now();
    // The worker kills its session within one TTL.
    wait_until("the session to be killed", Duration::from_secs(3), || {
        !alive(&first)
    })
    .await;
    assert!(deleted_at.elapsed() <= Duration::from_secs(3));
    // A re-run starts only after the first session died.
    let starts = dir.path().join("starts.txt");
    wait_until("the re-run", Duration::from_secs(15), || {
        std::fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .count()
            >= 2
    })
    .await;
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(30)).await;
    assert_eq!(summary.state, BatchState::Succeeded);
    let units = client.units(&batch, None).await.expect("units");
    let history = &units[0].history;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].outcome, Some(Outcome::Lost));
    let first_end = history[0].ended_at_ms.expect("first ended");
    let second_start = history[1].started_at_ms.expect("second started");
    assert!(
        first_end <= second_start,
        "sessions overlapped: {first_end} > {second_start}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn units_that_need_no_saturated_resource_keep_starting() {
    let fleet = Fleet::start("hol", 2, 3, "5s").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut units = String::new();
    for i in 0..3 {
        units.push_str(&format!(
            "  - id: slow{i}\n    uses: [pg]\n    env: {{HOLD: '3'}}\n"
        ));
    }
    for i in 0..6 {
        units.push_str(&format!("  - id: fast{i}\n"));
    }
    let manifest = load(
        dir.path(),
        &format!("batch: hol\nconcurrency: 10\nresources: {{pg: 1}}\nplaybook:\n  name: p\n  run: ./session.sh\nunits:\n{units}"),
    );
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    assert_eq!(
        fleet
            .wait_for_end(&batch, Duration::from_secs(60))
            .await
            .state,
        BatchState::Succeeded
    );
    let timings = read_timings(&dir.path().join("timings.txt"));
    let first_slow_end = (0..3)
        .map(|i| timings[&format!("slow{i}")].1)
        .min()
        .expect("slow");
    for i in 0..6 {
        let (start, _) = timings[&format!("fast{i}")];
        assert!(
            start < first_slow_end,
            "fast{i} waited behind the saturated resource"
        );
    }
    let slow: Vec<_> = (0..3).map(|i| timings[&format!("slow{i}")]).collect();
    assert_eq!(
        max_overlap(slow.iter()),
        1,
        "pg: 1 held by one unit at a time"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn calibration_waits_for_approval_or_approves_itself() {
    let fleet = Fleet::start("calib", 2, 2, "5s").await;
    let client = fleet.client();
    let units: String = (0..8).map(|i| format!("  - id: c{i}\n")).collect();

    let manual = tempfile::tempdir().expect("temp dir");
    let m = load(
        manual.path(),
        &format!("batch: calib\ncalibration: 3\nplaybook:\n  name: p\n  run: ./session.sh\nunits:\n{units}"),
    );
    let batch = client.enqueue(&m).await.expect("enqueue");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let summary = client.batch(&batch).await.expect("summary");
        if summary.state == BatchState::AwaitingApproval {
            let calibration = summary.calibration.expect("a calibration summary");
            assert_eq!(
                (calibration.units, calibration.succeeded, calibration.failed),
                (3, 3, 0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never awaited approval: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        read_timings(&manual.path().join("timings.txt")).len(),
        3,
        "only the calibration units ran"
    );
    client.control(&batch, "approve").await.expect("approve");
    assert_eq!(
        fleet
            .wait_for_end(&batch, Duration::from_secs(30))
            .await
            .state,
        BatchState::Succeeded
    );
    assert_eq!(read_timings(&manual.path().join("timings.txt")).len(), 8);

    let auto = tempfile::tempdir().expect("temp dir");
    let m = load(
        auto.path(),
        &format!("batch: calib-auto\ncalibration: 2\ncalibration_auto: 0.9\nplaybook:\n  name: p\n  run: ./session.sh\nunits:\n{units}"),
    );
    let batch = client.enqueue(&m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(30)).await;
    assert_eq!(
        summary.state,
        BatchState::Succeeded,
        "approved itself: {summary:?}"
    );
    assert_eq!(read_timings(&auto.path().join("timings.txt")).len(), 8);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_batch_gives_every_slot_back() {
    let fleet = Fleet::start("leak", 2, 2, "3s").await;
    let client = fleet.client();
    let keys = Keys::new(&fleet.namespace).expect("keys");
    let units: String = (0..4)
        .map(|i| format!("  - id: h{i}\n    uses: [pg]\n"))
        .collect();

    let first = tempfile::tempdir().expect("temp dir");
    let m = load(
        first.path(),
        &format!("batch: hog\nresources: {{pg: 2}}\nplaybook:\n  name: p\n  run: ./session.sh\n  env: {{HOLD: '60'}}\nunits:\n{units}"),
    );
    let batch = client.enqueue(&m).await.expect("enqueue");
    let pids = [first.path().join("h0.pid"), first.path().join("h1.pid")];
    wait_until("two pg holders", Duration::from_secs(20), || {
        pids.iter().all(|p| alive(p))
    })
    .await;
    assert_eq!(zcard(&keys.resource_semaphore("pg")).await, 2);
    client.control(&batch, "cancel").await.expect("cancel");
    wait_until("the sessions to die", Duration::from_secs(5), || {
        pids.iter().all(|p| !alive(p))
    })
    .await;
    let died_at = Instant::now();
    loop {
        let held = zcard(&keys.resource_semaphore("pg")).await
            + zcard(&keys.batch_semaphore(&batch)).await
            + zcard(&keys.leases()).await;
        if held == 0 {
            break;
        }
        assert!(
            died_at.elapsed() < Duration::from_secs(1),
            "{held} slots still held 1 s after the sessions ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let second = tempfile::tempdir().expect("temp dir");
    let m = load(
        second.path(),
        &format!("batch: after\nresources: {{pg: 2}}\nplaybook:\n  name: p\n  run: ./session.sh\n  env: {{HOLD: '0.8'}}\nunits:\n{units}"),
    );
    let batch = client.enqueue(&m).await.expect("enqueue");
    assert_eq!(
        fleet
            .wait_for_end(&batch, Duration::from_secs(30))
            .await
            .state,
        BatchState::Succeeded
    );
    let timings: BTreeMap<_, _> = read_timings(&second.path().join("timings.txt"));
    assert_eq!(
        max_overlap(timings.values()),
        2,
        "the second batch used pg at full capacity"
    );
    let units = client.units(&batch, None).await.expect("units");
    assert!(units.iter().all(|u| u.state == UnitState::Succeeded));
    fleet.stop().await;
}

/// A relay to Redis whose replies can be held back (while `stalled`),
/// while requests still reach Redis: a slow Redis as the worker sees it.
struct StallingRelay {
    port: u16,
    stalled: Arc<AtomicBool>,
}

impl StallingRelay {
    async fn start() -> StallingRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let stalled = Arc::new(AtomicBool::new(false));
        let stall = stalled.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let stall = stall.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(outbound) = tokio::net::TcpStream::connect("127.0.0.1:6379").await
                    else {
                        return;
                    };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut redis_read, mut redis_write) = outbound.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut redis_write).await;
                    });
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n) = redis_read.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        while stall.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        StallingRelay { port, stalled }
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_whose_reply_was_slow_gets_its_own_lease_back_and_runs_once() {
    let relay = StallingRelay::start().await;
    let mut fleet = Fleet::start("slow-claim", 0, 1, "5s").await;
    let redis_url = format!("redis://127.0.0.1:{}/", relay.port);
    fleet.add_worker_with_env(1, &[("REGATTA_REDIS_URL", &redis_url)]);
    // The worker runs the script by its hash: have Redis know it, so that
    // the stalled try really takes the lease (not a NOSCRIPT answer).
    let mut con = redis().await;
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(regatta_proto::scripts::ACQUIRE)
        .query_async(&mut con)
        .await
        .expect("load the lease script");
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "manifest.yaml",
        "batch: slow-claim\nplaybook:\n  name: p\n  run: echo \"$REGATTA_SESSION_ID\" >> ran.txt\nunits:\n  - id: once\n",
    );
    let manifest = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid manifest");
    // Let the worker connect and go idle, then hold every Redis reply back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.stall(true);
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");
    let keys = Keys::new(&fleet.namespace).expect("keys");
    let deadline = Instant::now() + Duration::from_secs(30);
    while zcard(&keys.leases()).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker took no lease within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Longer than the worker's 500 ms reply timeout, twice over: the first
    // try and at least one retry time out after Redis granted the lease.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.stall(false);

    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let units = client.units(&batch, None).await.expect("units");
    let once = units.iter().find(|u| u.id == "once").expect("unit once");
    assert_eq!(
        once.history.len(),
        1,
        "the first claim ran; no lost attempt and re-run: {:#?}",
        once.history
    );
    assert_eq!(once.history[0].outcome, Some(Outcome::Succeeded));
    let ran = std::fs::read_to_string(dir.path().join("ran.txt")).unwrap_or_default();
    assert_eq!(ran.lines().count(), 1, "the command ran once: {ran:?}");
    fleet.stop().await;
}
