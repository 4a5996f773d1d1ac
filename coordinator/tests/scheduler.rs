//! The batch state machine, driven step by step without services: dispatch under
//! the batch cap and the resources' capacities, worker reports, failures and
//! their review, cancel, pause and resume; then a randomized run over many DAGs
//! that checks the invariants after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use regatta_coordinator::dag::Dag;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::DEFER_MS;
use regatta_coordinator::scheduler::{
    Batch, BatchState, Effects, Finish, Fleet, Report, UnitState,
};
use regatta_proto::{EventKind, Outcome, SessionEvent};

/// The dispatch time of every step-by-step test: far from the wall clock, so
/// that a test passes only if the scheduler uses the time it is given.
const NOW: i64 = 1_000_000;

/// One hour, in milliseconds.
const HOUR_MS: i64 = 3_600_000;

/// The fencing number every test worker claims with.
const FENCING: u64 = 7;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn manifest(yaml: &str) -> Manifest {
    Manifest::parse(yaml, "test.yaml", Path::new("/tmp"))
        .unwrap_or_else(|errors| panic!("invalid test manifest:\n{errors}\n---\n{yaml}"))
}

/// Builds a batch named `name` from manifest header lines and unit lines.
fn batch_named(name: &str, header: &str, units: &str) -> Batch {
    let yaml =
        format!("batch: {name}\nplaybook: {{name: p, run: 'true'}}\n{header}\nunits:\n{units}");
    let manifest = manifest(&yaml);
    let dag = Dag::build(&manifest).expect("a valid manifest builds its DAG");
    Batch::new(format!("{name}-1"), manifest, dag)
}

fn batch(header: &str, units: &str) -> Batch {
    batch_named("b", header, units)
}

/// A fresh session id; unique over the whole test run.
fn new_session() -> String {
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    format!("session-{}", SESSIONS.fetch_add(1, Ordering::Relaxed) + 1)
}

/// The fleet's operations as these tests drive them: batches by id, units
/// by name, at [`NOW`] unless said otherwise.
trait Drive {
    /// Adds a batch to the fleet; returns its id.
    fn add(&mut self, batch: Batch) -> String;
    fn publish_at(&mut self, batch: &str, now_ms: i64) -> Effects;
    /// Dispatches at [`NOW`] and names the published units, in publish order.
    fn publish(&mut self, batch: &str) -> Vec<String>;
    /// Sends a report about a unit's current session.
    fn send(&mut self, batch: &str, unit: &str, report: Report) -> Effects;
    fn report_for(&mut self, batch: &str, unit: &str, session: &str, report: Report) -> Effects;
    fn start(&mut self, batch: &str, unit: &str) -> Effects;
    fn finish(&mut self, batch: &str, unit: &str, outcome: Outcome) -> Effects;
    /// Starts and finishes a unit's current session.
    fn run(&mut self, batch: &str, unit: &str, outcome: Outcome) -> Effects;
    fn defer(&mut self, batch: &str, unit: &str) -> Effects;
    fn retry_unit(&mut self, batch: &str, unit: &str) -> Result<Effects, String>;
    fn skip_unit(&mut self, batch: &str, unit: &str) -> Result<Effects, String>;
}

impl Drive for Fleet {
    fn add(&mut self, batch: Batch) -> String {
        assert!(
            self.batch(&batch.id).is_none(),
            "two batches named {}",
            batch.id
        );
        self.insert(batch, ())
    }

    fn publish_at(&mut self, batch: &str, now_ms: i64) -> Effects {
        self.dispatch(batch, now_ms, &mut new_session)
    }

    fn publish(&mut self, batch: &str) -> Vec<String> {
        let effects = self.publish_at(batch, NOW);
        names(&self[batch], &effects.publish)
    }

    fn send(&mut self, batch: &str, unit: &str, report: Report) -> Effects {
        let session = session_of(&self[batch], unit);
        self.report_for(batch, unit, &session, report)
    }

    fn report_for(&mut self, batch: &str, unit: &str, session: &str, report: Report) -> Effects {
        let index = index(&self[batch], unit);
        self.report(batch, index, session, report)
    }

    fn start(&mut self, batch: &str, unit: &str) -> Effects {
        self.send(batch, unit, started())
    }

    fn finish(&mut self, batch: &str, unit: &str, outcome: Outcome) -> Effects {
        self.send(batch, unit, finished(outcome))
    }

    fn run(&mut self, batch: &str, unit: &str, outcome: Outcome) -> Effects {
        self.start(batch, unit);
        self.finish(batch, unit, outcome)
    }

    fn defer(&mut self, batch: &str, unit: &str) -> Effects {
        self.send(
            batch,
            unit,
            Report::Deferred {
                reason: "the database is in maintenance".into(),
                received_at_ms: NOW,
            },
        )
    }

    fn retry_unit(&mut self, batch: &str, unit: &str) -> Result<Effects, String> {
        let unit = index(&self[batch], unit);
        self[batch].retry(unit)
    }

    fn skip_unit(&mut self, batch: &str, unit: &str) -> Result<Effects, String> {
        let unit = index(&self[batch], unit);
        self[batch].skip(unit)
    }
}

fn started() -> Report {
    Report::Started {
        worker: "worker-1".into(),
        fencing: FENCING,
        at_ms: NOW + 1,
    }
}

fn finished(outcome: Outcome) -> Report {
    finished_with_fencing(outcome, FENCING)
}

fn finished_with_fencing(outcome: Outcome, fencing: u64) -> Report {
    let succeeded = outcome == Outcome::Succeeded;
    Report::Finished(Finish {
        outcome,
        exit_code: Some(if succeeded { 0 } else { 1 }),
        reason: (!succeeded).then(|| format!("the session ended {outcome:?}")),
        at_ms: NOW + 100,
        log_tail: "last line".into(),
        log_path: "/var/log/regatta/session.log".into(),
        gates: Vec::new(),
        fencing,
        evidence: None,
        git: None,
        usage: None,
        worker: None,
        started_at_ms: None,
    })
}

fn index(batch: &Batch, unit: &str) -> usize {
    batch
        .index_of(unit)
        .unwrap_or_else(|| panic!("the batch has no unit '{unit}'"))
}

fn state(batch: &Batch, unit: &str) -> UnitState {
    batch.units[index(batch, unit)].state
}

fn session_of(batch: &Batch, unit: &str) -> String {
    batch.units[index(batch, unit)]
        .current()
        .map(|attempt| attempt.session_id.clone())
        .unwrap_or_default()
}

fn names(batch: &Batch, units: &[usize]) -> Vec<String> {
    units.iter().map(|&u| batch.units[u].id.clone()).collect()
}

fn changed(batch: &Batch, effects: &Effects) -> Vec<String> {
    effects
        .changed
        .iter()
        .map(|&u| batch.units[u].id.clone())
        .collect()
}

/// The units in a state, in manifest order.
fn units_in(batch: &Batch, wanted: UnitState) -> Vec<String> {
    batch
        .units
        .iter()
        .filter(|unit| unit.state == wanted)
        .map(|unit| unit.id.clone())
        .collect()
}

fn in_flight(batch: &Batch) -> usize {
    batch.count(UnitState::Queued) + batch.count(UnitState::Running)
}

fn batch_usage(batch: &Batch, resource: &str) -> u32 {
    batch.usage().get(resource).copied().unwrap_or(0)
}

/// Checks that `counts()` sums to the number of units and agrees with the
/// state of every unit.
fn assert_counts(batch: &Batch) {
    let total: usize = batch.counts().values().sum();
    assert_eq!(total, batch.units.len(), "counts {:?}", batch.counts());
    for wanted in UnitState::ALL {
        let actual = batch.units.iter().filter(|u| u.state == wanted).count();
        assert_eq!(
            batch.count(wanted),
            actual,
            "count of {} in {:?}",
            wanted.as_str(),
            batch.counts()
        );
    }
}

/// The state of a batch that a change-nothing event must leave alone.
#[derive(Debug, PartialEq)]
struct Snapshot {
    state: BatchState,
    units: Vec<String>,
    counts: BTreeMap<UnitState, usize>,
    usage: BTreeMap<String, u32>,
    fleet: BTreeMap<String, u32>,
}

fn snapshot(batch: &Batch, fleet: &BTreeMap<String, u32>) -> Snapshot {
    Snapshot {
        state: batch.state,
        // Debug covers every field of every record, history included.
        units: batch.units.iter().map(|u| format!("{u:?}")).collect(),
        counts: batch.counts().clone(),
        usage: batch.usage(),
        fleet: fleet.clone(),
    }
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

#[test]
fn roots_are_ready_and_dependents_pending_at_start() {
    let batch = batch(
        "",
        "  - {id: a}\n  - {id: b}\n  - {id: c, depends_on: [a]}\n  - {id: d, depends_on: [b, c]}",
    );
    assert_eq!(batch.state, BatchState::Running);
    assert_eq!(units_in(&batch, UnitState::Ready), ["a", "b"]);
    assert_eq!(units_in(&batch, UnitState::Pending), ["c", "d"]);
    assert!(batch
        .units
        .iter()
        .all(|u| u.history.is_empty() && u.attempt == 0));
    assert!(batch.needs_review().is_empty());
    assert_counts(&batch);
}

#[test]
fn dispatch_records_a_fresh_attempt_for_each_published_unit() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}\n  - {id: b}"));
    let effects = fleet.publish_at(&batch, NOW);
    assert_eq!(names(&fleet[&batch], &effects.publish), ["a", "b"]);
    assert_eq!(changed(&fleet[&batch], &effects), ["a", "b"]);
    for unit in ["a", "b"] {
        let record = &fleet[&batch].units[index(&fleet[&batch], unit)];
        assert_eq!(record.state, UnitState::Queued);
        assert_eq!(record.attempt, 1);
        let attempt = record.current().expect("an attempt is recorded");
        assert_eq!(attempt.attempt, 1);
        assert_eq!(attempt.published_at_ms, NOW);
        assert_eq!(attempt.outcome, None);
    }
    assert_ne!(
        session_of(&fleet[&batch], "a"),
        session_of(&fleet[&batch], "b")
    );
}

// ---------------------------------------------------------------------------
// The batch cap and the resources
// ---------------------------------------------------------------------------

#[test]
fn dispatch_never_puts_more_sessions_in_flight_than_the_concurrency_cap() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "concurrency: 2",
        "  - {id: a}\n  - {id: b}\n  - {id: c}\n  - {id: d}\n  - {id: e}",
    ));
    assert_eq!(fleet.publish(&batch), ["a", "b"]);
    assert!(fleet.publish(&batch).is_empty());
    assert_eq!(in_flight(&fleet[&batch]), 2);
    fleet.start(&batch, "a");
    assert!(
        fleet.publish(&batch).is_empty(),
        "a running session still holds its slot"
    );
    fleet.finish(&batch, "a", Outcome::Succeeded);
    assert_eq!(fleet.publish(&batch), ["c"]);
    assert_eq!(in_flight(&fleet[&batch]), 2);
    fleet.run(&batch, "b", Outcome::Succeeded);
    fleet.run(&batch, "c", Outcome::Succeeded);
    assert_eq!(fleet.publish(&batch), ["d", "e"]);
    assert_eq!(in_flight(&fleet[&batch]), 2);
    assert_counts(&fleet[&batch]);
}

#[test]
fn dispatch_respects_resource_capacities_with_weights() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "resources: {db: 3}",
        "  - {id: a, uses: {db: 2}}\n  - {id: b, uses: {db: 2}}\n  - {id: c, uses: {db: 1}}",
    ));
    assert_eq!(fleet.publish(&batch), ["a", "c"]);
    assert_eq!(fleet.used("db"), 3);
    assert_eq!(batch_usage(&fleet[&batch], "db"), 3);
    fleet.run(&batch, "c", Outcome::Succeeded);
    assert_eq!(fleet.used("db"), 2);
    assert!(
        fleet.publish(&batch).is_empty(),
        "b needs 2 of db and only 1 is free"
    );
    fleet.run(&batch, "a", Outcome::Succeeded);
    assert_eq!(fleet.used("db"), 0);
    assert_eq!(fleet.publish(&batch), ["b"]);
    assert_eq!(fleet.used("db"), 2);
    assert_eq!(batch_usage(&fleet[&batch], "db"), 2);
}

#[test]
fn two_batches_sharing_a_resource_name_share_its_capacity() {
    let mut fleet = Fleet::new();
    let first = fleet.add(batch_named(
        "first",
        "resources: {db: 2}",
        "  - {id: a1, uses: [db]}\n  - {id: a2, uses: [db]}\n  - {id: a3, uses: [db]}",
    ));
    let second = fleet.add(batch_named(
        "second",
        "resources: {db: 2}",
        "  - {id: b1, uses: [db]}",
    ));
    assert_eq!(fleet.publish(&first), ["a1", "a2"]);
    assert!(
        fleet.publish(&second).is_empty(),
        "the first batch holds all of db"
    );
    let waiting = fleet
        .waiting_for(&second, index(&fleet[&second], "b1"))
        .expect("b1 waits");
    assert!(waiting.contains("db"), "{waiting}");
    fleet.run(&first, "a1", Outcome::Succeeded);
    assert_eq!(fleet.publish(&second), ["b1"]);
    assert!(
        fleet.publish(&first).is_empty(),
        "the second batch now holds the free share"
    );
    assert_eq!(fleet.used("db"), 2);
    assert_eq!(batch_usage(&fleet[&first], "db"), 1);
    assert_eq!(batch_usage(&fleet[&second], "db"), 1);
    fleet.run(&second, "b1", Outcome::Succeeded);
    assert_eq!(fleet.publish(&first), ["a3"]);
    assert_eq!(fleet.used("db"), 2);
}

#[test]
fn a_touched_file_is_a_mutex_between_units() {
    let mut fleet = Fleet::new();
    // Touched files are named by their absolute path (workdir + path).
    let batch = fleet.add(batch(
        "",
        "  - {id: a, touches: [src/x.sql]}\n  - {id: b, touches: [src/./x.sql]}\n  - {id: c, touches: [src/y.sql]}",
    ));
    assert_eq!(fleet.publish(&batch), ["a", "c"]);
    assert_eq!(fleet.used("file:/tmp/src/x.sql"), 1);
    assert_eq!(fleet.used("file:/tmp/src/y.sql"), 1);
    let waiting = fleet
        .waiting_for(&batch, index(&fleet[&batch], "b"))
        .expect("b waits for the file");
    assert!(waiting.contains("src/x.sql"), "{waiting}");
    fleet.run(&batch, "a", Outcome::Succeeded);
    assert_eq!(fleet.used("file:/tmp/src/x.sql"), 0);
    assert_eq!(fleet.publish(&batch), ["b"]);
    assert_eq!(fleet.used("file:/tmp/src/x.sql"), 1);
}

#[test]
fn dispatch_order_is_priority_first_then_manifest_order() {
    let mut fleet = Fleet::new();
    let units = "  - {id: a}\n  - {id: b, priority: 5}\n  - {id: c, priority: -1}\n  - {id: d, priority: 5}\n  - {id: e}";
    let all_at_once = fleet.add(batch_named("all-at-once", "", units));
    assert_eq!(fleet.publish(&all_at_once), ["b", "d", "a", "e", "c"]);

    let one_by_one = fleet.add(batch_named("one-by-one", "concurrency: 1", units));
    let mut order = Vec::new();
    loop {
        let published = fleet.publish(&one_by_one);
        let Some(unit) = published.first() else {
            break;
        };
        assert_eq!(published.len(), 1);
        fleet.run(&one_by_one, unit, Outcome::Succeeded);
        order.push(unit.clone());
    }
    assert_eq!(order, ["b", "d", "a", "e", "c"]);
    assert_eq!(fleet[&one_by_one].state, BatchState::Succeeded);
}

#[test]
fn a_unit_that_becomes_ready_with_a_higher_priority_goes_before_older_ready_units() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "concurrency: 1",
        "  - {id: a}\n  - {id: b}\n  - {id: c, depends_on: [a], priority: 9}",
    ));
    assert_eq!(fleet.publish(&batch), ["a"]);
    fleet.run(&batch, "a", Outcome::Succeeded);
    assert_eq!(fleet.publish(&batch), ["c"]);
}

#[test]
fn a_unit_waiting_for_a_saturated_resource_does_not_hold_back_later_units() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "resources: {db: 1, api: 1}",
        "  - {id: a, uses: [db], priority: 2}\n  - {id: b, uses: [db], priority: 1}\n  - {id: c, uses: [api]}\n  - {id: d}",
    ));
    assert_eq!(fleet.publish(&batch), ["a", "c", "d"]);
    assert_eq!(state(&fleet[&batch], "b"), UnitState::Ready);
    let waiting = fleet
        .waiting_for(&batch, index(&fleet[&batch], "b"))
        .expect("b waits");
    assert!(waiting.contains("db"), "{waiting}");
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

#[test]
fn started_marks_the_unit_running_with_its_worker_fencing_and_start_time() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}"));
    fleet.publish(&batch);
    let effects = fleet.start(&batch, "a");
    assert_eq!(changed(&fleet[&batch], &effects), ["a"]);
    assert!(effects.publish.is_empty());
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Running);
    let attempt = fleet[&batch].units[0].current().expect("an attempt");
    assert_eq!(attempt.worker.as_deref(), Some("worker-1"));
    assert_eq!(attempt.fencing, FENCING);
    assert_eq!(attempt.started_at_ms, Some(NOW + 1));
    assert_counts(&fleet[&batch]);
}

#[test]
fn a_finished_session_records_its_outcome_exit_code_log_and_end() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("retries: 0", "  - {id: a}"));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Failed);
    let record = &fleet[&batch].units[0];
    let attempt = record.current().expect("an attempt");
    assert_eq!(attempt.outcome, Some(Outcome::Failed));
    assert_eq!(attempt.exit_code, Some(1));
    assert_eq!(attempt.ended_at_ms, Some(NOW + 100));
    assert_eq!(attempt.log_tail, "last line");
    assert_eq!(attempt.log_path, "/var/log/regatta/session.log");
    assert!(attempt.reason.as_deref().unwrap_or("").contains("Failed"));
    assert!(record.reason.as_deref().unwrap_or("").contains("Failed"));
}

#[test]
fn started_then_finished_succeeds_and_releases_a_dependent_only_when_all_its_dependencies_succeeded(
) {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "",
        "  - {id: a}\n  - {id: b}\n  - {id: c, depends_on: [a, b]}",
    ));
    assert_eq!(fleet.publish(&batch), ["a", "b"]);
    let effects = fleet.run(&batch, "a", Outcome::Succeeded);
    assert_eq!(changed(&fleet[&batch], &effects), ["a"]);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Succeeded);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Pending);
    assert!(fleet.publish(&batch).is_empty());
    let effects = fleet.run(&batch, "b", Outcome::Succeeded);
    assert_eq!(changed(&fleet[&batch], &effects), ["b", "c"]);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Ready);
    assert_eq!(fleet.publish(&batch), ["c"]);
    assert_counts(&fleet[&batch]);
}

#[test]
fn a_dependent_of_a_failed_unit_waiting_for_its_retry_stays_pending() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "retries: 1",
        "  - {id: a}\n  - {id: b, depends_on: [a]}",
    ));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Failed);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Ready);
    assert_eq!(state(&fleet[&batch], "b"), UnitState::Pending);
    assert_eq!(fleet.publish(&batch), ["a"]);
    fleet.run(&batch, "a", Outcome::Succeeded);
    assert_eq!(state(&fleet[&batch], "b"), UnitState::Ready);
}

#[test]
fn a_session_may_finish_without_a_started_event() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}\n  - {id: b, depends_on: [a]}"));
    fleet.publish(&batch);
    fleet.finish(&batch, "a", Outcome::Succeeded);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Succeeded);
    assert_eq!(state(&fleet[&batch], "b"), UnitState::Ready);
    assert_eq!(in_flight(&fleet[&batch]), 0);
}

/// A worker's `finished` of a session too short to have sent `started`.
fn short_session_finished(batch: &str, unit: &str, session: &str) -> SessionEvent {
    SessionEvent {
        batch_id: batch.into(),
        unit_id: unit.into(),
        session_id: session.into(),
        attempt: 1,
        fencing: FENCING,
        worker: "worker-2".into(),
        at_ms: NOW + 40,
        kind: EventKind::Finished {
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            duration_ms: 30,
            reason: None,
            log_tail: String::new(),
            log_path: String::new(),
            gates: Vec::new(),
            evidence: None,
            git: None,
            usage: None,
            started_at_ms: Some(NOW + 10),
            lease_wait_ms: Some(2),
        },
    }
}

#[test]
fn a_finished_without_started_records_where_and_when_the_session_ran() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}"));
    fleet.publish(&batch);
    let session = session_of(&fleet[&batch], "a");
    let event = short_session_finished(&batch, "a", &session);
    let effects = fleet.send(&batch, "a", Report::from_event(&event, NOW + 50));
    assert_eq!(changed(&fleet[&batch], &effects), ["a"]);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Succeeded);
    let attempt = fleet[&batch].units[0].current().expect("an attempt");
    // The timeline and the report read these: a short session has them too.
    assert_eq!(attempt.started_at_ms, Some(NOW + 10));
    assert_eq!(attempt.ended_at_ms, Some(NOW + 40));
    assert_eq!(attempt.worker.as_deref(), Some("worker-2"));
    assert_eq!(attempt.fencing, FENCING);
    assert_counts(&fleet[&batch]);

    // A `started` that comes late (it cannot from one worker, which sends
    // `finished` only after `started`'s confirm) changes nothing.
    let late = fleet.send(&batch, "a", started());
    assert!(late.changed.is_empty());
    let attempt = fleet[&batch].units[0].current().expect("an attempt");
    assert_eq!(attempt.started_at_ms, Some(NOW + 10));
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Succeeded);
}

#[test]
fn a_start_already_reported_by_started_is_kept_when_finished_carries_one_too() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}"));
    fleet.publish(&batch);
    fleet.start(&batch, "a");
    let session = session_of(&fleet[&batch], "a");
    let event = short_session_finished(&batch, "a", &session);
    fleet.send(&batch, "a", Report::from_event(&event, NOW + 50));
    let attempt = fleet[&batch].units[0].current().expect("an attempt");
    assert_eq!(
        attempt.started_at_ms,
        Some(NOW + 1),
        "the `started` event's own"
    );
    assert_eq!(attempt.worker.as_deref(), Some("worker-1"));
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Succeeded);
}

#[test]
fn events_of_a_stale_or_unknown_session_change_nothing() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "retries: 1\nresources: {db: 1}",
        "  - {id: a, uses: [db]}\n  - {id: b, depends_on: [a]}",
    ));
    fleet.publish(&batch);
    let old = session_of(&fleet[&batch], "a");
    fleet.run(&batch, "a", Outcome::Failed);
    assert_eq!(fleet.publish(&batch), ["a"]);
    let new = session_of(&fleet[&batch], "a");
    assert_ne!(old, new, "a retry runs under a new session");

    let before = snapshot(&fleet[&batch], fleet.usage());
    for session in [old.as_str(), "no-such-session", ""] {
        for report in [
            started(),
            finished(Outcome::Succeeded),
            finished(Outcome::Failed),
            Report::Deferred {
                reason: "late".into(),
                received_at_ms: NOW,
            },
        ] {
            let effects = fleet.report_for(&batch, "a", session, report);
            assert_eq!(effects, Effects::default(), "session {session:?}");
            assert_eq!(snapshot(&fleet[&batch], fleet.usage()), before);
        }
    }
    // A unit that was never published has no session to report about.
    let effects = fleet.report_for(&batch, "b", &new, finished(Outcome::Succeeded));
    assert_eq!(effects, Effects::default());
    assert_eq!(snapshot(&fleet[&batch], fleet.usage()), before);
}

#[test]
fn duplicated_events_change_nothing() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "resources: {db: 2}",
        "  - {id: a, uses: [db]}\n  - {id: b, uses: [db]}\n  - {id: c, depends_on: [a]}",
    ));
    fleet.publish(&batch);
    assert_eq!(fleet.used("db"), 2);

    fleet.start(&batch, "a");
    let before = snapshot(&fleet[&batch], fleet.usage());
    assert_eq!(fleet.start(&batch, "a"), Effects::default());
    assert_eq!(snapshot(&fleet[&batch], fleet.usage()), before);

    fleet.finish(&batch, "a", Outcome::Succeeded);
    assert_eq!(fleet.used("db"), 1);
    let before = snapshot(&fleet[&batch], fleet.usage());
    for report in [
        finished(Outcome::Succeeded),
        finished(Outcome::Failed),
        started(),
    ] {
        assert_eq!(fleet.send(&batch, "a", report), Effects::default());
        assert_eq!(
            snapshot(&fleet[&batch], fleet.usage()),
            before,
            "b's share of db must stay held"
        );
    }
    assert_eq!(fleet.used("db"), 1);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Ready);
    assert_counts(&fleet[&batch]);
}

#[test]
fn a_finished_report_under_another_fencing_number_than_the_claim_changes_nothing() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}"));
    fleet.publish(&batch);
    fleet.start(&batch, "a");
    let before = snapshot(&fleet[&batch], fleet.usage());
    let zombie = fleet.send(
        &batch,
        "a",
        finished_with_fencing(Outcome::Failed, FENCING - 1),
    );
    assert_eq!(zombie, Effects::default());
    assert_eq!(snapshot(&fleet[&batch], fleet.usage()), before);
    fleet.send(
        &batch,
        "a",
        finished_with_fencing(Outcome::Succeeded, FENCING),
    );
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Succeeded);
}

// ---------------------------------------------------------------------------
// Failures, retries and review
// ---------------------------------------------------------------------------

#[test]
fn a_failure_is_retried_as_a_new_attempt_with_a_new_session() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("retries: 2", "  - {id: a}"));
    fleet.publish(&batch);
    let first = session_of(&fleet[&batch], "a");
    fleet.run(&batch, "a", Outcome::Failed);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Ready);
    assert_eq!(fleet[&batch].units[0].failures, 1);
    assert!(
        fleet[&batch].units[0].reason.is_some(),
        "the failure is explained"
    );
    assert_eq!(fleet.publish(&batch), ["a"]);
    let record = &fleet[&batch].units[0];
    assert_eq!(record.attempt, 2);
    assert_eq!(record.history.len(), 2);
    assert_eq!(record.history[0].outcome, Some(Outcome::Failed));
    assert_eq!(record.history[0].session_id, first);
    assert_eq!(record.history[1].attempt, 2);
    assert_ne!(record.history[1].session_id, first);
    assert_eq!(fleet[&batch].state, BatchState::Running);
}

#[test]
fn a_unit_needs_review_once_its_retries_are_used_up() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("retries: 2", "  - {id: a}\n  - {id: b}"));
    fleet.publish(&batch);
    fleet.run(&batch, "b", Outcome::Succeeded);
    for failure in 1..=3 {
        assert_eq!(
            state(&fleet[&batch], "a"),
            UnitState::Queued,
            "attempt {failure}"
        );
        fleet.run(&batch, "a", Outcome::Failed);
        assert_eq!(fleet[&batch].units[0].failures, failure);
        fleet.publish(&batch);
    }
    let record = &fleet[&batch].units[0];
    assert_eq!(record.state, UnitState::NeedsReview);
    assert_eq!(record.history.len(), 3);
    let sessions: BTreeSet<&str> = record
        .history
        .iter()
        .map(|a| a.session_id.as_str())
        .collect();
    assert_eq!(sessions.len(), 3, "every attempt has its own session");
    assert_eq!(fleet[&batch].needs_review(), [0]);
    assert!(fleet.publish(&batch).is_empty());
    assert_eq!(fleet[&batch].state, BatchState::Failed);
}

#[test]
fn an_over_budget_session_goes_to_review_unless_the_playbook_retries_it() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("retries: 3", "  - {id: a}"));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::OverBudget);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::NeedsReview);
    assert_eq!(fleet[&batch].units[0].failures, 1);

    let yaml = "batch: r\nplaybook: {name: p, run: 'true', retry_over_budget: true}\nretries: 1\nunits:\n  - {id: a}\n  - {id: b, retries: 0}\n";
    let manifest = manifest(yaml);
    let dag = Dag::build(&manifest).expect("a valid manifest builds its DAG");
    let batch = fleet.add(Batch::new("r-1".into(), manifest, dag));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::OverBudget);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Ready, "retried");
    // The unit's own `retries: 0` overrides the batch's.
    fleet.run(&batch, "b", Outcome::OverBudget);
    assert_eq!(state(&fleet[&batch], "b"), UnitState::NeedsReview);
}

#[test]
fn a_finished_sessions_usage_is_kept_on_its_attempt() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}"));
    fleet.publish(&batch);
    fleet.start(&batch, "a");
    let usage = regatta_proto::Usage {
        tokens_in: 10,
        tokens_out: 5,
        turns: 2,
        cost_usd: Some(0.25),
        ..Default::default()
    };
    let Report::Finished(mut finish) = finished(Outcome::OverBudget) else {
        unreachable!("finished() is a finish")
    };
    finish.usage = Some(usage.clone());
    fleet.send(&batch, "a", Report::Finished(finish));
    let attempt = &fleet[&batch].units[0].history[0];
    assert_eq!(attempt.outcome, Some(Outcome::OverBudget));
    assert_eq!(attempt.usage.as_ref(), Some(&usage));
}

#[test]
fn with_no_retries_the_first_failure_needs_review() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("retries: 0", "  - {id: a}"));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Failed);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::NeedsReview);
    assert_eq!(fleet[&batch].state, BatchState::Failed);
}

#[test]
fn a_unit_in_review_blocks_every_descendant_while_independent_units_go_on() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "retries: 0",
        "  - {id: a}\n  - {id: b, depends_on: [a]}\n  - {id: c, depends_on: [b]}\n  - {id: d, depends_on: [a]}\n  - {id: e}\n  - {id: f, depends_on: [e]}\n  - {id: g, depends_on: [c, e]}",
    ));
    assert_eq!(fleet.publish(&batch), ["a", "e"]);
    let effects = fleet.run(&batch, "a", Outcome::Failed);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::NeedsReview);
    assert_eq!(
        units_in(&fleet[&batch], UnitState::Blocked),
        ["b", "c", "d", "g"]
    );
    assert_eq!(changed(&fleet[&batch], &effects), ["a", "b", "c", "d", "g"]);
    for unit in ["b", "c", "d", "g"] {
        let reason = fleet[&batch].units[index(&fleet[&batch], unit)]
            .reason
            .clone();
        assert!(
            reason.as_deref().unwrap_or("").contains("'a'"),
            "{unit}: {reason:?}"
        );
    }
    assert_eq!(fleet[&batch].state, BatchState::Running, "e still runs");
    fleet.run(&batch, "e", Outcome::Succeeded);
    assert_eq!(state(&fleet[&batch], "f"), UnitState::Ready);
    assert_eq!(
        state(&fleet[&batch], "g"),
        UnitState::Blocked,
        "g stays blocked by a"
    );
    assert_eq!(fleet.publish(&batch), ["f"]);
    fleet.run(&batch, "f", Outcome::Succeeded);
    assert_eq!(fleet[&batch].state, BatchState::Failed);
    assert_counts(&fleet[&batch]);
}

#[test]
fn interrupted_does_not_count_against_retries() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("retries: 0", "  - {id: a}"));
    for attempt in 1..=3 {
        assert_eq!(fleet.publish(&batch), ["a"], "attempt {attempt}");
        fleet.run(&batch, "a", Outcome::Interrupted);
        assert_eq!(state(&fleet[&batch], "a"), UnitState::Ready);
        assert_eq!(fleet[&batch].units[0].failures, 0);
    }
    assert_eq!(fleet[&batch].units[0].history.len(), 3);
    assert_eq!(fleet.publish(&batch), ["a"]);
    fleet.run(&batch, "a", Outcome::Failed);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::NeedsReview);
}

#[test]
fn lost_and_timed_out_count_against_retries() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("retries: 1", "  - {id: a}\n  - {id: b}"));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Lost);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Ready);
    assert_eq!(fleet[&batch].units[0].failures, 1);
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::TimedOut);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::NeedsReview);
    assert_eq!(fleet[&batch].units[0].failures, 2);

    fleet.run(&batch, "b", Outcome::TimedOut);
    assert_eq!(state(&fleet[&batch], "b"), UnitState::Ready);
    assert_eq!(fleet[&batch].units[1].failures, 1);
}

// ---------------------------------------------------------------------------
// Deferral
// ---------------------------------------------------------------------------

#[test]
fn a_deferred_unit_goes_back_to_ready_without_using_an_attempt() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "retries: 1\nresources: {db: 1}",
        "  - {id: a, uses: [db]}",
    ));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Failed);
    assert_eq!(fleet.publish(&batch), ["a"]);
    assert_eq!(fleet[&batch].units[0].history.len(), 2);

    let effects = fleet.defer(&batch, "a");
    assert_eq!(changed(&fleet[&batch], &effects), ["a"]);
    let record = &fleet[&batch].units[0];
    assert_eq!(record.state, UnitState::Ready);
    assert_eq!(record.failures, 1, "a deferral is no failure");
    assert_eq!(record.attempt, 1, "the deferred attempt is taken back");
    assert_eq!(record.history.len(), 1);
    assert_eq!(record.history[0].outcome, Some(Outcome::Failed));
    assert_eq!(
        record.reason.as_deref(),
        Some("the database is in maintenance")
    );
    assert_eq!(fleet.used("db"), 0);
    assert_eq!(batch_usage(&fleet[&batch], "db"), 0);
    assert_eq!(in_flight(&fleet[&batch]), 0);
    assert_counts(&fleet[&batch]);
}

#[test]
fn a_deferred_unit_is_not_dispatched_again_at_once_and_does_not_hold_back_others() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("concurrency: 1", "  - {id: a}\n  - {id: b}"));
    assert_eq!(fleet.publish(&batch), ["a"]);
    fleet.defer(&batch, "a");
    assert_eq!(fleet.publish(&batch), ["b"]);
    fleet.run(&batch, "b", Outcome::Succeeded);
    assert!(fleet.publish(&batch).is_empty(), "a's delay has not passed");
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Ready);
}

#[test]
fn a_deferred_unit_is_dispatched_again_once_its_delay_has_passed() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}"));
    let first = fleet.publish_at(&batch, NOW);
    assert_eq!(names(&fleet[&batch], &first.publish), ["a"]);
    fleet.defer(&batch, "a");
    assert!(fleet.publish_at(&batch, NOW).publish.is_empty());
    let later = fleet.publish_at(&batch, NOW + HOUR_MS);
    assert_eq!(
        names(&fleet[&batch], &later.publish),
        ["a"],
        "an hour after the deferral, the unit runs again"
    );
}

#[test]
fn a_deferral_from_a_worker_an_hour_ahead_waits_only_the_defer_period_of_the_coordinators_clock() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}"));
    assert_eq!(fleet.publish(&batch), ["a"]);
    // The worker's clock runs an hour ahead of the coordinator's.
    let event = SessionEvent {
        batch_id: fleet[&batch].id.clone(),
        unit_id: "a".into(),
        session_id: session_of(&fleet[&batch], "a"),
        attempt: 1,
        fencing: 0,
        worker: "worker-ahead".into(),
        at_ms: NOW + HOUR_MS,
        kind: EventKind::Deferred {
            reason: "waiting for db".into(),
        },
    };
    let effects = fleet.send(&batch, "a", Report::from_event(&event, NOW));
    assert!(effects.changed.contains(&0), "the hand-back applies");
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Ready);
    assert!(
        fleet
            .publish_at(&batch, NOW + DEFER_MS - 1)
            .publish
            .is_empty(),
        "the unit waits its defer period"
    );
    let again = fleet.publish_at(&batch, NOW + DEFER_MS);
    assert_eq!(
        names(&fleet[&batch], &again.publish),
        ["a"],
        "{DEFER_MS} ms after the coordinator received the deferral, by its own clock, the unit \
         runs again, whatever the worker's clock said"
    );
}

#[test]
fn waiting_for_says_a_deferred_unit_waits_for_its_delay() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}"));
    fleet.publish(&batch);
    fleet.defer(&batch, "a");
    assert!(fleet.publish_at(&batch, NOW).publish.is_empty());
    assert!(
        fleet.waiting_for(&batch, 0).is_some(),
        "a ready unit that dispatch skips waits for something"
    );
}

// ---------------------------------------------------------------------------
// The batch's end
// ---------------------------------------------------------------------------

#[test]
fn a_batch_succeeds_when_every_unit_succeeded() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}\n  - {id: b, depends_on: [a]}"));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Succeeded);
    assert_eq!(fleet[&batch].state, BatchState::Running);
    fleet.publish(&batch);
    fleet.run(&batch, "b", Outcome::Succeeded);
    assert_eq!(fleet[&batch].state, BatchState::Succeeded);
    assert!(fleet.publish(&batch).is_empty());
}

#[test]
fn a_batch_fails_only_once_nothing_can_move_and_some_units_need_review_or_are_blocked() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "retries: 0",
        "  - {id: a}\n  - {id: b, depends_on: [a]}\n  - {id: c}",
    ));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Failed);
    assert_eq!(
        fleet[&batch].state,
        BatchState::Running,
        "c is still in flight"
    );
    fleet.run(&batch, "c", Outcome::Succeeded);
    assert_eq!(fleet[&batch].state, BatchState::Failed);
    assert_eq!(units_in(&fleet[&batch], UnitState::Blocked), ["b"]);
}

// ---------------------------------------------------------------------------
// Cancel, pause, resume
// ---------------------------------------------------------------------------

/// A batch with a unit in every state: a needs review, b is blocked, c
/// succeeded, d and g are queued, e is running, f is pending, h is ready.
fn batch_in_every_state(fleet: &mut Fleet) -> String {
    let batch = fleet.add(batch(
        "retries: 0\nconcurrency: 3\nresources: {db: 5}",
        "  - {id: a}\n  - {id: b, depends_on: [a]}\n  - {id: c}\n  - {id: d, uses: {db: 2}}\n  - {id: e, uses: [db]}\n  - {id: f, depends_on: [e]}\n  - {id: g, uses: [db]}\n  - {id: h, uses: [db]}",
    ));
    assert_eq!(fleet.publish(&batch), ["a", "c", "d"]);
    fleet.run(&batch, "a", Outcome::Failed);
    fleet.run(&batch, "c", Outcome::Succeeded);
    assert_eq!(fleet.publish(&batch), ["e", "g"]);
    fleet.start(&batch, "e");
    assert_eq!(state(&fleet[&batch], "b"), UnitState::Blocked);
    assert_eq!(state(&fleet[&batch], "f"), UnitState::Pending);
    assert_eq!(state(&fleet[&batch], "h"), UnitState::Ready);
    assert_eq!(fleet.used("db"), 4);
    batch
}

#[test]
fn cancel_marks_every_live_unit_cancelled_and_keeps_the_sessions_it_cut_short() {
    let mut fleet = Fleet::new();
    let batch = batch_in_every_state(&mut fleet);
    let in_flight_sessions: Vec<String> = ["d", "e", "g"]
        .iter()
        .map(|u| session_of(&fleet[&batch], u))
        .collect();
    let effects = fleet.cancel(&batch);
    assert_eq!(fleet[&batch].state, BatchState::Cancelled);
    assert!(effects.publish.is_empty());
    assert_eq!(fleet[&batch].in_flight_units().count(), 0);
    // The sessions that were in flight stay in the history, for the record
    // and so that their workers' late reports are recognised as stale.
    let current: Vec<String> = ["d", "e", "g"]
        .iter()
        .map(|u| session_of(&fleet[&batch], u))
        .collect();
    assert_eq!(current, in_flight_sessions);
    for unit in ["d", "e", "f", "g", "h"] {
        assert_eq!(state(&fleet[&batch], unit), UnitState::Cancelled, "{unit}");
        assert!(changed(&fleet[&batch], &effects).contains(&unit.to_owned()));
    }
    assert_eq!(state(&fleet[&batch], "a"), UnitState::NeedsReview);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Succeeded);
    for live in [
        UnitState::Pending,
        UnitState::Ready,
        UnitState::Queued,
        UnitState::Running,
    ] {
        assert_eq!(fleet[&batch].count(live), 0, "{}", live.as_str());
    }
    assert_counts(&fleet[&batch]);
}

#[test]
fn cancel_frees_the_batchs_share_of_the_fleet_usage_and_late_results_change_nothing() {
    let mut fleet = Fleet::new();
    let other = fleet.add(batch_named(
        "other",
        "resources: {db: 5}",
        "  - {id: x, uses: [db]}\n  - {id: y, uses: {db: 3}}",
    ));
    assert_eq!(fleet.publish(&other), ["x", "y"]);
    let batch = fleet.add(batch(
        "resources: {db: 5}",
        "  - {id: a, uses: [db]}\n  - {id: b, uses: [db]}",
    ));
    assert_eq!(fleet.publish(&batch), ["a"]);
    assert_eq!(fleet.used("db"), 5);
    fleet.start(&batch, "a");

    let revoked_session = session_of(&fleet[&batch], "a");
    fleet.cancel(&batch);
    assert_eq!(fleet.used("db"), 4, "only the other batch's shares remain");
    assert_eq!(batch_usage(&fleet[&batch], "db"), 0);
    assert_eq!(in_flight(&fleet[&batch]), 0);

    // The killed session reports late; the other batch's shares stay held.
    let before = snapshot(&fleet[&batch], fleet.usage());
    for report in [
        finished(Outcome::Cancelled),
        finished(Outcome::Succeeded),
        finished(Outcome::Failed),
    ] {
        let effects = fleet.report_for(&batch, "a", &revoked_session, report);
        assert_eq!(effects, Effects::default());
        assert_eq!(snapshot(&fleet[&batch], fleet.usage()), before);
    }
    assert_eq!(fleet.used("db"), 4);
}

#[test]
fn dispatch_after_cancel_publishes_nothing_and_review_is_refused() {
    let mut fleet = Fleet::new();
    let batch = batch_in_every_state(&mut fleet);
    fleet.cancel(&batch);
    assert_eq!(fleet.publish_at(&batch, NOW), Effects::default());
    assert_eq!(fleet.publish_at(&batch, NOW + HOUR_MS), Effects::default());
    let a = index(&fleet[&batch], "a");
    assert!(fleet[&batch].retry(a).is_err());
    assert!(fleet[&batch].skip(a).is_err());
    assert_eq!(state(&fleet[&batch], "a"), UnitState::NeedsReview);
    assert_eq!(fleet.cancel(&batch), Effects::default());
    assert!(!fleet[&batch].pause());
    assert!(!fleet[&batch].resume());
    assert_eq!(fleet[&batch].state, BatchState::Cancelled);
}

#[test]
fn cancel_of_a_finished_batch_changes_nothing() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}"));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Succeeded);
    assert_eq!(fleet[&batch].state, BatchState::Succeeded);
    assert_eq!(fleet.cancel(&batch), Effects::default());
    assert_eq!(fleet[&batch].state, BatchState::Succeeded);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Succeeded);
}

#[test]
fn pause_holds_new_starts_while_running_sessions_finish_and_resume_releases_them() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("concurrency: 1", "  - {id: a}\n  - {id: b}"));
    assert_eq!(fleet.publish(&batch), ["a"]);
    assert!(fleet[&batch].pause());
    assert!(!fleet[&batch].pause(), "already paused");
    assert_eq!(fleet[&batch].state, BatchState::Paused);
    fleet.run(&batch, "a", Outcome::Succeeded);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Succeeded);
    assert_eq!(fleet.publish_at(&batch, NOW), Effects::default());
    let waiting = fleet
        .waiting_for(&batch, index(&fleet[&batch], "b"))
        .expect("b waits");
    assert!(waiting.contains("paused"), "{waiting}");
    assert!(fleet[&batch].resume());
    assert!(!fleet[&batch].resume(), "already running");
    assert_eq!(fleet[&batch].state, BatchState::Running);
    assert_eq!(fleet.publish(&batch), ["b"]);
}

// ---------------------------------------------------------------------------
// Human review: retry and skip
// ---------------------------------------------------------------------------

#[test]
fn retry_of_a_unit_in_review_unblocks_its_descendants_and_resets_its_failure_budget() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "retries: 1",
        "  - {id: a}\n  - {id: b, depends_on: [a]}\n  - {id: c, depends_on: [b]}",
    ));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Failed);
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Failed);
    assert_eq!(fleet[&batch].state, BatchState::Failed);
    assert_eq!(units_in(&fleet[&batch], UnitState::Blocked), ["b", "c"]);

    let effects = fleet.retry_unit(&batch, "a").expect("a needs review");
    assert_eq!(changed(&fleet[&batch], &effects), ["a", "b", "c"]);
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Ready);
    assert_eq!(fleet[&batch].units[0].failures, 0);
    assert_eq!(units_in(&fleet[&batch], UnitState::Pending), ["b", "c"]);
    assert!(fleet[&batch].units[1].reason.is_none());
    assert_eq!(fleet[&batch].state, BatchState::Running);
    assert_counts(&fleet[&batch]);

    assert_eq!(fleet.publish(&batch), ["a"]);
    assert_eq!(fleet[&batch].units[0].attempt, 3);
    fleet.run(&batch, "a", Outcome::Failed);
    assert_eq!(
        state(&fleet[&batch], "a"),
        UnitState::Ready,
        "the reset budget allows one retry again"
    );
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Succeeded);
    assert_eq!(state(&fleet[&batch], "b"), UnitState::Ready);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Pending);
}

#[test]
fn retry_leaves_blocked_the_descendants_that_another_unit_in_review_still_holds() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "retries: 0",
        "  - {id: a}\n  - {id: x}\n  - {id: b, depends_on: [a]}\n  - {id: c, depends_on: [a, x]}\n  - {id: d, depends_on: [c]}",
    ));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Failed);
    fleet.run(&batch, "x", Outcome::Failed);
    assert_eq!(
        units_in(&fleet[&batch], UnitState::Blocked),
        ["b", "c", "d"]
    );

    fleet.retry_unit(&batch, "a").expect("a needs review");
    assert_eq!(state(&fleet[&batch], "b"), UnitState::Pending);
    assert_eq!(
        state(&fleet[&batch], "c"),
        UnitState::Blocked,
        "x still holds c"
    );
    assert_eq!(
        state(&fleet[&batch], "d"),
        UnitState::Blocked,
        "x still holds d"
    );

    fleet.retry_unit(&batch, "x").expect("x needs review");
    assert_eq!(
        units_in(&fleet[&batch], UnitState::Pending),
        ["b", "c", "d"]
    );
    assert_eq!(fleet.publish(&batch), ["a", "x"]);
    fleet.run(&batch, "a", Outcome::Succeeded);
    assert_eq!(state(&fleet[&batch], "b"), UnitState::Ready);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Pending);
    fleet.run(&batch, "x", Outcome::Succeeded);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Ready);
    assert_counts(&fleet[&batch]);
}

#[test]
fn a_dependency_that_succeeds_while_its_dependent_is_blocked_still_counts_after_the_retry() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "retries: 0",
        "  - {id: a}\n  - {id: y}\n  - {id: c, depends_on: [a, y]}",
    ));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Failed);
    fleet.run(&batch, "y", Outcome::Succeeded);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Blocked);
    fleet.retry_unit(&batch, "a").expect("a needs review");
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Pending);
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Succeeded);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Ready);
}

#[test]
fn skip_lets_dependents_run_and_counts_as_done() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "retries: 0",
        "  - {id: a}\n  - {id: b, depends_on: [a]}\n  - {id: c, depends_on: [b]}",
    ));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Failed);
    assert_eq!(fleet[&batch].state, BatchState::Failed);

    let effects = fleet.skip_unit(&batch, "a").expect("a needs review");
    assert!(changed(&fleet[&batch], &effects).contains(&"b".to_owned()));
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Skipped);
    assert_eq!(state(&fleet[&batch], "b"), UnitState::Ready);
    assert_eq!(state(&fleet[&batch], "c"), UnitState::Pending);
    assert_eq!(fleet[&batch].state, BatchState::Running);
    assert_counts(&fleet[&batch]);

    assert_eq!(fleet.publish(&batch), ["b"]);
    fleet.run(&batch, "b", Outcome::Succeeded);
    assert_eq!(fleet.publish(&batch), ["c"]);
    fleet.run(&batch, "c", Outcome::Succeeded);
    assert_eq!(fleet[&batch].state, BatchState::Succeeded);
    assert_eq!(fleet[&batch].count(UnitState::Skipped), 1);
}

#[test]
fn skip_of_the_last_unit_in_review_ends_the_batch_succeeded() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("retries: 0", "  - {id: a}\n  - {id: b}"));
    fleet.publish(&batch);
    fleet.run(&batch, "a", Outcome::Succeeded);
    fleet.run(&batch, "b", Outcome::Failed);
    assert_eq!(fleet[&batch].state, BatchState::Failed);
    fleet.skip_unit(&batch, "b").expect("b needs review");
    assert_eq!(fleet[&batch].state, BatchState::Succeeded);
    assert!(fleet.publish(&batch).is_empty());
}

#[test]
fn retry_or_skip_of_a_unit_not_in_review_is_an_error_naming_the_unit_and_its_state() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "retries: 0",
        "  - {id: alpha}\n  - {id: beta, depends_on: [alpha]}\n  - {id: gamma}",
    ));
    let gamma = index(&fleet[&batch], "gamma");
    let error = fleet[&batch].retry(gamma).expect_err("gamma is ready");
    assert!(
        error.contains("gamma") && error.contains("ready"),
        "{error}"
    );

    fleet.publish(&batch);
    fleet.start(&batch, "gamma");
    let error = fleet[&batch].skip(gamma).expect_err("gamma is running");
    assert!(
        error.contains("gamma") && error.contains("running"),
        "{error}"
    );
    fleet.finish(&batch, "gamma", Outcome::Succeeded);
    let error = fleet[&batch].retry(gamma).expect_err("gamma succeeded");
    assert!(
        error.contains("gamma") && error.contains("succeeded"),
        "{error}"
    );

    fleet.run(&batch, "alpha", Outcome::Failed);
    let before = snapshot(&fleet[&batch], fleet.usage());
    let beta = index(&fleet[&batch], "beta");
    for error in [fleet[&batch].retry(beta), fleet[&batch].skip(beta)] {
        let error = error.expect_err("beta is blocked");
        assert!(
            error.contains("beta") && error.contains("blocked"),
            "{error}"
        );
    }
    assert_eq!(
        snapshot(&fleet[&batch], fleet.usage()),
        before,
        "a refused review changes nothing"
    );
}

// ---------------------------------------------------------------------------
// What a ready unit waits for
// ---------------------------------------------------------------------------

#[test]
fn waiting_for_names_the_batch_cap_or_the_resource() {
    let mut fleet = Fleet::new();
    let capped = fleet.add(batch_named(
        "capped",
        "concurrency: 1",
        "  - {id: a}\n  - {id: b}",
    ));
    assert_eq!(
        fleet.waiting_for(&capped, index(&fleet[&capped], "a")),
        None
    );
    fleet.publish(&capped);
    let waiting = fleet
        .waiting_for(&capped, index(&fleet[&capped], "b"))
        .expect("b waits");
    assert!(waiting.contains("batch cap"), "{waiting}");
    assert_eq!(
        fleet.waiting_for(&capped, index(&fleet[&capped], "a")),
        None,
        "a queued unit waits for nothing"
    );

    let limited = fleet.add(batch_named(
        "limited",
        "resources: {orders-db: 2}",
        "  - {id: a, uses: {orders-db: 2}}\n  - {id: b, uses: [orders-db]}\n  - {id: c, depends_on: [a]}",
    ));
    fleet.publish(&limited);
    let waiting = fleet
        .waiting_for(&limited, index(&fleet[&limited], "b"))
        .expect("b waits");
    assert!(waiting.contains("orders-db"), "{waiting}");
    assert_eq!(
        fleet.waiting_for(&limited, index(&fleet[&limited], "c")),
        None,
        "a pending unit is not waiting for a slot"
    );
}

// ---------------------------------------------------------------------------
// A longer scenario
// ---------------------------------------------------------------------------

/// Takes one step of a scenario, then checks the counts and the caps.
fn checked(fleet: &mut Fleet, batch: &str, step: impl FnOnce(&mut Fleet, &str)) {
    step(fleet, batch);
    assert_counts(&fleet[batch]);
    assert!(in_flight(&fleet[batch]) <= fleet[batch].manifest.concurrency as usize);
    assert!(fleet.used("db") <= 1);
    assert!(fleet.used("file:/tmp/x.txt") <= 1);
}

#[test]
fn counts_always_sum_to_the_number_of_units_through_a_long_scenario() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch(
        "retries: 1\nconcurrency: 2\nresources: {db: 1}",
        "  - {id: a, uses: [db]}\n  - {id: b, uses: [db]}\n  - {id: c, depends_on: [a]}\n  - {id: d, depends_on: [b]}\n  - {id: e, depends_on: [c, d]}\n  - {id: f}\n  - {id: g, touches: [x.txt]}\n  - {id: h, touches: [x.txt], depends_on: [f]}",
    ));
    assert_counts(&fleet[&batch]);
    checked(&mut fleet, &batch, |f, b| {
        assert_eq!(f.publish(b), ["a", "f"]);
    });
    checked(&mut fleet, &batch, |f, b| {
        f.start(b, "a");
    });
    checked(&mut fleet, &batch, |f, b| {
        f.finish(b, "a", Outcome::Failed);
    });
    checked(&mut fleet, &batch, |f, b| {
        assert_eq!(f.publish(b), ["a"]);
    });
    checked(&mut fleet, &batch, |f, b| {
        f.defer(b, "a");
    });
    checked(&mut fleet, &batch, |f, b| {
        assert_eq!(f.publish(b), ["b"]);
    });
    checked(&mut fleet, &batch, |f, b| {
        f.run(b, "f", Outcome::Interrupted);
    });
    checked(&mut fleet, &batch, |f, b| {
        assert_eq!(f.publish(b), ["f"]);
    });
    checked(&mut fleet, &batch, |f, b| {
        f.run(b, "f", Outcome::Succeeded);
    });
    checked(&mut fleet, &batch, |f, b| {
        f.run(b, "b", Outcome::Succeeded);
    });
    checked(&mut fleet, &batch, |f, b| {
        // a is still in its deferral delay.
        assert_eq!(f.publish(b), ["d", "g"]);
    });
    checked(&mut fleet, &batch, |f, b| {
        f.run(b, "g", Outcome::Lost);
    });
    checked(&mut fleet, &batch, |f, b| {
        f.run(b, "d", Outcome::Succeeded);
    });
    checked(&mut fleet, &batch, |f, b| {
        // g (retry) and h share x.txt: only one of them may run.
        let published = f.publish(b);
        assert_eq!(published, ["g"], "{published:?}");
    });
    checked(&mut fleet, &batch, |f, b| {
        f.run(b, "g", Outcome::TimedOut);
    });
    checked(&mut fleet, &batch, |f, b| {
        assert_eq!(state(&f[b], "g"), UnitState::NeedsReview);
        assert_eq!(f.publish(b), ["h"]);
    });
    checked(&mut fleet, &batch, |f, b| {
        f.run(b, "h", Outcome::Succeeded);
    });
    checked(&mut fleet, &batch, |f, b| {
        f.skip_unit(b, "g").expect("g needs review");
    });
    checked(&mut fleet, &batch, |f, b| {
        assert!(f[b].pause());
    });
    checked(&mut fleet, &batch, |f, b| {
        assert!(f[b].resume());
    });
    checked(&mut fleet, &batch, |f, b| {
        // Later than any clock, so that a's deferral is over whichever
        // clock times it.
        let effects = f.publish_at(b, i64::MAX / 4);
        assert_eq!(names(&f[b], &effects.publish), ["a"]);
    });
    checked(&mut fleet, &batch, |f, b| {
        f.run(b, "a", Outcome::Failed);
    });
    checked(&mut fleet, &batch, |f, b| {
        assert_eq!(units_in(&f[b], UnitState::Blocked), ["c", "e"]);
        assert_eq!(f[b].state, BatchState::Failed);
        f.retry_unit(b, "a").expect("a needs review");
    });
    for unit in ["a", "c", "e"] {
        checked(&mut fleet, &batch, |f, b| {
            assert_eq!(f.publish(b), [unit]);
            f.run(b, unit, Outcome::Succeeded);
        });
    }
    assert_eq!(fleet[&batch].state, BatchState::Succeeded);
    assert_eq!(fleet[&batch].count(UnitState::Succeeded), 7);
    assert_eq!(fleet[&batch].count(UnitState::Skipped), 1);
}

// ---------------------------------------------------------------------------
// Randomized
// ---------------------------------------------------------------------------

/// SplitMix64: small, deterministic, good enough to shuffle test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Writes a random valid manifest of 20 to 50 units over the given resources.
fn random_manifest(rng: &mut Rng, name: &str, resources: &BTreeMap<String, u32>) -> String {
    let units = rng.between(20, 50) as usize;
    let resource_list = resources
        .iter()
        .map(|(r, c)| format!("{r}: {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut yaml = format!(
        "batch: {name}\nplaybook: {{name: p, run: 'true'}}\nconcurrency: {}\nretries: {}\nresources: {{{resource_list}}}\nunits:\n",
        rng.between(1, 6),
        rng.between(0, 2),
    );
    for unit in 0..units {
        let mut fields = vec![format!("id: u{unit}")];
        if unit > 0 {
            let mut deps = BTreeSet::new();
            for _ in 0..rng.below(4) {
                // Mostly near neighbours, for deep chains as well as wide fans.
                let back = if rng.chance(70) {
                    rng.between(1, 5.min(unit as u64))
                } else {
                    rng.between(1, unit as u64)
                };
                deps.insert(format!("u{}", unit - back as usize));
            }
            if !deps.is_empty() {
                let deps: Vec<String> = deps.into_iter().collect();
                fields.push(format!("depends_on: [{}]", deps.join(", ")));
            }
        }
        let mut uses = Vec::new();
        for (resource, capacity) in resources {
            if rng.chance(30) {
                uses.push(format!(
                    "{resource}: {}",
                    rng.between(1, u64::from(*capacity))
                ));
            }
        }
        if !uses.is_empty() {
            fields.push(format!("uses: {{{}}}", uses.join(", ")));
        }
        if rng.chance(25) {
            let first = rng.below(4);
            let second = rng.below(4);
            let mut files = vec![format!("f{first}.sql")];
            if second != first && rng.chance(30) {
                files.push(format!("f{second}.sql"));
            }
            fields.push(format!("touches: [{}]", files.join(", ")));
        }
        if rng.chance(30) {
            fields.push(format!("priority: {}", rng.between(0, 4) as i64 - 2));
        }
        yaml.push_str(&format!("  - {{{}}}\n", fields.join(", ")));
    }
    yaml
}

/// Every unit that a unit depends on, directly or not.
fn all_ancestors(dag: &Dag) -> Vec<Vec<usize>> {
    (0..dag.len())
        .map(|unit| {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<usize> = dag.dependencies(unit).collect();
            while let Some(next) = stack.pop() {
                if seen.insert(next) {
                    stack.extend(dag.dependencies(next));
                }
            }
            seen.into_iter().collect()
        })
        .collect()
}

fn is_live(state: UnitState) -> bool {
    matches!(
        state,
        UnitState::Pending | UnitState::Ready | UnitState::Queued | UnitState::Running
    )
}

/// Checks every invariant of the fleet; `context` says where the run is.
fn check_invariants(fleet: &Fleet, ids: &[String], ancestors: &[Vec<Vec<usize>>], context: &str) {
    let mut fleet_expected: BTreeMap<String, u32> = BTreeMap::new();
    for (id, ancestors) in ids.iter().zip(ancestors) {
        let batch = &fleet[id];
        assert_counts(batch);
        let flying = in_flight(batch);
        assert!(
            flying <= batch.manifest.concurrency as usize,
            "{context}: {id} has {flying} sessions in flight, cap {}",
            batch.manifest.concurrency
        );
        let mut batch_expected: BTreeMap<String, u32> = BTreeMap::new();
        for (unit, record) in batch.units.iter().enumerate() {
            let deps_done = batch
                .dag
                .dependencies(unit)
                .all(|d| batch.units[d].state.satisfies_dependents());
            let held_by_review = ancestors[unit]
                .iter()
                .any(|&a| batch.units[a].state == UnitState::NeedsReview);
            match record.state {
                UnitState::Ready | UnitState::Queued | UnitState::Running => assert!(
                    deps_done,
                    "{context}: {id}/{} is {} before its dependencies are done",
                    record.id,
                    record.state.as_str()
                ),
                UnitState::Pending => assert!(
                    !deps_done,
                    "{context}: {id}/{} is pending though its dependencies are done",
                    record.id
                ),
                UnitState::Blocked => assert!(
                    held_by_review,
                    "{context}: {id}/{} is blocked with no ancestor in review",
                    record.id
                ),
                _ => {}
            }
            if is_live(record.state) {
                assert!(
                    !held_by_review,
                    "{context}: {id}/{} is {} under an ancestor in review",
                    record.id,
                    record.state.as_str()
                );
            }
            if record.state.is_in_flight() {
                assert!(
                    record.current().is_some_and(|a| a.outcome.is_none()),
                    "{context}: {id}/{} is in flight without an open attempt",
                    record.id
                );
                for (resource, weight) in batch.demand(unit) {
                    *batch_expected.entry(resource.clone()).or_insert(0) += weight;
                }
            }
        }
        // The batch's usage is derived from its units in flight; what it
        // adds up to must be what the fleet's one ledger holds (below).
        for (resource, used) in &batch_expected {
            *fleet_expected.entry(resource.clone()).or_insert(0) += used;
        }
        let live: usize = UnitState::ALL
            .iter()
            .filter(|s| is_live(**s))
            .map(|s| batch.count(*s))
            .sum();
        match batch.state {
            BatchState::Succeeded => assert!(
                batch.units.iter().all(|u| u.state.satisfies_dependents()),
                "{context}: {id} succeeded with unfinished units"
            ),
            BatchState::Failed => {
                assert_eq!(live, 0, "{context}: {id} failed with live units");
                assert!(
                    batch.count(UnitState::NeedsReview) + batch.count(UnitState::Blocked) > 0,
                    "{context}: {id} failed with nothing to review"
                );
            }
            BatchState::Cancelled => {
                assert_eq!(live, 0, "{context}: {id} is cancelled with live units")
            }
            _ => assert!(
                live > 0,
                "{context}: {id} is {} with nothing left to do",
                batch.state.as_str()
            ),
        }
    }
    for (resource, used) in fleet.usage() {
        assert_eq!(
            *used,
            fleet_expected.get(resource).copied().unwrap_or(0),
            "{context}: the fleet counts {resource} wrong"
        );
        let capacity = fleet[&ids[0]].capacity(resource);
        assert!(
            *used <= capacity,
            "{context}: {resource} holds {used} of {capacity}"
        );
    }
    for (resource, used) in &fleet_expected {
        assert_eq!(
            fleet.used(resource),
            *used,
            "{context}: the fleet forgot {resource}"
        );
    }
}

fn wall_clock_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since_epoch.as_millis()).expect("the time fits in i64")
}

/// A report that was sent, kept to send it again.
struct Sent {
    batch: usize,
    unit: usize,
    session: String,
    report: Report,
}

fn random_outcome(rng: &mut Rng) -> Outcome {
    match rng.below(100) {
        0..=59 => Outcome::Succeeded,
        60..=79 => Outcome::Failed,
        80..=86 => Outcome::Lost,
        87..=92 => Outcome::TimedOut,
        _ => Outcome::Interrupted,
    }
}

/// Runs two batches that share resources through one fleet, with random
/// reports, stale and duplicated events, pauses, reviews and cancels.
fn run_random_fleet(seed: u64) {
    let mut rng = Rng(seed);
    let mut resources = BTreeMap::new();
    for name in ["db", "api", "disk"] {
        resources.insert(name.to_owned(), rng.between(1, 4) as u32);
    }
    let mut fleet = Fleet::new();
    let ids: Vec<String> = ["left", "right"]
        .iter()
        .map(|name| {
            let yaml = random_manifest(&mut rng, name, &resources);
            let manifest = manifest(&yaml);
            let dag = Dag::build(&manifest).expect("a valid manifest builds");
            fleet.add(Batch::new(format!("{name}-{seed}"), manifest, dag))
        })
        .collect();
    let ancestors: Vec<Vec<Vec<usize>>> =
        ids.iter().map(|id| all_ancestors(&fleet[id].dag)).collect();
    let cancel_at = rng.chance(15).then(|| rng.between(1, 150));
    let mut reviews_left = rng.between(0, 6);
    let mut sessions = 0u64;
    let mut sent: Vec<Sent> = Vec::new();
    let mut old_sessions: Vec<(usize, usize, String)> = Vec::new();
    // Deferrals are timed by the wall clock today (see the ignored test
    // above), so the run starts there; idle rounds jump an hour ahead.
    let mut now_ms: i64 = wall_clock_ms();
    let mut idle_rounds = 0;

    for step in 0..20_000 {
        let context = format!("seed {seed}, step {step}");
        now_ms += rng.below(2_000) as i64;
        for id in &ids {
            let mut new_session = || {
                sessions += 1;
                format!("s{sessions}")
            };
            let effects = fleet.dispatch(id, now_ms, &mut new_session);
            for &unit in &effects.publish {
                let record = &fleet[id].units[unit];
                let attempt = record.current().expect("a published unit has an attempt");
                assert_eq!(attempt.published_at_ms, now_ms, "{context}");
                assert_eq!(record.state, UnitState::Queued, "{context}");
            }
        }
        check_invariants(&fleet, &ids, &ancestors, &format!("{context}, dispatch"));

        if cancel_at == Some(step) {
            let which = rng.below(2) as usize;
            let cut_short: Vec<usize> = fleet[&ids[which]].in_flight_units().collect();
            let was_over = fleet[&ids[which]].state.is_terminal();
            let effects = fleet.cancel(&ids[which]);
            let batch = &fleet[&ids[which]];
            assert!(effects.publish.is_empty(), "{context}");
            if !was_over {
                assert_eq!(batch.state, BatchState::Cancelled, "{context}");
            }
            for unit in cut_short {
                assert_eq!(batch.units[unit].state, UnitState::Cancelled, "{context}");
                let session = session_of(batch, &batch.units[unit].id.clone());
                // Their workers will report late; those reports must be stale.
                old_sessions.push((which, unit, session));
            }
            check_invariants(&fleet, &ids, &ancestors, &format!("{context}, cancel"));
        }

        let flying: Vec<(usize, usize)> = ids
            .iter()
            .enumerate()
            .flat_map(|(b, id)| {
                fleet[id]
                    .units
                    .iter()
                    .enumerate()
                    .filter(|(_, u)| u.state.is_in_flight())
                    .map(move |(u, _)| (b, u))
            })
            .collect();

        // Now and then, a stale or duplicated event, which must change nothing.
        if rng.chance(10) && (!sent.is_empty() || !old_sessions.is_empty()) {
            let (b, unit, session, report) = if rng.chance(50) && !sent.is_empty() {
                let last = &sent[rng.below(sent.len() as u64) as usize];
                (
                    last.batch,
                    last.unit,
                    last.session.clone(),
                    last.report.clone(),
                )
            } else if !old_sessions.is_empty() {
                let (b, unit, session) = rng.pick(&old_sessions).clone();
                (b, unit, session, finished(random_outcome(&mut rng)))
            } else {
                continue;
            };
            let current = fleet[&ids[b]].units[unit]
                .current()
                .map(|a| a.session_id.clone());
            let is_current_and_live = current.as_deref() == Some(&session)
                && fleet[&ids[b]].units[unit].state.is_in_flight();
            // A re-sent Started of a queued unit is the only repeat that may still apply.
            let may_apply =
                is_current_and_live && fleet[&ids[b]].units[unit].state == UnitState::Queued;
            if !may_apply {
                let before = snapshot(&fleet[&ids[b]], fleet.usage());
                let effects = fleet.report(&ids[b], unit, &session, report);
                assert_eq!(effects, Effects::default(), "{context}: a repeat applied");
                assert_eq!(
                    snapshot(&fleet[&ids[b]], fleet.usage()),
                    before,
                    "{context}"
                );
                continue;
            }
        }

        if rng.chance(3) {
            let b = rng.below(2) as usize;
            if fleet[&ids[b]].state == BatchState::Running {
                assert!(fleet[&ids[b]].pause());
            }
        }
        for id in &ids {
            let batch = &mut fleet[id];
            if batch.state == BatchState::Paused && rng.chance(30) {
                assert!(batch.resume());
            }
        }

        if flying.is_empty() {
            // Nothing runs: whatever is not over waits for a pause, a
            // deferral delay, or a human.
            for id in &ids {
                let batch = &mut fleet[id];
                if batch.state == BatchState::Paused {
                    batch.resume();
                }
            }
            let mut reviewed = false;
            if reviews_left > 0 {
                for id in &ids {
                    let batch = &mut fleet[id];
                    if let Some(&unit) = batch.needs_review().first() {
                        let result = if rng.chance(50) {
                            batch.retry(unit)
                        } else {
                            batch.skip(unit)
                        };
                        if batch.state != BatchState::Cancelled {
                            result.unwrap_or_else(|e| panic!("{context}: review refused: {e}"));
                            reviews_left -= 1;
                            reviewed = true;
                            break;
                        }
                    }
                }
            }
            if reviewed {
                check_invariants(&fleet, &ids, &ancestors, &format!("{context}, review"));
                continue;
            }
            if ids.iter().all(|id| fleet[id].state.is_terminal()) {
                for batch in ids.iter().map(|id| &fleet[id]) {
                    let done = batch.units.iter().all(|u| u.state.satisfies_dependents());
                    match batch.state {
                        BatchState::Succeeded => assert!(done, "{context}"),
                        BatchState::Failed => assert!(!done, "{context}"),
                        _ => {}
                    }
                }
                return;
            }
            idle_rounds += 1;
            assert!(
                idle_rounds < 100,
                "{context}: nothing in flight for a long time, yet {} is {} and {} is {} \
                 (counts {:?} and {:?})",
                fleet[&ids[0]].id,
                fleet[&ids[0]].state.as_str(),
                fleet[&ids[1]].id,
                fleet[&ids[1]].state.as_str(),
                fleet[&ids[0]].counts(),
                fleet[&ids[1]].counts(),
            );
            // Let any deferral delay pass.
            now_ms += HOUR_MS;
            continue;
        }
        idle_rounds = 0;

        let &(b, unit) = rng.pick(&flying);
        let batch = &fleet[&ids[b]];
        let session = batch.units[unit]
            .current()
            .map(|a| a.session_id.clone())
            .expect("an in-flight unit has a session");
        let report = if batch.units[unit].state == UnitState::Queued && rng.chance(70) {
            Report::Started {
                worker: format!("w{}", rng.below(3)),
                fencing: FENCING,
                at_ms: now_ms,
            }
        } else if batch.units[unit].state == UnitState::Queued && rng.chance(5) {
            // Only a claim that never started can be handed back.
            Report::Deferred {
                reason: "busy".into(),
                received_at_ms: now_ms,
            }
        } else {
            let mut report = finished(random_outcome(&mut rng));
            if let Report::Finished(finish) = &mut report {
                finish.at_ms = now_ms;
            }
            report
        };
        let ends_session = !matches!(report, Report::Started { .. });
        let effects = fleet.report(&ids[b], unit, &session, report.clone());
        assert!(
            effects.changed.contains(&unit),
            "{context}: a report about the current session applies"
        );
        assert!(
            effects.publish.is_empty(),
            "{context}: a report publishes nothing"
        );
        if ends_session {
            old_sessions.push((b, unit, session.clone()));
        }
        sent.push(Sent {
            batch: b,
            unit,
            session,
            report,
        });
        check_invariants(&fleet, &ids, &ancestors, &format!("{context}, report"));
    }
    panic!("seed {seed}: the fleet did not settle in 20,000 steps");
}

#[test]
fn random_batches_keep_every_invariant_and_always_end_in_a_terminal_state() {
    for seed in 0..150 {
        run_random_fleet(seed);
    }
}

#[test]
fn a_hand_back_after_the_session_started_changes_nothing() {
    let mut fleet = Fleet::new();
    let batch = fleet.add(batch("", "  - {id: a}"));
    fleet.publish(&batch);
    fleet.send(&batch, "a", started());
    let before = fleet[&batch].units[0].clone();
    let effects = fleet.defer(&batch, "a");
    assert_eq!(effects, Effects::default());
    assert_eq!(
        fleet[&batch].units[0], before,
        "a running session is not handed back"
    );
    assert_eq!(state(&fleet[&batch], "a"), UnitState::Running);
}

/// A touched file is named by its absolute path, so two manifests that
/// reach one repository through a symlink and through its real path ask for
/// one mutex, not two.
#[test]
fn workdirs_that_are_links_to_one_folder_load_as_that_folder() {
    let root = tempfile::tempdir().expect("temp dir");
    let real = root.path().join("repo");
    std::fs::create_dir(&real).expect("create the folder");
    std::os::unix::fs::symlink(&real, root.path().join("link")).expect("symlink");
    let manifest = |workdir: &str| {
        let dir = root.path().join(format!("m-{workdir}"));
        std::fs::create_dir(&dir).expect("create the manifest's folder");
        let path = dir.join("manifest.yaml");
        let text = format!(
            "batch: b\nworkdir: ../{workdir}\nplaybook: {{name: p, run: 'true'}}\n\
             units:\n  - {{id: a, touches: [schema/x.sql]}}\n"
        );
        std::fs::write(&path, text).expect("write the manifest");
        Manifest::load(&path).expect("a valid manifest")
    };
    let (direct, linked) = (manifest("repo"), manifest("link"));
    let canonical = std::fs::canonicalize(&real).expect("canonical folder");
    assert_eq!(direct.workdir, canonical);
    assert_eq!(linked.workdir, canonical, "the link is resolved");
    // One file, one mutex, whichever way the manifest reached it.
    let demand = |manifest: Manifest| {
        let dag = Dag::build(&manifest).expect("a DAG");
        let batch = Batch::new("b-1".into(), manifest, dag);
        batch.demand(0).to_vec()
    };
    assert_eq!(demand(direct), demand(linked));
}
