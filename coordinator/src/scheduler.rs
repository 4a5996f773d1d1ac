//! The batch state machine: which units may be published now, and what an
//! event from a worker does to a unit and to its descendants.
//!
//! Pure logic, no I/O: the [`crate::service`] feeds it events and persists
//! and publishes what it returns. Units are numbered by their position in
//! the manifest, which is also the DAG's node index.
//!
//! Lifecycle (docs/architecture.md, "Unit lifecycle"):
//!
//! ```text
//! pending --deps succeeded--> ready --published--> queued --claimed--> running
//! running --> succeeded | retry (ready) | needs_review
//! pending with a needs_review ancestor --> blocked
//! any live state --cancel--> cancelled;  needs_review --retry--> ready, --skip--> skipped
//! ```
//!
//! - [`fleet`]: every live batch and the one resource ledger they share;
//!   the service drives the scheduler through it;
//! - [`record`]: the unit and batch states and the records stored in Redis;
//! - here: a batch's state, its counts and the moves every change shares;
//! - [`dispatch`]: which ready units start now (admission);
//! - [`budget`]: the batch budget's part of admission, and its ledger;
//! - [`report`]: what a session's report does to its unit;
//! - [`event`]: a worker's event reduced to a report;
//! - [`control`]: what people do to a batch (cancel, approve, pause, retry, skip);
//! - [`landing`]: git mode's part of the lifecycle.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use regatta_proto::Outcome;
use serde::{Deserialize, Serialize};

use crate::dag::Dag;
use crate::manifest::{Manifest, FILE_RESOURCE_PREFIX};

mod budget;
mod control;
mod dispatch;
mod event;
mod fleet;
mod landing;
mod record;
mod report;

pub use budget::{p90, DEFAULT_RESERVATION_USD};
pub use fleet::{Control, Fleet, Member, Refusal};
pub use record::{Attempt, AttemptTrace, BatchState, UnitRecord, UnitState};

/// What the service must do after a change: publish these units, and
/// persist these unit records.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// Units to publish, each with a fresh attempt already recorded.
    pub publish: Vec<usize>,
    /// Units whose record changed.
    pub changed: BTreeSet<usize>,
}

/// A session event, reduced to what the state machine needs.
// One report per event, moved once into the state machine: boxing
// `Finished` would cost every constructor more than the bytes save.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Started {
        worker: String,
        fencing: u64,
        at_ms: i64,
    },
    /// A worker handed the unit back (its leases were busy); the
    /// coordinator received that at `received_at_ms`, by its own clock.
    Deferred {
        reason: String,
        received_at_ms: i64,
    },
    Finished(Finish),
}

/// The end of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub at_ms: i64,
    pub log_tail: String,
    pub log_path: String,
    pub gates: Vec<regatta_proto::GateReport>,
    pub fencing: u64,
    pub evidence: Option<regatta_proto::EvidenceRef>,
    pub git: Option<Box<regatta_proto::GitReport>>,
    /// An agent session's usage, also when it was killed.
    pub usage: Option<regatta_proto::Usage>,
    /// The worker that ran it, for a session whose `Started` never came.
    pub worker: Option<String>,
    /// When it started, on the worker's clock: a session shorter than the
    /// worker's `--started-after` sends no `Started`, and this is its only
    /// record of a start (contract 4, docs/contracts.md).
    pub started_at_ms: Option<i64>,
}

/// How long a unit handed back by a worker waits before it is published
/// again: long enough for a zombie lease to expire or a race to settle,
/// short enough not to matter next to a session.
pub const DEFER_MS: i64 = 500;

/// The live state of one batch.
#[derive(Debug)]
pub struct Batch {
    pub id: String,
    pub manifest: Manifest,
    pub dag: Dag,
    pub state: BatchState,
    pub units: Vec<UnitRecord>,
    /// Unfinished dependencies per unit.
    remaining: Vec<u32>,
    /// Ready units in start order: priority first, then manifest order.
    ready: BTreeSet<(Reverse<i32>, usize)>,
    /// Units deferred by a worker, with the time before which not to retry.
    deferred_until: HashMap<usize, i64>,
    in_flight: u32,
    /// Every resource demand per unit, touched files included.
    demands: Vec<Vec<(String, u32)>>,
    counts: BTreeMap<UnitState, usize>,
    index: HashMap<String, usize>,
    /// The units chosen to calibrate on, in dispatch order.
    pub calibration_units: Vec<usize>,
    /// Git mode: the commit `git.base` was pinned to at enqueue.
    pub git_base: Option<String>,
    /// The batch budget: reservations of attempts in flight, micro-dollars.
    budget_reserved: u64,
    /// The batch budget: settled spend of ended attempts, micro-dollars.
    budget_spent: u64,
}

/// How the calibration units went, for the human who approves the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CalibrationSummary {
    pub units: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub success_rate: f64,
    pub mean_duration_ms: Option<u64>,
    pub max_duration_ms: Option<u64>,
}

impl Batch {
    /// Starts a batch: every unit without dependencies is ready.
    pub fn new(id: String, manifest: Manifest, dag: Dag) -> Batch {
        let units: Vec<UnitRecord> = manifest
            .units
            .iter()
            .map(|unit| UnitRecord {
                id: unit.id.clone(),
                state: UnitState::Pending,
                failures: 0,
                attempt: 0,
                reason: None,
                history: Vec::new(),
                rebase_on: None,
                rebases: 0,
            })
            .collect();
        let remaining = (0..units.len())
            .map(|i| dag.dependencies(i).count() as u32)
            .collect();
        // A touched file's mutex is named by its absolute path: the same
        // file reached from two batches is one mutex, and two repositories'
        // files of the same relative name are two.
        // In git mode the files are the repository's: named by its remote.
        let workdir = match &manifest.git {
            Some(git) => git.repo.clone(),
            None => manifest.workdir.display().to_string(),
        };
        let demands = manifest
            .units
            .iter()
            .map(|unit| {
                unit.resource_demands()
                    .into_iter()
                    .map(
                        |(name, weight)| match name.strip_prefix(FILE_RESOURCE_PREFIX) {
                            Some(path) => (
                                format!(
                                    "{FILE_RESOURCE_PREFIX}{}/{path}",
                                    workdir.trim_end_matches('/')
                                ),
                                weight,
                            ),
                            None => (name, weight),
                        },
                    )
                    .collect()
            })
            .collect();
        let index = units
            .iter()
            .enumerate()
            .map(|(i, u)| (u.id.clone(), i))
            .collect();
        let mut counts = BTreeMap::new();
        counts.insert(UnitState::Pending, units.len());
        let mut batch = Batch {
            id,
            manifest,
            dag,
            state: BatchState::Running,
            units,
            remaining,
            ready: BTreeSet::new(),
            deferred_until: HashMap::new(),
            in_flight: 0,
            demands,
            counts,
            index,
            calibration_units: Vec::new(),
            git_base: None,
            budget_reserved: 0,
            budget_spent: 0,
        };
        if batch.calibration_size().is_some() {
            batch.state = BatchState::Calibrating;
        }
        for i in 0..batch.units.len() {
            if batch.remaining[i] == 0 {
                batch.set_state(i, UnitState::Ready);
            }
        }
        batch
    }

    /// Rebuilds a batch from its stored unit records (a restarted
    /// coordinator): succeeded units stay succeeded, in-flight ones keep
    /// their sessions, and what was ready is ready again.
    pub fn restore(
        id: String,
        manifest: Manifest,
        dag: Dag,
        state: BatchState,
        mut records: HashMap<String, UnitRecord>,
    ) -> Batch {
        let mut batch = Batch::new(id, manifest, dag);
        batch.state = state;
        // Start from a clean slate of counts, then apply each record.
        for unit in 0..batch.units.len() {
            let key = (Reverse(batch.manifest.units[unit].priority), unit);
            batch.ready.remove(&key);
        }
        batch.counts.clear();
        batch.counts.insert(UnitState::Pending, batch.units.len());
        for unit in 0..batch.units.len() {
            batch.units[unit].state = UnitState::Pending;
            if let Some(record) = records.remove(&batch.units[unit].id) {
                let state = record.state;
                batch.units[unit] = UnitRecord {
                    state: UnitState::Pending,
                    ..record
                };
                batch.set_state(unit, state);
            }
            if batch.units[unit]
                .history
                .iter()
                .any(|a| a.started_at_ms.is_some() || a.outcome.is_some())
                && batch.calibration_size().is_some()
            {
                batch.calibration_units.push(unit);
            }
        }
        for unit in 0..batch.units.len() {
            batch.remaining[unit] = batch
                .dag
                .dependencies(unit)
                .filter(|&d| !batch.satisfies(d))
                .count() as u32;
            if batch.remaining[unit] == 0 && batch.units[unit].state == UnitState::Pending {
                batch.set_state(unit, UnitState::Ready);
            }
        }
        batch.restore_budget();
        batch
    }

    /// This batch's share of the fleet's resource usage, derived from its
    /// units in flight: the fleet's ledger is the only one kept, and this
    /// view of it is for displays and tests.
    pub fn usage(&self) -> BTreeMap<String, u32> {
        let mut usage = BTreeMap::new();
        for unit in self.in_flight_units() {
            for (resource, weight) in &self.demands[unit] {
                *usage.entry(resource.clone()).or_insert(0) += weight;
            }
        }
        usage
    }

    /// Units whose session was published or running when the state was
    /// stored; used to restore the fleet-wide resource usage.
    pub fn in_flight_units(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.units.len()).filter(|&u| self.units[u].state.is_in_flight())
    }

    pub fn index_of(&self, unit_id: &str) -> Option<usize> {
        self.index.get(unit_id).copied()
    }

    /// How many units are in each state.
    pub fn counts(&self) -> &BTreeMap<UnitState, usize> {
        &self.counts
    }

    pub fn count(&self, state: UnitState) -> usize {
        self.counts.get(&state).copied().unwrap_or(0)
    }

    /// The resource shares a unit needs, touched files included.
    pub fn demand(&self, unit: usize) -> &[(String, u32)] {
        &self.demands[unit]
    }

    pub(super) fn set_state(&mut self, unit: usize, state: UnitState) {
        let old = self.units[unit].state;
        if old == state {
            return;
        }
        if let Some(n) = self.counts.get_mut(&old) {
            *n = n.saturating_sub(1);
        }
        *self.counts.entry(state).or_insert(0) += 1;
        let key = (Reverse(self.manifest.units[unit].priority), unit);
        if old == UnitState::Ready {
            self.ready.remove(&key);
        }
        if state == UnitState::Ready {
            self.ready.insert(key);
        }
        if old.is_in_flight() && !state.is_in_flight() {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if !old.is_in_flight() && state.is_in_flight() {
            self.in_flight += 1;
        }
        self.units[unit].state = state;
    }

    pub(super) fn release_dependents(&mut self, unit: usize, effects: &mut Effects) {
        let dependents: Vec<usize> = self.dag.dependents(unit).collect();
        for dependent in dependents {
            self.remaining[dependent] = self.remaining[dependent].saturating_sub(1);
            if self.remaining[dependent] == 0 && self.units[dependent].state == UnitState::Pending {
                self.set_state(dependent, UnitState::Ready);
                effects.changed.insert(dependent);
            }
        }
    }

    pub(super) fn block_descendants(&mut self, unit: usize, effects: &mut Effects) {
        let id = self.units[unit].id.clone();
        for descendant in self.dag.descendants(unit) {
            if matches!(
                self.units[descendant].state,
                UnitState::Pending | UnitState::Ready
            ) {
                self.set_state(descendant, UnitState::Blocked);
                self.units[descendant].reason =
                    Some(format!("blocked by '{id}', which needs review"));
                effects.changed.insert(descendant);
            }
        }
    }

    /// Ends the calibration when its units are done, and the batch when
    /// nothing can move any more.
    pub(super) fn update_batch_state(&mut self) {
        if self.state.is_terminal() {
            return;
        }
        if self.state == BatchState::Calibrating {
            let size = self.calibration_size().unwrap_or(0);
            let done = self.calibration_units.len() >= size
                && self
                    .calibration_units
                    .iter()
                    .all(|&u| self.units[u].state.is_terminal());
            if done {
                let summary = self.calibration_summary();
                let approved = self
                    .manifest
                    .calibration_auto
                    .is_some_and(|ratio| summary.is_some_and(|s| s.success_rate >= ratio));
                self.state = if approved {
                    BatchState::Running
                } else {
                    BatchState::AwaitingApproval
                };
            }
        }
        // In git mode a succeeded unit still has to land.
        let landing = if self.git_mode() {
            self.count(UnitState::Succeeded)
        } else {
            0
        };
        let live = self.count(UnitState::Pending)
            + self.count(UnitState::Ready)
            + self.count(UnitState::Queued)
            + self.count(UnitState::Running)
            + landing;
        if live > 0 {
            return;
        }
        let done = self.count(UnitState::Succeeded)
            + self.count(UnitState::Landed)
            + self.count(UnitState::Skipped);
        self.state = if done == self.units.len() {
            BatchState::Succeeded
        } else {
            BatchState::Failed
        };
    }
}
