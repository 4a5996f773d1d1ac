//! Faults of a worker's own disks are not the unit's: a session that cannot
//! store its evidence, or write its log, never succeeds, is handed back
//! without spending a retry, and the worker stops taking work (and says
//! so in Redis) until its disks work again. Real coordinator and workers,
//! real RabbitMQ and Redis; the full disks are real tmpfs mounts (root).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{Attempt, UnitState};
use regatta_coordinator::service::UnitView;
use regatta_proto::Outcome;
use regatta_tests::{amqp_url, binary, redis, redis_url, write_file, Fleet};

/// Writes its declared output (`SIZE` bytes), then logs `LOG_BYTES` bytes,
/// then notes that it ran to its end.
const WORK: &str = r#"#!/bin/sh
set -eu
mkdir -p out
head -c "${SIZE:-64}" /dev/zero | tr '\0' 'x' >"out/$REGATTA_UNIT_ID.txt"
head -c "${LOG_BYTES:-16}" /dev/zero | tr '\0' 'y'
echo "$REGATTA_SESSION_ID" >>ran-to-the-end.txt
"#;

fn manifest(dir: &Path, units: usize, env: &str) -> Manifest {
    write_file(dir, "work.sh", WORK);
    let mut yaml = format!(
        "batch: faults\nretries: 0\nplaybook:\n  name: faulty\n  run: ./work.sh\n  env: {env}\nunits:\n"
    );
    for n in 0..units {
        yaml.push_str(&format!("  - id: u{n}\n    outputs: [out/u{n}.txt]\n"));
    }
    write_file(dir, "manifest.yaml", &yaml);
    Manifest::load(&dir.join("manifest.yaml")).unwrap_or_else(|e| panic!("valid manifest: {e}"))
}

/// A tmpfs of a given size, unmounted when dropped: a disk that fills up.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {}: these tests need root (they fill a real disk)",
            path.display()
        );
        SmallDisk {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A worker started by the test with its own work dir and artifact store;
/// its log goes to a file, printed if the test fails.
struct Worker {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Worker {
    fn start(fleet: &Fleet, name: &str, work_dir: &Path, store: &Path, logs: &Path) -> Worker {
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("worker log");
        let child = std::process::Command::new(binary("regatta-worker"))
            .env("REGATTA_NAMESPACE", &fleet.namespace)
            .env("REGATTA_SECRET", &fleet.secret)
            .env("REGATTA_AMQP_URL", amqp_url())
            .env("REGATTA_REDIS_URL", redis_url())
            .env("REGATTA_LOG", "info")
            .args(["--slots", "2", "--lease-ttl", "10s", "--grace", "2s"])
            .arg("--name")
            .arg(name)
            .arg("--work-dir")
            .arg(work_dir)
            .arg("--artifact-dir")
            .arg(store)
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start regatta-worker");
        Worker {
            name: name.to_owned(),
            child,
            log,
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("----- log of worker {} -----\n{log}", self.name);
        }
    }
}

/// The health record a worker publishes, if it is live.
async fn health(fleet: &Fleet, worker: &str) -> Option<serde_json::Value> {
    let mut con = redis().await;
    let key = regatta_proto::Keys::new(&fleet.namespace)
        .expect("namespace")
        .worker(worker);
    let json: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut con)
        .await
        .expect("read a worker's health");
    json.map(|j| serde_json::from_str(&j).expect("health record is JSON"))
}

/// Polls until the worker has published `healthy: false`; returns the record.
async fn wait_unhealthy(fleet: &Fleet, worker: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(record) = health(fleet, worker).await {
            if record["healthy"] == false {
                return record;
            }
        }
        assert!(
            Instant::now() < deadline,
            "worker {worker} never reported itself unhealthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the batch's units until one attempt of `worker` has ended.
async fn wait_for_attempt_of(
    fleet: &Fleet,
    batch: &str,
    worker: &str,
    timeout: Duration,
) -> Attempt {
    let deadline = Instant::now() + timeout;
    loop {
        let units = fleet.client().units(batch, None).await.expect("units");
        if let Some(attempt) = attempts_of(&units, worker).into_iter().next() {
            return attempt;
        }
        assert!(
            Instant::now() < deadline,
            "no session of {worker} ended within {timeout:?}: {units:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every ended attempt that `worker` ran.
fn attempts_of(units: &[UnitView], worker: &str) -> Vec<Attempt> {
    units
        .iter()
        .flat_map(|u| u.history.iter())
        .filter(|a| a.worker.as_deref() == Some(worker) && a.outcome.is_some())
        .cloned()
        .collect()
}

/// The faulty worker's attempts were all handed back uncounted, naming the fault.
fn assert_handed_back(attempts: &[Attempt], fault: &str) {
    assert!(!attempts.is_empty(), "the faulty worker ran nothing");
    for attempt in attempts {
        let reason = attempt.reason.as_deref().unwrap_or_default();
        assert_eq!(
            attempt.outcome,
            Some(Outcome::Interrupted),
            "a worker fault is not the unit's: {attempt:?}"
        );
        assert!(
            reason.starts_with("worker fault: ") && reason.contains(fault),
            "the reason names the fault ({fault}): {reason}"
        );
        assert!(attempt.evidence.is_none() || attempt.outcome != Some(Outcome::Succeeded));
    }
}

/// Every unit succeeded with an evidence pack in the fleet's store, and no
/// retry was spent.
fn assert_all_succeeded_with_evidence(units: &[UnitView], store: &Path) {
    let store = std::fs::canonicalize(store).expect("the healthy store exists");
    for unit in units {
        assert_eq!(unit.state, UnitState::Succeeded, "{unit:?}");
        assert_eq!(unit.failures, 0, "a retry was spent: {unit:?}");
        let last = unit.history.last().expect("an attempt");
        assert_eq!(last.outcome, Some(Outcome::Succeeded), "{unit:?}");
        let evidence = last.evidence.as_ref().expect("the success has a pack");
        assert!(
            Path::new(&evidence.path).starts_with(&store) && Path::new(&evidence.path).is_file(),
            "{evidence:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_store_cannot_be_written_hands_its_units_back_and_stops_taking_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let m = manifest(dir.path(), 5, "{}");
    let fleet = Fleet::start("wf-blocked", 0, 1, "10s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    // The faulty worker's store passes its disk probe, but a file sits where
    // the batch's folder must go: every session's evidence fails to store.
    let faulty_store = dir.path().join("faulty-store");
    std::fs::create_dir_all(&faulty_store).expect("store");
    std::fs::write(faulty_store.join(&batch), b"in the way").expect("plant");
    let faulty = Worker::start(
        &fleet,
        "faulty",
        &dir.path().join("faulty-work"),
        &faulty_store,
        dir.path(),
    );
    let started = Instant::now();
    let first = wait_for_attempt_of(&fleet, &batch, "faulty", Duration::from_secs(60)).await;
    let record = wait_unhealthy(&fleet, "faulty", Duration::from_secs(30)).await;
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cannot store the session's evidence"),
        "{record}"
    );
    println!(
        "first hand-back after {:?}: {:?}; health: {record}",
        started.elapsed(),
        first.reason
    );
    // A healthy worker joins, on the fleet's store, and does the work.
    let healthy = Worker::start(
        &fleet,
        "healthy",
        &dir.path().join("healthy-work"),
        &fleet.artifact_store(),
        dir.path(),
    );
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(120)).await;
    let units = client.units(&batch, None).await.expect("units");
    assert!(summary.state.is_terminal(), "{summary:?}");
    assert_all_succeeded_with_evidence(&units, &fleet.artifact_store());
    assert_handed_back(
        &attempts_of(&units, "faulty"),
        "cannot store the session's evidence",
    );
    drop((faulty, healthy));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_artifact_store_never_lets_a_session_succeed_there() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The output (2 MiB) does not fit the faulty store (512 KiB).
    let m = manifest(dir.path(), 1, "{SIZE: '2097152'}");
    let disk = SmallDisk::mount(&dir.path().join("small-store"), "512k");
    let fleet = Fleet::start("wf-full", 0, 1, "10s").await;
    let client = fleet.client();
    let faulty = Worker::start(
        &fleet,
        "faulty",
        &dir.path().join("faulty-work"),
        &disk.path,
        dir.path(),
    );
    let batch = client.enqueue(&m).await.expect("enqueue");
    let first = wait_for_attempt_of(&fleet, &batch, "faulty", Duration::from_secs(60)).await;
    assert_handed_back(std::slice::from_ref(&first), "No space left on device");
    let record = wait_unhealthy(&fleet, "faulty", Duration::from_secs(30)).await;
    println!("handed back: {:?}; health: {record}", first.reason);
    // The disk stays full, so the worker stays out, and says so.
    let status = tokio::process::Command::new(binary("regatta"))
        .args(["status", &batch])
        .env("REGATTA_API", &fleet.api)
        .env_remove("REGATTA_API_TOKEN")
        .output()
        .await
        .expect("run regatta status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("workers: 1 live, 1 unhealthy")
            && status.contains("worker faulty takes no work: worker fault: ")
            && status.contains("No space left on device"),
        "{status}"
    );
    let metrics = reqwest::get(format!("{}/metrics", fleet.api))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("regatta_workers{worker=\"faulty\",healthy=\"false\"} 1"),
        "{metrics}"
    );
    let unit = &client.units(&batch, None).await.expect("units")[0];
    assert_ne!(unit.state, UnitState::Succeeded, "{unit:?}");
    assert_ne!(unit.state, UnitState::NeedsReview, "{unit:?}");
    assert_eq!(unit.failures, 0, "{unit:?}");

    let healthy = Worker::start(
        &fleet,
        "healthy",
        &dir.path().join("healthy-work"),
        &fleet.artifact_store(),
        dir.path(),
    );
    fleet.wait_for_end(&batch, Duration::from_secs(120)).await;
    let units = client.units(&batch, None).await.expect("units");
    assert_all_succeeded_with_evidence(&units, &fleet.artifact_store());
    assert_handed_back(&attempts_of(&units, "faulty"), "No space left on device");
    // Room made on its disk, the faulty worker takes work again.
    std::fs::remove_dir_all(disk.path.join(&batch)).expect("make room");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let record = health(&fleet, "faulty").await;
        if record.as_ref().is_some_and(|r| r["healthy"] == true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never came back: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((faulty, healthy, disk));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chatty_session_on_a_full_store_is_not_killed_by_sigpipe() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 4 MiB of log on a 1 MiB store, where a log past what is kept in
    // memory spills (the work dir holds no log).
    let m = manifest(dir.path(), 1, "{LOG_BYTES: '4194304'}");
    let disk = SmallDisk::mount(&dir.path().join("small-store"), "1m");
    let fleet = Fleet::start("wf-log", 0, 1, "10s").await;
    let client = fleet.client();
    let faulty = Worker::start(
        &fleet,
        "faulty",
        &dir.path().join("faulty-work"),
        &disk.path,
        dir.path(),
    );
    let batch = client.enqueue(&m).await.expect("enqueue");
    let first = wait_for_attempt_of(&fleet, &batch, "faulty", Duration::from_secs(60)).await;
    // The session wrote on to its end: its output was drained, not cut off.
    let ran = std::fs::read_to_string(dir.path().join("ran-to-the-end.txt")).unwrap_or_default();
    assert!(
        ran.lines().any(|line| line == first.session_id),
        "the session did not run to its end (killed by SIGPIPE?): {first:?}"
    );
    assert_handed_back(std::slice::from_ref(&first), "cannot write the session log");
    let unit = &client.units(&batch, None).await.expect("units")[0];
    assert_eq!(unit.failures, 0, "{unit:?}");
    wait_unhealthy(&fleet, "faulty", Duration::from_secs(30)).await;
    drop((faulty, disk));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_cannot_create_session_folders_spends_no_retry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let m = manifest(dir.path(), 5, "{}");
    let fleet = Fleet::start("wf-workdir", 0, 1, "10s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    // The work dir passes its probe, but a file sits where the batch's
    // session folders must go (as a broken or read-only disk would refuse them).
    let work = dir.path().join("faulty-work");
    std::fs::create_dir_all(&work).expect("work dir");
    std::fs::write(work.join(&batch), b"in the way").expect("plant");
    let started = Instant::now();
    let faulty = Worker::start(
        &fleet,
        "faulty",
        &work,
        &dir.path().join("faulty-store"),
        dir.path(),
    );
    wait_for_attempt_of(&fleet, &batch, "faulty", Duration::from_secs(60)).await;
    wait_unhealthy(&fleet, "faulty", Duration::from_secs(30)).await;
    // Before: 5 units needs_review within 0.2 s. Now none is, and none spent a retry.
    let units = client.units(&batch, None).await.expect("units");
    println!(
        "after {:?}: {:?}",
        started.elapsed(),
        units
            .iter()
            .map(|u| (u.state, u.failures))
            .collect::<Vec<_>>()
    );
    for unit in &units {
        assert_ne!(unit.state, UnitState::NeedsReview, "{unit:?}");
        assert_eq!(unit.failures, 0, "{unit:?}");
    }
    let healthy = Worker::start(
        &fleet,
        "healthy",
        &dir.path().join("healthy-work"),
        &fleet.artifact_store(),
        dir.path(),
    );
    fleet.wait_for_end(&batch, Duration::from_secs(120)).await;
    let units = client.units(&batch, None).await.expect("units");
    assert_all_succeeded_with_evidence(&units, &fleet.artifact_store());
    assert_handed_back(
        &attempts_of(&units, "faulty"),
        "cannot create the session folder",
    );
    drop((faulty, healthy));
    fleet.stop().await;
}

/// A unit whose task is too large for a process's environment (the kernel
/// refuses one variable over 128 KiB with E2BIG) would fail on every worker
/// alike: it is the unit's fault. It fails with that reason, and no worker
/// is taken out of service by it (before: each worker it reached declared
/// its own disks broken and stopped taking work, and the unit bounced
/// between them for ever).
#[tokio::test(flavor = "multi_thread")]
async fn a_unit_too_large_to_start_fails_without_taking_a_worker_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let huge = "x".repeat(200_000);
    write_file(
        dir.path(),
        "manifest.yaml",
        &format!(
            "batch: e2big\nretries: 0\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: huge\n    task: {huge}\n  - id: fine\n"
        ),
    );
    let m = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid manifest");
    let fleet = Fleet::start("wf-e2big", 1, 1, "10s").await;
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    let units = client.units(&batch, None).await.expect("units");
    let state = |id: &str| units.iter().find(|u| u.id == id).map(|u| u.state);
    assert_eq!(state("fine"), Some(UnitState::Succeeded), "{units:?}");
    assert_eq!(state("huge"), Some(UnitState::NeedsReview), "{units:?}");
    let huge_unit = units.iter().find(|u| u.id == "huge").expect("huge");
    let reason = huge_unit.reason.clone().unwrap_or_default();
    assert!(reason.contains("too large"), "{reason}");
    let workers = client.workers().await.expect("workers");
    assert!(
        workers.iter().all(|w| w.healthy),
        "a unit's fault took a worker out: {workers:?}"
    );
    fleet.stop().await;
}

/// The live children of `pid` whose command line holds `word`.
fn children_running(pid: u32, word: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            parent == Some(pid) && String::from_utf8_lossy(&cmdline).contains(word)
        })
        .collect()
}

#[tokio::test]
async fn a_killed_session_supervisor_hands_its_sessions_back_without_spending_a_retry() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(
        dir.path(),
        "manifest.yaml",
        "batch: supervisor-kill\nretries: 0\nplaybook:\n  name: p\n  run: sleep 3\nunits:\n  - id: a\n  - id: b\n  - id: c\n  - id: d\n",
    );
    let m = Manifest::load(&dir.path().join("manifest.yaml")).expect("valid manifest");
    let fleet = Fleet::start("wf-supervisor", 1, 2, "10s").await;
    let worker = fleet.workers[0].id();
    // The worker starts its session supervisor as it starts up.
    let started = Instant::now();
    let supervisors = loop {
        let found = children_running(worker, "supervise");
        if !found.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        supervisors.len(),
        1,
        "the worker runs one session supervisor: {supervisors:?}"
    );
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    // Two sessions run (2 slots), each under a leader the supervisor forked.
    let started = Instant::now();
    while children_running(supervisors[0], "supervise").len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no two sessions ran within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-9", &supervisors[0].to_string()])
        .status();
    fleet.wait_for_end(&batch, Duration::from_secs(90)).await;
    let units = client.units(&batch, None).await.expect("units");
    // retries: 0, so a counted failure would leave a unit in review: an
    // interrupted attempt is run again without spending one.
    assert!(
        units.iter().all(|u| u.state == UnitState::Succeeded),
        "every unit succeeds: {units:?}"
    );
    let interrupted: Vec<&Attempt> = units
        .iter()
        .flat_map(|u| u.history.iter())
        .filter(|a| a.outcome != Some(Outcome::Succeeded))
        .collect();
    assert_eq!(
        interrupted.len(),
        2,
        "the two running sessions were interrupted, no other: {units:?}"
    );
    assert!(
        interrupted
            .iter()
            .all(|a| a.outcome == Some(Outcome::Interrupted)
                && a.reason.as_deref().unwrap_or("").contains("supervisor")),
        "the reason says why: {interrupted:?}"
    );
    // The worker still runs sessions (its leaders exec'd now), and is healthy.
    let workers = client.workers().await.expect("workers");
    assert!(workers.iter().all(|w| w.healthy), "{workers:?}");
    fleet.stop().await;
}
