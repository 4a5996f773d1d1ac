//! The invariant checker of the chaos suite.
//!
//! Every chaos scenario runs its units with [`SESSION_SCRIPT`], which
//! appends to the file named by `$TIMINGS` a `start` line when the session
//! starts and an `end` line when it ends; a session killed on the way has a
//! start and no end. [`check`] then holds that record, the manifest and the
//! coordinator's own history (`ApiClient::units`) against the contracts of
//! docs/contracts.md:
//!
//! - every unit ended in a terminal state ([`UnitState::is_terminal`]);
//! - no session started before every dependency's succeeded session ended;
//! - no two sessions of one unit overlapped;
//! - at no instant did the sessions exceed the batch's concurrency, a
//!   resource's capacity (weights included) or a touched file's mutex;
//! - no session of a succeeded unit started after the succeeded one, and the
//!   coordinator recorded one success, as its last attempt;
//! - every session that ran is one the coordinator recorded (a session it
//!   does not know of is a unit run twice behind its back), and every
//!   success it recorded is a session that ran to its end.
//!
//! A killed session's end is unknown. The checker takes it as the latest of:
//! the end the coordinator recorded for that attempt, only when the outcome
//! says the worker killed the session before reporting it (`lost`,
//! `interrupted`, `timed_out`, `cancelled`); and the last instant the test
//! itself saw the session's process alive ([`Evidence::seen_alive`]), which
//! outranks the coordinator when later (a reaper declares a paused worker's
//! session lost while it still runs). Without either, the session is taken
//! to run forever: anything of its unit that started after it overlaps it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{Attempt, UnitState};
use regatta_coordinator::service::UnitView;
use regatta_proto::Outcome;

/// The session command of every chaos scenario: records its start and end
/// (ms since the epoch) in `$TIMINGS`, sleeping in between.
///
/// Lines: `start <unit> <session> <attempt> <start_ms> <pid>` first thing,
/// `end <unit> <session> <attempt> <start_ms> <end_ms>` last thing.
/// Environment: `SLEEP` (seconds, default 0.03), `SLEEP_ATTEMPT_<n>`
/// (overrides `SLEEP` on attempt n), `FAIL_ATTEMPT` (exit 3 on that attempt,
/// after recording its end).
pub const SESSION_SCRIPT: &str = r#"#!/bin/sh
start=$(date +%s%3N)
echo "start $REGATTA_UNIT_ID $REGATTA_SESSION_ID $REGATTA_ATTEMPT $start $$" >> "$TIMINGS"
eval "pause=\${SLEEP_ATTEMPT_${REGATTA_ATTEMPT}:-\${SLEEP:-0.03}}"
sleep "$pause"
echo "end $REGATTA_UNIT_ID $REGATTA_SESSION_ID $REGATTA_ATTEMPT $start $(date +%s%3N)" >> "$TIMINGS"
if [ "$REGATTA_ATTEMPT" = "${FAIL_ATTEMPT:-0}" ]; then exit 3; fi
"#;

/// Writes [`SESSION_SCRIPT`] as `session.sh` (executable) into `dir`.
pub fn write_session_script(dir: &Path) {
    crate::write_file(dir, "session.sh", SESSION_SCRIPT);
}

/// The `units:` items of a layered DAG: `layers` layers of `width` units,
/// each depending on two units of the layer before; `extra` (e.g.
/// `"    uses: [db]\n"`) is added to every unit.
pub fn layered_units(layers: usize, width: usize, extra: &str) -> String {
    let mut units = String::new();
    for layer in 0..layers {
        for i in 0..width {
            units.push_str(&format!("  - id: u{layer}-{i}\n{extra}"));
            if layer > 0 {
                units.push_str(&format!(
                    "    depends_on: [u{}-{i}, u{}-{}]\n",
                    layer - 1,
                    layer - 1,
                    (i + 1) % width
                ));
            }
        }
    }
    units
}

/// One session as its own script recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedSession {
    pub unit: String,
    pub session: String,
    pub attempt: u32,
    pub start_ms: i64,
    /// `None` when the session never reached its end (it was killed).
    pub end_ms: Option<i64>,
    /// The session shell's process id, to watch whether it still runs.
    pub pid: Option<i32>,
}

/// Every session recorded in a `$TIMINGS` file, in start order.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    pub sessions: Vec<RecordedSession>,
}

impl Recording {
    /// Reads a `$TIMINGS` file; a missing file is an empty recording.
    pub fn read(path: &Path) -> Recording {
        Recording::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    /// Parses the lines of [`SESSION_SCRIPT`]; unreadable lines are skipped.
    pub fn parse(text: &str) -> Recording {
        let mut by_session: BTreeMap<String, RecordedSession> = BTreeMap::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["start", unit, session, attempt, start, rest @ ..] => {
                    let (Ok(attempt), Ok(start_ms)) = (attempt.parse(), start.parse()) else {
                        continue;
                    };
                    let entry = by_session.entry((*session).to_owned()).or_insert_with(|| {
                        RecordedSession {
                            unit: (*unit).to_owned(),
                            session: (*session).to_owned(),
                            attempt,
                            start_ms,
                            end_ms: None,
                            pid: None,
                        }
                    });
                    entry.pid = rest.first().and_then(|p| p.parse().ok());
                }
                ["end", unit, session, attempt, start, end] => {
                    let (Ok(attempt), Ok(start_ms), Ok(end_ms)) =
                        (attempt.parse(), start.parse(), end.parse())
                    else {
                        continue;
                    };
                    let entry = by_session.entry((*session).to_owned()).or_insert_with(|| {
                        RecordedSession {
                            unit: (*unit).to_owned(),
                            session: (*session).to_owned(),
                            attempt,
                            start_ms,
                            end_ms: None,
                            pid: None,
                        }
                    });
                    entry.end_ms = Some(end_ms);
                }
                _ => {}
            }
        }
        let mut sessions: Vec<RecordedSession> = by_session.into_values().collect();
        sessions.sort_by(|a, b| (a.start_ms, &a.session).cmp(&(b.start_ms, &b.session)));
        Recording { sessions }
    }

    /// The sessions of one unit, in start order.
    pub fn of_unit<'a>(&'a self, unit: &'a str) -> impl Iterator<Item = &'a RecordedSession> {
        self.sessions.iter().filter(move |s| s.unit == unit)
    }

    /// The session with this id.
    pub fn session(&self, session: &str) -> Option<&RecordedSession> {
        self.sessions.iter().find(|s| s.session == session)
    }
}

/// Says whether a process runs (a zombie, which has exited, does not).
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// Milliseconds since the epoch, on the clock the session script uses.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the checker holds against the contracts.
pub struct Evidence<'a> {
    pub manifest: &'a Manifest,
    /// The coordinator's view of every unit of the batch, history included.
    pub units: &'a [UnitView],
    pub recording: &'a Recording,
    /// Per session, the last instant (ms) the test saw its process alive.
    pub seen_alive: BTreeMap<String, i64>,
}

/// Which invariant a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// A unit did not end in a terminal state.
    Terminal,
    /// A session started before a dependency's succeeded session ended.
    Dependency,
    /// Two sessions of one unit ran at the same time.
    Overlap,
    /// More sessions than a cap allows ran at one instant.
    Cap,
    /// A succeeded unit ran again, or its success is not its last attempt.
    RanAfterSuccess,
    /// A session ran that the coordinator never recorded, or a success was
    /// recorded for a session that never ran to its end.
    Unrecorded,
}

/// One broken invariant, with what shows it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: Invariant,
    pub unit: String,
    /// The sessions involved.
    pub sessions: Vec<String>,
    /// When it happened, when one instant says it.
    pub at_ms: Option<i64>,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}] {}", self.invariant, self.message)
    }
}

/// What the checker found.
#[derive(Debug, Clone)]
pub struct InvariantReport {
    pub units: usize,
    pub sessions: usize,
    pub violations: Vec<Violation>,
}

impl InvariantReport {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// Fails the test with every violation when there is one.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert!(self.is_clean(), "{self}");
    }

    /// The violations that involve this session.
    pub fn involving<'a>(&'a self, session: &'a str) -> impl Iterator<Item = &'a Violation> {
        self.violations
            .iter()
            .filter(move |v| v.sessions.iter().any(|s| s == session))
    }

    /// The same report without the violations `tolerated` accepts.
    pub fn without(&self, tolerated: impl Fn(&Violation) -> bool) -> InvariantReport {
        InvariantReport {
            violations: self
                .violations
                .iter()
                .filter(|v| !tolerated(v))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }
}

impl fmt::Display for InvariantReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} units, {} recorded sessions: ",
            self.units, self.sessions
        )?;
        if self.violations.is_empty() {
            return write!(f, "every invariant holds");
        }
        writeln!(f, "{} violations", self.violations.len())?;
        for violation in &self.violations {
            writeln!(f, "  - {violation}")?;
        }
        Ok(())
    }
}

/// A session as the checker sees it: its recorded start, and its end as
/// recorded or, for a killed one, as resolved (see the module's doc).
#[derive(Debug, Clone)]
struct Interval {
    unit: String,
    session: String,
    start: i64,
    /// `i64::MAX` when nothing says the session ever ended.
    end: i64,
    /// How the end was known, for messages.
    end_source: &'static str,
}

/// Checks every invariant; never panics, returns what is broken.
pub fn check(evidence: &Evidence<'_>) -> InvariantReport {
    let mut violations = Vec::new();
    let views: BTreeMap<&str, &UnitView> =
        evidence.units.iter().map(|u| (u.id.as_str(), u)).collect();
    let intervals = resolve(evidence, &views);

    check_terminal(evidence, &views, &mut violations);
    check_recorded(evidence, &views, &mut violations);
    check_overlaps(&intervals, &mut violations);
    check_dependencies(evidence, &views, &intervals, &mut violations);
    check_success(&views, &intervals, &mut violations);
    check_caps(evidence.manifest, &intervals, &mut violations);

    violations
        .sort_by(|a, b| (a.invariant, a.at_ms, &a.unit).cmp(&(b.invariant, b.at_ms, &b.unit)));
    InvariantReport {
        units: evidence.manifest.units.len(),
        sessions: evidence.recording.sessions.len(),
        violations,
    }
}

fn attempt_of<'a>(
    views: &BTreeMap<&str, &'a UnitView>,
    unit: &str,
    session: &str,
) -> Option<&'a Attempt> {
    views
        .get(unit)?
        .history
        .iter()
        .find(|a| a.session_id == session)
}

/// Says whether the worker reports this outcome only after the session's
/// processes are gone (it killed them, or they ended).
fn reported_after_kill(outcome: Option<Outcome>) -> bool {
    matches!(
        outcome,
        Some(
            Outcome::Lost
                | Outcome::Interrupted
                | Outcome::TimedOut
                | Outcome::Cancelled
                | Outcome::OverBudget
        )
    )
}

fn resolve(evidence: &Evidence<'_>, views: &BTreeMap<&str, &UnitView>) -> Vec<Interval> {
    evidence
        .recording
        .sessions
        .iter()
        .map(|s| {
            let (end, end_source) = match s.end_ms {
                Some(end) => (end, "recorded"),
                None => {
                    let attempt = attempt_of(views, &s.unit, &s.session);
                    let reported = attempt
                        .filter(|a| reported_after_kill(a.outcome))
                        .and_then(|a| a.ended_at_ms);
                    let seen = evidence.seen_alive.get(&s.session).copied();
                    match (reported, seen) {
                        (Some(r), Some(seen)) if seen > r => {
                            (seen, "seen alive by the test after the coordinator's end")
                        }
                        (Some(r), _) => (r, "the coordinator's record of its kill"),
                        (None, Some(seen)) => (seen, "last seen alive by the test"),
                        (None, None) => (i64::MAX, "never (no end is known)"),
                    }
                }
            };
            Interval {
                unit: s.unit.clone(),
                session: s.session.clone(),
                start: s.start_ms,
                end,
                end_source,
            }
        })
        .collect()
}

fn show_end(end: i64) -> String {
    if end == i64::MAX {
        "never".to_owned()
    } else {
        end.to_string()
    }
}

fn check_terminal(
    evidence: &Evidence<'_>,
    views: &BTreeMap<&str, &UnitView>,
    violations: &mut Vec<Violation>,
) {
    for unit in &evidence.manifest.units {
        match views.get(unit.id.as_str()) {
            None => violations.push(Violation {
                invariant: Invariant::Terminal,
                unit: unit.id.clone(),
                sessions: vec![],
                at_ms: None,
                message: format!("unit '{}' is missing from the coordinator's units", unit.id),
            }),
            Some(view) if !view.state.is_terminal() => violations.push(Violation {
                invariant: Invariant::Terminal,
                unit: unit.id.clone(),
                sessions: view.history.iter().map(|a| a.session_id.clone()).collect(),
                at_ms: None,
                message: format!(
                    "unit '{}' ended {} (not terminal; reason: {:?})",
                    unit.id,
                    view.state.as_str(),
                    view.reason
                ),
            }),
            Some(_) => {}
        }
    }
}

fn check_recorded(
    evidence: &Evidence<'_>,
    views: &BTreeMap<&str, &UnitView>,
    violations: &mut Vec<Violation>,
) {
    for s in &evidence.recording.sessions {
        if attempt_of(views, &s.unit, &s.session).is_none() {
            let known: Vec<&str> = views
                .get(s.unit.as_str())
                .map(|v| v.history.iter().map(|a| a.session_id.as_str()).collect())
                .unwrap_or_default();
            violations.push(Violation {
                invariant: Invariant::Unrecorded,
                unit: s.unit.clone(),
                sessions: vec![s.session.clone()],
                at_ms: Some(s.start_ms),
                message: format!(
                    "unit '{}' ran session {} (attempt {}, started at {}, ended {}) that the \
                     coordinator's history does not hold (it knows {known:?}): the unit ran behind \
                     the coordinator's back",
                    s.unit,
                    s.session,
                    s.attempt,
                    s.start_ms,
                    s.end_ms.map_or("never".to_owned(), |e| e.to_string())
                ),
            });
        }
    }
    for view in views.values() {
        for attempt in &view.history {
            if attempt.outcome != Some(Outcome::Succeeded) {
                continue;
            }
            let ran = evidence.recording.session(&attempt.session_id);
            if ran.is_none_or(|s| s.end_ms.is_none()) {
                violations.push(Violation {
                    invariant: Invariant::Unrecorded,
                    unit: view.id.clone(),
                    sessions: vec![attempt.session_id.clone()],
                    at_ms: attempt.ended_at_ms,
                    message: format!(
                        "the coordinator recorded attempt {} (session {}) of '{}' as succeeded, \
                         but that session {}",
                        attempt.attempt,
                        attempt.session_id,
                        view.id,
                        if ran.is_some() {
                            "never reached its end"
                        } else {
                            "never ran"
                        }
                    ),
                });
            }
        }
    }
}

fn check_overlaps(intervals: &[Interval], violations: &mut Vec<Violation>) {
    let mut by_unit: BTreeMap<&str, Vec<&Interval>> = BTreeMap::new();
    for interval in intervals {
        by_unit.entry(&interval.unit).or_default().push(interval);
    }
    for (unit, sessions) in by_unit {
        for (i, a) in sessions.iter().enumerate() {
            for b in &sessions[i + 1..] {
                // Half-open intervals: one ending at the instant another starts is fine.
                if a.start < b.end && b.start < a.end {
                    violations.push(Violation {
                        invariant: Invariant::Overlap,
                        unit: unit.to_owned(),
                        sessions: vec![a.session.clone(), b.session.clone()],
                        at_ms: Some(a.start.max(b.start)),
                        message: format!(
                            "two sessions of '{unit}' ran at once: {} [{}, {}) (end: {}) and {} [{}, {}) (end: {})",
                            a.session,
                            a.start,
                            show_end(a.end),
                            a.end_source,
                            b.session,
                            b.start,
                            show_end(b.end),
                            b.end_source
                        ),
                    });
                }
            }
        }
    }
}

/// The end of a unit's succeeded session: `Ok(None)` when the unit counts
/// as done without one (skipped), `Err` when it never succeeded.
fn success_end(
    unit: &str,
    views: &BTreeMap<&str, &UnitView>,
    intervals: &[Interval],
) -> Result<Option<(String, i64)>, String> {
    let Some(view) = views.get(unit) else {
        return Err(format!("'{unit}' is unknown to the coordinator"));
    };
    if view.state == UnitState::Skipped {
        return Ok(None);
    }
    let Some(attempt) = view
        .history
        .iter()
        .rev()
        .find(|a| a.outcome == Some(Outcome::Succeeded))
    else {
        return Err(format!(
            "'{unit}' never succeeded (it is {})",
            view.state.as_str()
        ));
    };
    match intervals.iter().find(|i| i.session == attempt.session_id) {
        Some(interval) => Ok(Some((interval.session.clone(), interval.end))),
        None => Err(format!(
            "'{unit}' succeeded in session {}, which left no record",
            attempt.session_id
        )),
    }
}

fn check_dependencies(
    evidence: &Evidence<'_>,
    views: &BTreeMap<&str, &UnitView>,
    intervals: &[Interval],
    violations: &mut Vec<Violation>,
) {
    for unit in &evidence.manifest.units {
        let sessions: Vec<&Interval> = intervals.iter().filter(|i| i.unit == unit.id).collect();
        if sessions.is_empty() {
            continue;
        }
        for dependency in &unit.depends_on {
            match success_end(dependency, views, intervals) {
                Ok(None) => {}
                Ok(Some((dep_session, dep_end))) => {
                    for s in sessions.iter().filter(|s| s.start < dep_end) {
                        violations.push(Violation {
                            invariant: Invariant::Dependency,
                            unit: unit.id.clone(),
                            sessions: vec![s.session.clone(), dep_session.clone()],
                            at_ms: Some(s.start),
                            message: format!(
                                "'{}' session {} started at {} before its dependency '{dependency}' \
                                 ended (session {dep_session} ended at {})",
                                unit.id,
                                s.session,
                                s.start,
                                show_end(dep_end)
                            ),
                        });
                    }
                }
                Err(why) => {
                    for s in &sessions {
                        violations.push(Violation {
                            invariant: Invariant::Dependency,
                            unit: unit.id.clone(),
                            sessions: vec![s.session.clone()],
                            at_ms: Some(s.start),
                            message: format!(
                                "'{}' session {} started at {} though its dependency {why}",
                                unit.id, s.session, s.start
                            ),
                        });
                    }
                }
            }
        }
    }
}

fn check_success(
    views: &BTreeMap<&str, &UnitView>,
    intervals: &[Interval],
    violations: &mut Vec<Violation>,
) {
    for view in views.values() {
        let successes: Vec<&Attempt> = view
            .history
            .iter()
            .filter(|a| a.outcome == Some(Outcome::Succeeded))
            .collect();
        let Some(first) = successes.first() else {
            continue;
        };
        if successes.len() > 1 {
            violations.push(Violation {
                invariant: Invariant::RanAfterSuccess,
                unit: view.id.clone(),
                sessions: successes.iter().map(|a| a.session_id.clone()).collect(),
                at_ms: successes[1].started_at_ms,
                message: format!(
                    "the coordinator recorded {} successes of '{}' (attempts {:?})",
                    successes.len(),
                    view.id,
                    successes.iter().map(|a| a.attempt).collect::<Vec<_>>()
                ),
            });
        }
        if let Some(position) = view
            .history
            .iter()
            .position(|a| a.session_id == first.session_id)
        {
            if position + 1 < view.history.len() {
                let later: Vec<String> = view.history[position + 1..]
                    .iter()
                    .map(|a| a.session_id.clone())
                    .collect();
                violations.push(Violation {
                    invariant: Invariant::RanAfterSuccess,
                    unit: view.id.clone(),
                    sessions: later.clone(),
                    at_ms: first.ended_at_ms,
                    message: format!(
                        "'{}' succeeded in attempt {} yet the coordinator recorded later attempts {later:?}",
                        view.id, first.attempt
                    ),
                });
            }
        }
        let Some(success) = intervals.iter().find(|i| i.session == first.session_id) else {
            continue;
        };
        for again in intervals.iter().filter(|i| {
            i.unit == view.id && i.session != success.session && i.start >= success.start
        }) {
            violations.push(Violation {
                invariant: Invariant::RanAfterSuccess,
                unit: view.id.clone(),
                sessions: vec![again.session.clone(), success.session.clone()],
                at_ms: Some(again.start),
                message: format!(
                    "'{}' ran session {} at {} after its succeeded session {} (started at {}, ended at {})",
                    view.id,
                    again.session,
                    again.start,
                    success.session,
                    success.start,
                    show_end(success.end)
                ),
            });
        }
    }
}

fn check_caps(manifest: &Manifest, intervals: &[Interval], violations: &mut Vec<Violation>) {
    // Every cap a session counts against: the batch's, each resource with
    // its weight, each touched file with weight 1.
    let mut caps: BTreeMap<String, u32> = BTreeMap::new();
    caps.insert("batch concurrency".to_owned(), manifest.concurrency);
    let mut demands: BTreeMap<&str, Vec<(String, u32)>> = BTreeMap::new();
    for unit in &manifest.units {
        let mut demand = vec![("batch concurrency".to_owned(), 1)];
        for (resource, weight) in &unit.uses {
            let capacity = manifest.resources.get(resource).copied().unwrap_or(0);
            caps.insert(format!("resource {resource}"), capacity);
            demand.push((format!("resource {resource}"), *weight));
        }
        for file in &unit.touches {
            caps.insert(format!("file {file}"), 1);
            demand.push((format!("file {file}"), 1));
        }
        demands.insert(&unit.id, demand);
    }
    for (cap, capacity) in caps {
        // (time, +weight or -weight, session); ends sort before starts at one instant.
        let mut events: Vec<(i64, i64, &str)> = Vec::new();
        for interval in intervals {
            let weight = demands
                .get(interval.unit.as_str())
                .and_then(|d| d.iter().find(|(c, _)| *c == cap))
                .map(|(_, w)| i64::from(*w));
            if let Some(weight) = weight {
                events.push((interval.start, weight, &interval.session));
                if interval.end != i64::MAX {
                    events.push((interval.end, -weight, &interval.session));
                }
            }
        }
        events.sort_by_key(|&(time, delta, _)| (time, delta));
        let mut held: BTreeMap<&str, i64> = BTreeMap::new();
        let mut reported = false;
        for (time, delta, session) in events {
            if delta < 0 {
                held.remove(session);
                reported = false;
                continue;
            }
            *held.entry(session).or_insert(0) += delta;
            let total: i64 = held.values().sum();
            // One report per excursion above the cap, at its first instant.
            if total > i64::from(capacity) && !reported {
                reported = true;
                let holders: BTreeSet<String> = held
                    .keys()
                    .map(|s| {
                        let unit = intervals
                            .iter()
                            .find(|i| i.session == *s)
                            .map(|i| i.unit.as_str())
                            .unwrap_or("?");
                        format!("{unit}/{s}")
                    })
                    .collect();
                violations.push(Violation {
                    invariant: Invariant::Cap,
                    unit: intervals
                        .iter()
                        .find(|i| i.session == session)
                        .map(|i| i.unit.clone())
                        .unwrap_or_default(),
                    sessions: held.keys().map(|s| (*s).to_owned()).collect(),
                    at_ms: Some(time),
                    message: format!(
                        "{cap} (capacity {capacity}) held {total} at {time} by {holders:?}"
                    ),
                });
            }
        }
    }
}

/// Checks a batch of a fleet, once it has ended, against every invariant,
/// from the sessions recorded in `timings` and the coordinator's history.
pub async fn check_fleet_batch(
    fleet: &crate::Fleet,
    batch: &str,
    manifest: &regatta_coordinator::manifest::Manifest,
    timings: &Path,
) -> InvariantReport {
    let units = fleet.client().units(batch, None).await.expect("units");
    let recording = Recording::read(timings);
    check(&Evidence {
        manifest,
        units: &units,
        recording: &recording,
        seen_alive: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest from YAML, in a folder of its own.
    fn manifest(units: &str) -> Manifest {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            "batch: t\nconcurrency: 2\nresources: {{db: 2}}\nplaybook: {{run: 'true'}}\nunits:\n{units}"
        );
        Manifest::parse(&text, "m.yaml", dir.path()).expect("valid manifest")
    }

    /// An attempt as the coordinator's history shows it.
    fn attempt(
        n: u32,
        session: &str,
        outcome: Option<&str>,
        ended: Option<i64>,
    ) -> serde_json::Value {
        serde_json::json!({
            "attempt": n, "session_id": session, "worker": "w0", "fencing": n,
            "published_at_ms": 0, "started_at_ms": 1, "ended_at_ms": ended,
            "outcome": outcome, "exit_code": null, "reason": null, "log_tail": "",
            "log_path": "", "gates": [], "evidence": null,
        })
    }

    fn unit(id: &str, state: &str, history: Vec<serde_json::Value>) -> UnitView {
        serde_json::from_value(serde_json::json!({
            "id": id, "state": state, "attempt": history.len(), "failures": 0,
            "reason": null, "waiting_for": null, "history": history,
        }))
        .expect("a unit view")
    }

    fn run(
        manifest: &Manifest,
        units: &[UnitView],
        lines: &str,
        seen_alive: &[(&str, i64)],
    ) -> InvariantReport {
        let recording = Recording::parse(lines);
        check(&Evidence {
            manifest,
            units,
            recording: &recording,
            seen_alive: seen_alive
                .iter()
                .map(|(s, t)| ((*s).to_owned(), *t))
                .collect(),
        })
    }

    fn kinds(report: &InvariantReport) -> Vec<Invariant> {
        report.violations.iter().map(|v| v.invariant).collect()
    }

    const OK: Option<&str> = Some("Succeeded");

    #[test]
    fn a_clean_run_is_clean() {
        let m = manifest("  - id: a\n    uses: [db]\n  - id: b\n    depends_on: [a]\n");
        let units = [
            unit("a", "succeeded", vec![attempt(1, "s1", OK, Some(110))]),
            unit("b", "succeeded", vec![attempt(1, "s2", OK, Some(210))]),
        ];
        let lines =
            "start a s1 1 100 1\nend a s1 1 100 110\nstart b s2 1 110 2\nend b s2 1 110 200\n";
        run(&m, &units, lines, &[]).assert_clean();
    }

    #[test]
    fn a_start_before_a_dependency_ended_is_reported() {
        let m = manifest("  - id: a\n  - id: b\n    depends_on: [a]\n");
        let units = [
            unit("a", "succeeded", vec![attempt(1, "s1", OK, Some(110))]),
            unit("b", "succeeded", vec![attempt(1, "s2", OK, Some(210))]),
        ];
        let lines = "end a s1 1 100 110\nend b s2 1 109 200\n";
        assert_eq!(kinds(&run(&m, &units, lines, &[])), [Invariant::Dependency]);
    }

    #[test]
    fn a_killed_session_ends_when_the_coordinator_recorded_its_kill_unless_seen_alive_later() {
        let m = manifest("  - id: a\n");
        let units = [unit(
            "a",
            "succeeded",
            vec![
                attempt(1, "s1", Some("Lost"), Some(150)),
                attempt(2, "s2", OK, Some(300)),
            ],
        )];
        let lines = "start a s1 1 100 1\nstart a s2 2 200 2\nend a s2 2 200 300\n";
        run(&m, &units, lines, &[]).assert_clean();
        // The test saw the first session alive after the second started.
        let report = run(&m, &units, lines, &[("s1", 250)]);
        assert_eq!(kinds(&report), [Invariant::Overlap], "{report}");
        assert_eq!(report.involving("s1").count(), 1);
    }

    #[test]
    fn a_killed_session_without_a_recorded_kill_lasts_forever() {
        let m = manifest("  - id: a\n");
        // `failed` is reported after the command exited, not after a kill:
        // it says nothing of when an unfinished script died.
        let units = [unit(
            "a",
            "succeeded",
            vec![
                attempt(1, "s1", Some("Failed"), Some(150)),
                attempt(2, "s2", OK, Some(300)),
            ],
        )];
        let lines = "start a s1 1 100 1\nstart a s2 2 200 2\nend a s2 2 200 300\n";
        let report = run(&m, &units, lines, &[]);
        assert!(kinds(&report).contains(&Invariant::Overlap), "{report}");
    }

    #[test]
    fn caps_count_weights_files_and_the_batch_and_allow_a_handover_at_one_instant() {
        let m = manifest(
            "  - id: a\n    uses: {db: 2}\n  - id: b\n    uses: [db]\n  - id: c\n    touches: [x.sql]\n  \
             - id: d\n    touches: [x.sql]\n",
        );
        let units = [
            unit("a", "succeeded", vec![attempt(1, "sa", OK, Some(200))]),
            unit("b", "succeeded", vec![attempt(1, "sb", OK, Some(300))]),
            unit("c", "succeeded", vec![attempt(1, "sc", OK, Some(600))]),
            unit("d", "succeeded", vec![attempt(1, "sd", OK, Some(800))]),
        ];
        // b starts as a ends, d as c ends: fine.
        let lines =
            "end a sa 1 100 200\nend b sb 1 200 300\nend c sc 1 500 600\nend d sd 1 600 700\n";
        run(&m, &units, lines, &[]).assert_clean();
        // a (weight 2) and b hold 3 of db; a, b and c run at once under a
        // batch cap of 2; c and d both hold x.sql.
        let lines =
            "end a sa 1 100 200\nend b sb 1 150 300\nend c sc 1 160 600\nend d sd 1 550 700\n";
        let report = run(&m, &units, lines, &[]);
        assert_eq!(kinds(&report), [Invariant::Cap; 3], "{report}");
        for cap in ["resource db", "batch concurrency", "file x.sql"] {
            assert!(
                report.violations.iter().any(|v| v.message.contains(cap)),
                "{cap}: {report}"
            );
        }
    }

    #[test]
    fn sessions_unknown_to_the_coordinator_and_re_runs_after_success_are_reported() {
        let m = manifest("  - id: a\n");
        let units = [unit(
            "a",
            "succeeded",
            vec![attempt(1, "s1", OK, Some(200))],
        )];
        let lines = "end a s1 1 100 200\nend a orphan 1 300 400\n";
        let report = run(&m, &units, lines, &[]);
        assert_eq!(
            kinds(&report),
            [Invariant::RanAfterSuccess, Invariant::Unrecorded],
            "{report}"
        );
        // A success recorded for a session that never ran to its end.
        let lines = "start a s1 1 100 1\n";
        let report = run(&m, &units, lines, &[]);
        assert!(kinds(&report).contains(&Invariant::Unrecorded), "{report}");
    }

    #[test]
    fn a_unit_left_running_is_not_terminal() {
        let m = manifest("  - id: a\n");
        let units = [unit("a", "running", vec![attempt(1, "s1", None, None)])];
        let report = run(&m, &units, "start a s1 1 100 1\n", &[]);
        assert!(kinds(&report).contains(&Invariant::Terminal), "{report}");
    }
}
