//! Chaos: faults injected for real into a fleet of real processes, each
//! scenario judged by the invariant checker (`regatta_tests::invariants`)
//! against the units' own recorded times and the coordinator's history.
//!
//! Scenarios (issue 8; the broker, Redis and network ones are elsewhere,
//! since they stop shared services):
//!
//! - the coordinator is killed with SIGKILL at seeded random moments of a
//!   200-unit DAG batch with resources and touched files;
//! - a worker is stopped (SIGSTOP) mid-session for longer than its lease TTL,
//!   then continued (SIGCONT);
//! - real result events are delivered again, duplicated and out of order;
//! - poison orders (garbage, a wrong signature, a future format version, an
//!   order for a batch nobody knows) land beside a running batch;
//! - bounded random mutation of manifests and sealed messages never panics.
//!
//! Every timing is short (leases of 3 s, sessions of tens of ms) so that the
//! whole file stays within a few minutes on two cores.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use regatta_broker as broker;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{Attempt, BatchState, UnitState};
use regatta_coordinator::service::UnitView;
use regatta_proto::{
    open, seal, EventKind, LeaseDemand, Names, Outcome, SessionEvent, Signer, WorkOrder,
};
use regatta_tests::invariants::{
    check, now_ms, process_alive, write_session_script, Evidence, InvariantReport, Recording,
};
use regatta_tests::{rabbitmq, write_file, Fleet};

/// A small deterministic generator (SplitMix64), so that a failing run can
/// be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn load(dir: &Path, yaml: &str) -> Manifest {
    write_session_script(dir);
    write_file(dir, "manifest.yaml", yaml);
    Manifest::load(&dir.join("manifest.yaml"))
        .unwrap_or_else(|e| panic!("test manifest is valid: {e}\n{yaml}"))
}

/// Runs the checker on a batch's recording and the coordinator's history.
async fn judge(
    fleet: &Fleet,
    batch: &str,
    manifest: &Manifest,
    timings: &Path,
    seen_alive: BTreeMap<String, i64>,
) -> (InvariantReport, Vec<UnitView>) {
    let units = fleet.client().units(batch, None).await.expect("units");
    let recording = Recording::read(timings);
    let report = check(&Evidence {
        manifest,
        units: &units,
        recording: &recording,
        seen_alive,
    });
    (report, units)
}

fn view<'a>(units: &'a [UnitView], id: &str) -> &'a UnitView {
    units
        .iter()
        .find(|u| u.id == id)
        .unwrap_or_else(|| panic!("unit {id}"))
}

/// Runs a one-unit batch to its end. Events are consumed in queue order by
/// one consumer, so once the sentinel's own events are applied, every event
/// published before it has been handled too.
async fn drain_events(fleet: &Fleet, dir: &Path) {
    let sentinel = dir.join("sentinel");
    std::fs::create_dir_all(&sentinel).expect("sentinel dir");
    write_file(
        &sentinel,
        "manifest.yaml",
        "batch: sentinel\nplaybook:\n  name: p\n  run: 'true'\nunits:\n  - id: s\n",
    );
    let manifest = Manifest::load(&sentinel.join("manifest.yaml")).expect("sentinel manifest");
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(30)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
}

/// The units and summary of a batch as JSON, to compare before and after.
async fn snapshot(fleet: &Fleet, batch: &str) -> serde_json::Value {
    let client = fleet.client();
    let units = client.units(batch, None).await.expect("units");
    let summary = client.batch(batch).await.expect("summary");
    serde_json::json!({
        "units": units.iter().map(|u| serde_json::json!({
            "id": u.id, "state": u.state, "attempt": u.attempt, "failures": u.failures,
            "reason": u.reason, "history": u.history,
        })).collect::<Vec<_>>(),
        "state": summary.state,
        "counts": summary.counts,
        "ended_ms": summary.ended_ms,
    })
}

// ---------------------------------------------------------------------------
// 1. The coordinator is killed with SIGKILL, again and again.
// ---------------------------------------------------------------------------

/// A 200-unit DAG: each unit depends on up to three of the twelve before it;
/// some use a database (capacity 2, some with weight 2), some an API
/// (capacity 3), some touch one of two shared files.
fn dag_manifest(dir: &Path, rng: &mut Rng) -> Manifest {
    let timings = dir.join("timings.txt");
    let mut units = String::new();
    for i in 0..200u64 {
        units.push_str(&format!("  - id: k{i:03}\n"));
        if i > 0 {
            let mut deps: Vec<u64> = (0..rng.below(4))
                .map(|_| i - 1 - rng.below(i.min(12)))
                .collect();
            deps.sort_unstable();
            deps.dedup();
            if !deps.is_empty() {
                let deps: Vec<String> = deps.iter().map(|d| format!("k{d:03}")).collect();
                units.push_str(&format!("    depends_on: [{}]\n", deps.join(", ")));
            }
        }
        match rng.below(10) {
            0 => units.push_str("    uses: {db: 2}\n"),
            1 | 2 => units.push_str("    uses: [db]\n"),
            3 | 4 => units.push_str("    uses: [api]\n"),
            5 => units.push_str("    uses: {db: 1, api: 1}\n"),
            _ => {}
        }
        match rng.below(12) {
            0 => units.push_str("    touches: [schema/a.sql]\n"),
            1 => units.push_str("    touches: [schema/a.sql, schema/b.sql]\n"),
            2 => units.push_str("    touches: [schema/b.sql]\n"),
            _ => {}
        }
        units.push_str(&format!(
            "    env: {{SLEEP: '0.{:03}'}}\n",
            20 + rng.below(60)
        ));
    }
    load(
        dir,
        &format!(
            "batch: chaos-kill\nconcurrency: 6\nretries: 1\nresources: {{db: 2, api: 3}}\n\
             playbook:\n  name: record\n  run: ./session.sh\n  env: {{TIMINGS: {}}}\nunits:\n{units}",
            timings.display()
        ),
    )
}

/// When the coordinator is killed.
#[derive(Debug, Clone, Copy)]
enum KillSchedule {
    /// At seeded random moments: the first within 40 ms of the enqueue,
    /// while its first publishes and stores are in flight, then every
    /// 100 to 800 ms.
    Random,
    /// A few ms after some session records its end: that is when the
    /// coordinator applies the session's result, stores the new states and
    /// publishes the units it released.
    AfterSessionEnds,
}

/// What a coordinator-kill run saw.
struct Kills {
    seed: u64,
    /// When each kill happened, from the enqueue.
    at: Vec<Duration>,
    report: InvariantReport,
}

/// The seed of the kill schedule: `REGATTA_CHAOS_SEED` (hex) replays or
/// explores another one.
fn chaos_seed(default: u64) -> u64 {
    std::env::var("REGATTA_CHAOS_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(default)
}

/// Runs the 200-unit batch while killing the coordinator `kills` times;
/// asserts that the batch completes with every unit succeeded, and returns
/// the checker's report.
async fn coordinator_kills(seed: u64, kills: usize, schedule: KillSchedule) -> Kills {
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let timings = dir.path().join("timings.txt");
    let manifest = dag_manifest(dir.path(), &mut rng);
    let mut fleet = Fleet::start("chaos-kill", 3, 2, "3s").await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    let started = Instant::now();
    let mut at = Vec::new();
    'kills: while at.len() < kills {
        match schedule {
            KillSchedule::Random => {
                let delay = if at.is_empty() {
                    rng.below(40)
                } else {
                    100 + rng.below(700)
                };
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            KillSchedule::AfterSessionEnds => {
                // Let the new coordinator take its backlog, then wait for
                // the next session end and kill within 12 ms of it.
                tokio::time::sleep(Duration::from_millis(50 + rng.below(100))).await;
                let ends = |r: Recording| r.sessions.iter().filter(|s| s.end_ms.is_some()).count();
                let seen = ends(Recording::read(&timings));
                let deadline = Instant::now() + Duration::from_secs(5);
                while ends(Recording::read(&timings)) == seen {
                    if Instant::now() >= deadline {
                        break 'kills;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tokio::time::sleep(Duration::from_millis(rng.below(12))).await;
            }
        }
        let summary = fleet.client().batch(&batch).await.expect("summary");
        if summary.state.is_terminal() {
            break;
        }
        fleet.restart_coordinator().await;
        at.push(started.elapsed());
    }
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(120)).await;
    let (report, units) = judge(&fleet, &batch, &manifest, &timings, BTreeMap::new()).await;
    assert_eq!(
        summary.state,
        BatchState::Succeeded,
        "seed {seed:#x}, kills at {at:?}: {summary:?}\n{report}"
    );
    assert!(units.iter().all(|u| u.state == UnitState::Succeeded));
    fleet.stop().await;
    Kills { seed, at, report }
}

/// The batch completes through eight kills at random moments, and every
/// invariant holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_dag_batch_survives_repeated_coordinator_kills() {
    let kills = coordinator_kills(chaos_seed(0x5eed_c0de_0001), 8, KillSchedule::Random).await;
    assert!(
        kills.at.len() >= 5,
        "the batch ended after only {} coordinator kills (seed {:#x}): make it longer",
        kills.at.len(),
        kills.seed
    );
    assert!(
        kills.report.is_clean(),
        "seed {:#x}, kills at {:?}:\n{}",
        kills.seed,
        kills.at,
        kills.report
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_unit_runs_behind_a_killed_coordinators_back() {
    // About half the runs of one batch hit the window: run up to three.
    let seed = chaos_seed(0x5eed_c0de_0002);
    for round in 0..3 {
        let kills = coordinator_kills(seed + round, 40, KillSchedule::AfterSessionEnds).await;
        assert!(
            kills.report.is_clean(),
            "seed {:#x}, kills at {:?}:\n{}",
            kills.seed,
            kills.at,
            kills.report
        );
    }
}

// ---------------------------------------------------------------------------
// 2. A worker paused (SIGSTOP) for longer than its lease TTL.
// ---------------------------------------------------------------------------

/// What the paused-worker scenario saw.
struct Paused {
    report: InvariantReport,
    /// The first attempt's session, which ran on the paused worker.
    zombie: String,
    /// When the worker was stopped and continued, and when its session was
    /// first seen dead (ms).
    paused_at: i64,
    resumed_at: i64,
    zombie_dead_at: i64,
    /// When the re-run started, by its own record.
    rerun_start: i64,
}

/// Stops the worker that runs `long` for longer than its 3 s TTL, lets the
/// unit re-run on the other worker, continues it, and checks the parts of
/// the contract that the known trap "a paused process is not a dead one"
/// states: the zombie is killed at the worker's next heartbeat, and its late
/// result is refused (the unit's history keeps the reaper's record of the
/// first attempt and the re-run's success).
async fn paused_worker_scenario() -> Paused {
    let dir = tempfile::tempdir().expect("temp dir");
    let timings = dir.path().join("timings.txt");
    let mut units =
        String::from("  - id: long\n    uses: [db]\n    touches: [schema/long.sql]\n    env: {SLEEP_ATTEMPT_1: '30', SLEEP: '0.5'}\n");
    units.push_str("  - id: after\n    depends_on: [long]\n    uses: [db]\n");
    for i in 0..4 {
        units.push_str(&format!("  - id: side{i}\n"));
    }
    let manifest = load(
        dir.path(),
        &format!(
            "batch: chaos-pause\nconcurrency: 2\nretries: 1\nresources: {{db: 1}}\n\
             playbook:\n  name: record\n  run: ./session.sh\n  env: {{TIMINGS: {}, SLEEP: '0.1'}}\nunits:\n{units}",
            timings.display()
        ),
    );
    let fleet = Fleet::start("chaos-pause", 2, 1, "3s").await;
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");

    // The first attempt runs, holding its lease.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (zombie, zombie_pid, holder) = loop {
        assert!(Instant::now() < deadline, "long never started");
        let recording = Recording::read(&timings);
        if let Some(first) = recording.of_unit("long").find(|s| s.attempt == 1) {
            let leases = client.leases().await.expect("leases");
            if let Some(lease) = leases.iter().find(|l| l.session_id == first.session) {
                break (
                    first.session.clone(),
                    first.pid.expect("the session recorded its pid"),
                    lease.worker.clone(),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let index: usize = holder
        .trim_start_matches('w')
        .parse()
        .expect("worker name w<n>");
    let worker = Pid::from_raw(fleet.workers[index].id() as i32);
    let mut seen_alive = BTreeMap::new();
    kill(worker, Signal::SIGSTOP).expect("sigstop");
    let paused_at = now_ms();

    // The lease expires, the reaper records the attempt lost, and the unit
    // re-runs on the other worker, while the stopped worker's session goes on.
    let deadline = Instant::now() + Duration::from_secs(15);
    // The session's leader hears no renewal from the stopped worker and
    // may kill the session before the re-run starts: note when it died.
    let mut dead_at: Option<i64> = None;
    let rerun_start = loop {
        if process_alive(zombie_pid) {
            seen_alive.insert(zombie.clone(), now_ms());
        } else if dead_at.is_none() {
            dead_at = Some(now_ms());
        }
        if let Some(rerun) = Recording::read(&timings)
            .of_unit("long")
            .find(|s| s.attempt == 2)
        {
            break rerun.start_ms;
        }
        if Instant::now() >= deadline {
            let _ = kill(worker, Signal::SIGCONT);
            panic!("long did not re-run within 15 s of its worker's pause");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Let the re-run make progress beside the zombie before waking it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if process_alive(zombie_pid) {
        seen_alive.insert(zombie.clone(), now_ms());
    } else if dead_at.is_none() {
        dead_at = Some(now_ms());
    }
    let first_attempt: Attempt =
        view(&client.units(&batch, None).await.expect("units"), "long").history[0].clone();
    kill(worker, Signal::SIGCONT).expect("sigcont");
    let resumed_at = now_ms();

    // At its next heartbeat (a third of the TTL) the worker finds its lease
    // gone and kills the session.
    let deadline = Instant::now() + Duration::from_secs(5);
    let zombie_dead_at = loop {
        if !process_alive(zombie_pid) {
            break dead_at.unwrap_or_else(now_ms);
        }
        seen_alive.insert(zombie.clone(), now_ms());
        assert!(
            Instant::now() < deadline,
            "the continued worker did not kill its session within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Its result is reported: the worker writes the session's evidence pack
    // just before the `finished` event.
    let pack = fleet
        .artifact_store()
        .join(&batch)
        .join("long")
        .join(&zombie)
        .join("evidence-pack.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pack.exists() {
        assert!(
            Instant::now() < deadline,
            "the zombie's worker never finished the session ({})",
            pack.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pack: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pack).expect("pack")).expect("pack json");
    assert_eq!(pack["outcome"], "lost", "{pack}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drain_events(&fleet, dir.path()).await;

    let summary = fleet.wait_for_end(&batch, Duration::from_secs(30)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let (report, units) = judge(&fleet, &batch, &manifest, &timings, seen_alive).await;
    let long = view(&units, "long");
    assert_eq!(long.history.len(), 2, "{:?}", long.history);
    assert_eq!(
        long.history[0], first_attempt,
        "the zombie's late result changed the first attempt's record"
    );
    assert_eq!(long.history[0].outcome, Some(Outcome::Lost));
    assert!(
        long.history[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("stopped renewing"),
        "the reaper's record stands: {:?}",
        long.history[0]
    );
    assert_eq!(long.history[1].outcome, Some(Outcome::Succeeded));
    assert_eq!(long.failures, 1);
    fleet.stop().await;
    Paused {
        report,
        zombie,
        paused_at,
        resumed_at,
        zombie_dead_at,
        rerun_start,
    }
}

/// A stopped worker cannot kill anything, so its session's leader does:
/// hearing no lease renewal for two renewal periods, it kills the session's
/// group before the lease can expire, so the re-run never overlaps it
/// (contracts 3 and 6). When the worker continues, it reports the session
/// lost, and that late result changes nothing (checked in the scenario).
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_workers_session_never_overlaps_its_re_run() {
    let paused = paused_worker_scenario().await;
    assert!(
        paused.paused_at <= paused.zombie_dead_at && paused.zombie_dead_at < paused.resumed_at,
        "the session died at {}, not while its worker was stopped ({}..{}): its leader did not kill it",
        paused.zombie_dead_at,
        paused.paused_at,
        paused.resumed_at
    );
    assert!(
        paused.zombie_dead_at <= paused.rerun_start,
        "the zombie {} was still alive at {} when the re-run started at {}:\n{}",
        paused.zombie,
        paused.zombie_dead_at,
        paused.rerun_start,
        paused.report
    );
    paused.report.assert_clean();
}

// ---------------------------------------------------------------------------
// 3. Results delivered twice and out of order.
// ---------------------------------------------------------------------------

/// A copy of the `started` event a session sent.
fn started_event(batch: &str, unit: &str, attempt: &Attempt) -> SessionEvent {
    SessionEvent {
        batch_id: batch.to_owned(),
        unit_id: unit.to_owned(),
        session_id: attempt.session_id.clone(),
        attempt: attempt.attempt,
        fencing: attempt.fencing,
        worker: attempt.worker.clone().unwrap_or_default(),
        at_ms: attempt.started_at_ms.unwrap_or(attempt.published_at_ms),
        kind: EventKind::Started { lease_wait_ms: 1 },
    }
}

/// A copy of the `finished` event a session sent, as its history shows it.
fn finished_event(batch: &str, unit: &str, attempt: &Attempt) -> SessionEvent {
    SessionEvent {
        batch_id: batch.to_owned(),
        unit_id: unit.to_owned(),
        session_id: attempt.session_id.clone(),
        attempt: attempt.attempt,
        fencing: attempt.fencing,
        worker: attempt.worker.clone().unwrap_or_default(),
        at_ms: attempt.ended_at_ms.unwrap_or(attempt.published_at_ms),
        kind: EventKind::Finished {
            outcome: attempt.outcome.unwrap_or(Outcome::Succeeded),
            exit_code: attempt.exit_code,
            duration_ms: 1,
            reason: attempt.reason.clone(),
            log_tail: attempt.log_tail.clone(),
            log_path: attempt.log_path.clone(),
            gates: attempt.gates.clone(),
            evidence: attempt.evidence.clone(),
            git: attempt.git.clone().map(Box::new),
            usage: attempt.usage.clone(),
            started_at_ms: attempt.started_at_ms,
            lease_wait_ms: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicated_and_reordered_results_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let timings = dir.path().join("timings.txt");
    let manifest = load(
        dir.path(),
        &format!(
            "batch: chaos-dup\nconcurrency: 4\nretries: 1\nresources: {{db: 1}}\n\
             playbook:\n  name: record\n  run: ./session.sh\n  env: {{TIMINGS: {}}}\nunits:\n  \
             - id: a\n  - id: b\n    depends_on: [a]\n    uses: [db]\n  - id: c\n    depends_on: [b]\n  \
             - id: d\n    uses: [db]\n  - id: e\n    depends_on: [a, d]\n  \
             - id: flaky\n    env: {{FAIL_ATTEMPT: '1', SLEEP_ATTEMPT_2: '3'}}\n  \
             - id: after-flaky\n    depends_on: [flaky]\n",
            timings.display()
        ),
    );
    let fleet = Fleet::start("chaos-dup", 2, 2, "3s").await;
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await.expect("enqueue");

    // While flaky's second attempt runs, replay its first attempt's results:
    // the real failure, twice, and a success claimed for that old session
    // with its own fencing number; replay the running attempt's start with
    // an earlier time. None is about the current session's state.
    let deadline = Instant::now() + Duration::from_secs(30);
    let running = loop {
        let units = client.units(&batch, None).await.expect("units");
        let flaky = view(&units, "flaky");
        if flaky.state == UnitState::Running
            && flaky.history.len() == 2
            && flaky.history[1].started_at_ms.is_some()
        {
            break flaky.clone();
        }
        assert!(
            Instant::now() < deadline,
            "flaky's second attempt never ran: {flaky:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let old = &running.history[0];
    assert_eq!(old.outcome, Some(Outcome::Failed));
    let mut claimed = old.clone();
    claimed.outcome = Some(Outcome::Succeeded);
    claimed.exit_code = Some(0);
    claimed.reason = None;
    let mut early = running.history[1].clone();
    early.started_at_ms = early.started_at_ms.map(|t| t - 10_000);
    fleet
        .publish_events(&[
            finished_event(&batch, "flaky", old),
            started_event(&batch, "flaky", old),
            finished_event(&batch, "flaky", &claimed),
            finished_event(&batch, "flaky", old),
            started_event(&batch, "flaky", &early),
            started_event(&batch, "flaky", &early),
        ])
        .await;
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let units = client.units(&batch, None).await.expect("units");
    let flaky = view(&units, "flaky");
    assert_eq!(flaky.history.len(), 2, "{:?}", flaky.history);
    assert_eq!(
        flaky.history[0], running.history[0],
        "replayed old results changed the first attempt"
    );
    assert_eq!(
        flaky.history[1].started_at_ms, running.history[1].started_at_ms,
        "a replayed start moved the running attempt's start"
    );
    assert_eq!(flaky.history[1].outcome, Some(Outcome::Succeeded));
    assert_eq!(flaky.failures, 1);

    // After the end: every result of every attempt again, finished before
    // started, twice, and the old attempt's result after the newer one's.
    let before = snapshot(&fleet, &batch).await;
    let mut replay = Vec::new();
    for unit in units.iter().rev() {
        for attempt in unit.history.iter().rev() {
            replay.push(finished_event(&batch, &unit.id, attempt));
            replay.push(started_event(&batch, &unit.id, attempt));
            replay.push(finished_event(&batch, &unit.id, attempt));
        }
    }
    replay.push(finished_event(&batch, "flaky", &flaky.history[1]));
    replay.push(finished_event(&batch, "flaky", &flaky.history[0]));
    fleet.publish_events(&replay).await;
    drain_events(&fleet, dir.path()).await;
    let after = snapshot(&fleet, &batch).await;
    assert_eq!(before, after, "replayed results changed the finished batch");
    let (report, _) = judge(&fleet, &batch, &manifest, &timings, BTreeMap::new()).await;
    report.assert_clean();
    fleet.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Poison input on the work queue.
// ---------------------------------------------------------------------------

/// The fields of a sealed envelope, read by hand: the test crate does not
/// depend on rmp-serde, and the layout is the contract anyway
/// (`[version, kind, body, signature]`, MessagePack).
struct RawEnvelope {
    version: u16,
    kind: String,
    body: Vec<u8>,
    signature: Vec<u8>,
}

impl RawEnvelope {
    fn parse(bytes: &[u8]) -> RawEnvelope {
        struct Cursor<'a>(&'a [u8]);
        impl<'a> Cursor<'a> {
            fn take(&mut self, n: usize) -> &'a [u8] {
                let (head, rest) = self.0.split_at(n);
                self.0 = rest;
                head
            }
            fn byte(&mut self) -> u8 {
                self.take(1)[0]
            }
            fn bin(&mut self) -> Vec<u8> {
                let len = match self.byte() {
                    0xc4 => usize::from(self.byte()),
                    0xc5 => usize::from(u16::from_be_bytes([self.byte(), self.byte()])),
                    0xc6 => {
                        let b = self.take(4);
                        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
                    }
                    other => panic!("unexpected bin marker {other:#x}"),
                };
                self.take(len).to_vec()
            }
        }
        let mut cursor = Cursor(bytes);
        assert_eq!(cursor.byte(), 0x94, "an envelope is a four-element array");
        let version = match cursor.byte() {
            v @ 0x00..=0x7f => u16::from(v),
            0xcc => u16::from(cursor.byte()),
            0xcd => u16::from_be_bytes([cursor.byte(), cursor.byte()]),
            other => panic!("unexpected version marker {other:#x}"),
        };
        let kind_len = match cursor.byte() {
            m @ 0xa0..=0xbf => usize::from(m - 0xa0),
            other => panic!("unexpected kind marker {other:#x}"),
        };
        let kind = String::from_utf8(cursor.take(kind_len).to_vec()).expect("kind");
        let body = cursor.bin();
        let signature = cursor.bin();
        RawEnvelope {
            version,
            kind,
            body,
            signature,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![0x94];
        if self.version < 0x80 {
            out.push(self.version as u8);
        } else {
            out.push(0xcd);
            out.extend(self.version.to_be_bytes());
        }
        assert!(self.kind.len() < 32);
        out.push(0xa0 + self.kind.len() as u8);
        out.extend(self.kind.as_bytes());
        for bin in [&self.body, &self.signature] {
            if bin.len() < 256 {
                out.extend([0xc4, bin.len() as u8]);
            } else if bin.len() < 65_536 {
                out.push(0xc5);
                out.extend((bin.len() as u16).to_be_bytes());
            } else {
                out.push(0xc6);
                out.extend((bin.len() as u32).to_be_bytes());
            }
            out.extend(bin.iter());
        }
        out
    }

    /// The envelope of `body` under `version`, signed with `signer`.
    fn signed(version: u16, kind: &str, body: Vec<u8>, signer: &Signer) -> RawEnvelope {
        let signature = signer.sign(version, kind, &body).to_vec();
        RawEnvelope {
            version,
            kind: kind.to_owned(),
            body,
            signature,
        }
    }
}

/// An order whose command leaves a mark, so that running it shows.
fn marking_order(workdir: &Path, batch_id: &str, mark: &str) -> WorkOrder {
    WorkOrder {
        batch_id: batch_id.to_owned(),
        unit_id: "ghost".into(),
        session_id: format!("ghost-{mark}"),
        run: format!("echo ran >> {mark}"),
        workdir: workdir.display().to_string(),
        env: BTreeMap::new(),
        inputs: vec![],
        outputs: vec![],
        gates: vec![],
        timeout_ms: 10_000,
        leases: LeaseDemand {
            concurrency: 1,
            resources: vec![],
        },
        ..WorkOrder::example()
    }
}

/// A batch of 16 units runs while `poison` is put on the work queue; every
/// poison message must come back on the dead-letter queue with its reason
/// (matched by payload), none may run, and the batch must be unaffected.
async fn poison_beside_a_batch(
    test: &str,
    poison: impl FnOnce(&Fleet, &Path) -> Vec<(Vec<u8>, &'static str)>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let timings = dir.path().join("timings.txt");
    let units: String = (0..16)
        .map(|i| {
            if i % 4 == 0 {
                format!("  - id: p{i:02}\n")
            } else {
                format!("  - id: p{i:02}\n    depends_on: [p{:02}]\n", i - 1)
            }
        })
        .collect();
    let manifest = load(
        dir.path(),
        &format!(
            "batch: chaos-poison\nconcurrency: 4\nretries: 0\nplaybook:\n  name: record\n  \
             run: ./session.sh\n  env: {{TIMINGS: {}, SLEEP: '0.15'}}\nunits:\n{units}",
            timings.display()
        ),
    );
    let fleet = Fleet::start(test, 2, 2, "3s").await;
    let batch = fleet.client().enqueue(&manifest).await.expect("enqueue");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Recording::read(&timings).sessions.len() < 2 {
        assert!(Instant::now() < deadline, "the batch never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let names = Names::new(&fleet.namespace).expect("names");
    let connection = rabbitmq().await;
    let channel = regatta_tests::confirm_channel(&connection).await;
    broker::declare_topology(&channel, &names)
        .await
        .expect("topology");
    let poison = poison(&fleet, dir.path());
    for (payload, _) in &poison {
        broker::publish_confirmed(
            &channel,
            &names.work_queue(),
            payload,
            BasicProperties::default(),
        )
        .await
        .expect("publish poison");
    }
    let reasons: BTreeMap<Vec<u8>, String> =
        regatta_tests::dead_letters(&channel, &names, poison.len(), Duration::from_secs(15))
            .await
            .into_iter()
            .collect();
    for (payload, expected) in &poison {
        match reasons.get(payload) {
            Some(reason) => assert!(
                reason.contains(expected),
                "a poison message was dead-lettered with {reason:?}, expected {expected:?}"
            ),
            None => panic!(
                "a poison message expected to be dead-lettered with {expected:?} was not within \
                 15 s (ran it: {}); dead letters seen: {:?}",
                dir.path().join("ran-ghost").exists(),
                reasons.values().collect::<Vec<_>>()
            ),
        }
    }
    assert!(
        !dir.path().join("ran-ghost").exists(),
        "a poison order was executed"
    );

    let summary = fleet.wait_for_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(summary.state, BatchState::Succeeded, "{summary:?}");
    let (report, units) = judge(&fleet, &batch, &manifest, &timings, BTreeMap::new()).await;
    report.assert_clean();
    for unit in &units {
        assert_eq!(
            unit.history.len(),
            1,
            "{} ran once: {:?}",
            unit.id,
            unit.history
        );
    }
    let _ = connection.close(200, "done".into()).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_forged_and_future_orders_are_dead_lettered_beside_a_running_batch() {
    poison_beside_a_batch("chaos-poison", |fleet, dir| {
        let signer = Signer::new(fleet.secret.as_bytes());
        let order = marking_order(dir, "b-1", "ran-ghost");
        let forged = seal(&order, &Signer::new(b"not the fleet's secret"));
        // A correctly signed order in a format this build does not read.
        let body = RawEnvelope::parse(&seal(&order, &signer)).body;
        let future = RawEnvelope::signed(2, "order", body, &signer).encode();
        vec![
            (
                b"\x00\xffgarbage, not MessagePack".to_vec(),
                "not a regatta message",
            ),
            (forged, "bad signature"),
            (future, "version 2"),
        ]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_for_an_unknown_batch_is_dead_lettered_and_never_runs() {
    poison_beside_a_batch("chaos-unknown", |fleet, dir| {
        let signer = Signer::new(fleet.secret.as_bytes());
        let order = marking_order(dir, "no-such-batch-00000000", "ran-ghost");
        vec![(seal(&order, &signer), "batch")]
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5. Bounded random mutation: parsing and decoding never panic.
// ---------------------------------------------------------------------------

/// Runs `cases` mutated inputs through `target` on a thread of its own;
/// fails naming the input when one panics, or when the whole run takes
/// longer than `budget` (a hang is a finding too).
fn fuzz<I: Clone + std::fmt::Debug + Send + 'static>(
    name: &str,
    seed: u64,
    cases: usize,
    budget: Duration,
    generate: impl Fn(&mut Rng) -> I + Send + 'static,
    target: impl Fn(&I) + Send + 'static,
) {
    let current = std::sync::Arc::new(std::sync::Mutex::new(None::<I>));
    let (done, finished) = std::sync::mpsc::channel();
    let shared = current.clone();
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let mut failures = Vec::new();
        for case in 0..cases {
            let input = generate(&mut rng);
            *shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(input.clone());
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
            if outcome.is_err() {
                failures.push((case, input));
            }
        }
        let _ = done.send(failures);
    });
    match finished.recv_timeout(budget) {
        Ok(failures) => assert!(
            failures.is_empty(),
            "{name} (seed {seed:#x}): {} of {cases} inputs panicked; first: {:?}",
            failures.len(),
            failures.first()
        ),
        Err(_) => panic!(
            "{name} (seed {seed:#x}): still running after {budget:?}; current input: {:?}",
            current.lock().unwrap_or_else(|p| p.into_inner())
        ),
    }
}

/// Bytes that mean something to YAML or to the manifest's rules.
const YAML_TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "\t",
    "[",
    "]",
    "{",
    "}",
    ",",
    "'",
    "\"",
    "#",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!binary ",
    "? ",
    "|",
    ">",
    "---\n",
    "...\n",
    "~",
    "null",
    "..",
    "../",
    "/",
    "0",
    "-1",
    "4294967296",
    "18446744073709551616",
    "1e999",
    ".nan",
    ".inf",
    "0s",
    "-5m",
    "99999999999999999h",
    "1h1h",
    "1.5h",
    "500ms",
    "x-",
    "file:",
    "\u{feff}",
    "é",
    "\u{0}",
    "id: ",
    "depends_on: ",
    "uses: ",
    "touches: ",
    "units:\n",
    "resources: ",
    "playbook: ",
    "concurrency: ",
    "calibration: ",
    "calibration_auto: ",
    "timeout: ",
    "retries: ",
    "priority: ",
    "verify: ",
    "gates:\n",
    "run: ",
];

/// A seed manifest, mutated a few times.
fn mutate_text(rng: &mut Rng, seeds: &[String]) -> String {
    let mut bytes = rng.pick(seeds).clone().into_bytes();
    for _ in 0..1 + rng.below(6) {
        let at = if bytes.is_empty() {
            0
        } else {
            rng.below(bytes.len() as u64 + 1) as usize
        };
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let at = at.min(bytes.len() - 1);
                bytes[at] = rng.next() as u8;
            }
            1 | 2 => {
                let token = rng.pick(YAML_TOKENS).as_bytes().to_vec();
                bytes.splice(at..at, token);
            }
            3 => {
                let end = (at + 1 + rng.below(16) as usize).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            4 => bytes.truncate(at),
            _ => {
                // Duplicate a slice elsewhere: repeated keys, units, lines.
                let end = (at + rng.below(64) as usize).min(bytes.len());
                let slice = bytes[at.min(end)..end].to_vec();
                let to = rng.below(bytes.len() as u64 + 1) as usize;
                bytes.splice(to..to, slice);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A manifest built from the schema's own keys with hostile values.
fn generate_manifest(rng: &mut Rng) -> String {
    const SCALARS: &[&str] = &[
        "0",
        "1",
        "-1",
        "3",
        "4294967295",
        "4294967296",
        "18446744073709551616",
        "1.5",
        ".nan",
        "-.inf",
        "''",
        "~",
        "true",
        "0s",
        "1h30m",
        "-1s",
        "99999999999999999999h",
        "1ms",
        "x",
        "'../up'",
        "/abs",
        "'a b'",
        "[]",
        "{}",
        "[1, 2]",
        "{a: 1}",
    ];
    let ids = ["a", "b", "c", "a.b", "A-1", "_", "é", "a b", ""];
    let mut text = String::new();
    if rng.below(8) > 0 {
        text.push_str(&format!("batch: {}\n", rng.pick(&["b", "", "x y", "[1]"])));
    }
    for key in [
        "concurrency",
        "calibration",
        "calibration_auto",
        "retries",
        "timeout",
        "workdir",
        "concurency",
    ] {
        if rng.below(3) == 0 {
            text.push_str(&format!("{key}: {}\n", rng.pick(SCALARS)));
        }
    }
    if rng.below(2) == 0 {
        text.push_str(&format!(
            "resources: {{db: {}, 'file:x': {}}}\n",
            rng.pick(SCALARS),
            rng.pick(SCALARS)
        ));
    }
    match rng.below(4) {
        0 => text.push_str(&format!("playbook: {}\n", rng.pick(SCALARS))),
        1 => text.push_str("playbook: playbook.yaml\n"),
        _ => text.push_str(&format!(
            "playbook:\n  run: {}\n  timeout: {}\n  gates:\n    - name: {}\n      run: 'true'\n      repairs: {}\n",
            rng.pick(SCALARS),
            rng.pick(SCALARS),
            rng.pick(&ids),
            rng.pick(SCALARS)
        )),
    }
    if rng.below(10) > 0 {
        text.push_str("units:\n");
        for _ in 0..rng.below(6) {
            text.push_str(&format!("  - id: {}\n", rng.pick(&ids)));
            for (key, values) in [
                ("depends_on", &ids[..]),
                ("touches", &["x", "../x", "/x", "a//b", "./", ""][..]),
                ("inputs", &["i", "../i", "/etc/hosts"][..]),
                ("verify", &["build", "nope"][..]),
            ] {
                if rng.below(3) == 0 {
                    let list: Vec<&str> = (0..rng.below(3)).map(|_| *rng.pick(values)).collect();
                    text.push_str(&format!("    {key}: [{}]\n", list.join(", ")));
                }
            }
            if rng.below(3) == 0 {
                text.push_str(&format!(
                    "    uses: {}\n",
                    rng.pick(&["[db]", "{db: 0}", "{db: 99}", "[nope]", "{db: -1}", "db"])
                ));
            }
            for key in ["timeout", "priority", "run", "env", "task"] {
                if rng.below(5) == 0 {
                    text.push_str(&format!("    {key}: {}\n", rng.pick(SCALARS)));
                }
            }
        }
    }
    text
}

#[test]
fn manifest_parsing_never_panics_on_mutated_or_hostile_yaml() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seeds: Vec<String> = Vec::new();
    for folder in ["hello", "gates", "demo", "invalid"] {
        if let Ok(entries) = std::fs::read_dir(examples.join(folder)) {
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                if path.extension().is_some_and(|e| e == "yaml") {
                    seeds.push(std::fs::read_to_string(&path).expect("example"));
                }
            }
        }
    }
    assert!(seeds.len() >= 10, "the examples are the fuzzer's seeds");
    // Anchors and merge keys, the amplification a hostile manifest would try.
    let mut laughs = String::from("x-l0: &l0 [a, a, a, a, a, a, a, a, a, a]\n");
    for level in 1..7 {
        laughs.push_str(&format!(
            "x-l{level}: &l{level} [{}]\n",
            vec![format!("*l{}", level - 1); 10].join(", ")
        ));
    }
    laughs.push_str("batch: laughs\nplaybook: {run: 'true'}\nunits:\n  - id: a\n");
    seeds.push(laughs);

    let base = tempfile::tempdir().expect("temp dir");
    write_file(
        base.path(),
        "playbook.yaml",
        "name: p\nrun: 'true'\ngates:\n  - name: build\n    run: 'true'\n",
    );
    let base_dir = base.path().to_path_buf();
    let seeds = std::sync::Arc::new(seeds);
    let generate = {
        let seeds = seeds.clone();
        move |rng: &mut Rng| {
            let text = if rng.below(3) == 0 {
                generate_manifest(rng)
            } else {
                mutate_text(rng, &seeds)
            };
            let name = if rng.below(8) == 0 {
                "m.json"
            } else {
                "m.yaml"
            };
            (text, name)
        }
    };
    fuzz(
        "Manifest::parse",
        0x5eed_f022_0001,
        // The deep fuzzing of manifests is manifest/tests/manifest_fuzz.rs;
        // this seeded loop stays as a quick second opinion. Its budget only
        // catches a hang: the suite shares two cores with other tests.
        1_500,
        Duration::from_secs(180),
        generate,
        move |(text, name): &(String, &str)| {
            let _ = Manifest::parse(text, name, &base_dir);
        },
    );
    // The amplification seed itself is refused or read in bounded time: an
    // expansion would take hours; 30 s leaves room for a debug build on a
    // loaded machine (5 s was exceeded under a load of 14 on 2 cores).
    let started = Instant::now();
    let _ = Manifest::parse(&seeds[seeds.len() - 1], "laughs.yaml", base.path());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the amplification seed took {took:?} to parse"
    );
}

/// A message's body mutated a few times, then sealed again with the right
/// secret, so that the decoder (not just the signature check) sees it.
fn mutate_body(rng: &mut Rng, body: &[u8]) -> Vec<u8> {
    let mut bytes = body.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len() as u64 + 1) as usize;
        match rng.below(5) {
            0 if at < bytes.len() => bytes[at] = rng.next() as u8,
            1 => {
                // MessagePack markers that change what follows: lengths, maps, arrays.
                let marker = *rng.pick(&[
                    0xc0u8, 0xc2, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xdc, 0xdd, 0xde, 0xdf, 0xd9, 0xda,
                    0xdb, 0xc4, 0xc6, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xff,
                ]);
                bytes.insert(at, marker);
            }
            2 => {
                let end = (at + 1 + rng.below(8) as usize).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            3 => bytes.truncate(at),
            _ => {
                let end = (at + rng.below(32) as usize).min(bytes.len());
                let slice = bytes[at.min(end)..end].to_vec();
                let to = rng.below(bytes.len() as u64 + 1) as usize;
                bytes.splice(to..to, slice);
            }
        }
    }
    bytes
}

#[test]
fn decoding_mutated_sealed_events_and_orders_never_panics() {
    let signer = Signer::new(b"fuzz-secret");
    let mut bodies: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for kind in [
        EventKind::Started { lease_wait_ms: 3 },
        EventKind::Deferred {
            reason: "waiting for db".into(),
        },
        EventKind::Finished {
            outcome: Outcome::Failed,
            exit_code: Some(3),
            duration_ms: 42,
            reason: Some("the command exited with status 3".into()),
            log_tail: "line\n".repeat(20),
            log_path: "/tmp/log".into(),
            gates: vec![regatta_proto::GateReport {
                name: "test".into(),
                passed: false,
                required: true,
                repairs: 2,
                duration_ms: 7,
            }],
            evidence: Some(regatta_proto::EvidenceRef {
                path: "/tmp/evidence-pack.json".into(),
                sha256: "0".repeat(64),
            }),
            git: None,
            usage: None,
            started_at_ms: None,
            lease_wait_ms: None,
        },
    ] {
        let sealed = seal(&SessionEvent::example(kind), &signer);
        let envelope = RawEnvelope::parse(&sealed);
        assert_eq!(
            envelope.encode(),
            sealed,
            "the hand-read envelope round-trips"
        );
        bodies.push(("event", envelope.body));
    }
    bodies.push((
        "order",
        RawEnvelope::parse(&seal(&WorkOrder::example(), &signer)).body,
    ));
    let bodies = std::sync::Arc::new(bodies);
    let generate = {
        let bodies = bodies.clone();
        move |rng: &mut Rng| {
            let (kind, body) = rng.pick(&bodies[..]);
            let kind: &str = kind;
            let mutated = mutate_body(rng, body);
            // Mostly signed (the decoder runs); sometimes the kind is swapped.
            let kind = if rng.below(10) == 0 {
                if kind == "event" {
                    "order"
                } else {
                    "event"
                }
            } else {
                kind
            };
            RawEnvelope::signed(1, kind, mutated, &Signer::new(b"fuzz-secret")).encode()
        }
    };
    let target_signer = signer.clone();
    fuzz(
        "open::<SessionEvent | WorkOrder>",
        0x5eed_f022_0002,
        6_000,
        Duration::from_secs(180),
        generate,
        move |bytes: &Vec<u8>| {
            let _ = open::<SessionEvent>(bytes, &target_signer);
            let _ = open::<WorkOrder>(bytes, &target_signer);
        },
    );
    // Some mutated bodies must still open: the decoder was reached.
    let mut rng = Rng(7);
    let reached = (0..500)
        .filter(|_| {
            let body = mutate_body(&mut rng, &bodies[0].1);
            let bytes = RawEnvelope::signed(1, "event", body, &signer).encode();
            !matches!(
                open::<SessionEvent>(&bytes, &signer),
                Err(regatta_proto::Error::BadSignature | regatta_proto::Error::Malformed(_))
            )
        })
        .count();
    assert!(reached > 400, "only {reached} of 500 reached the decoder");
}
