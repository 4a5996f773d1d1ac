//! What the API and the CLI show of batches, units and leases.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Entry;
use crate::scheduler::{BatchState, Member, UnitState};

/// What the API shows of a batch.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BatchSummary {
    pub id: String,
    pub name: String,
    pub state: BatchState,
    pub total: usize,
    pub counts: BTreeMap<UnitState, usize>,
    pub created_ms: i64,
    pub ended_ms: Option<i64>,
    /// The sha256 of the manifest as enqueued, for evidence packs.
    pub manifest_sha256: String,
    pub concurrency: u32,
    pub resources: Vec<ResourceView>,
    /// How the calibration units went, when the batch calibrates.
    pub calibration: Option<crate::scheduler::CalibrationSummary>,
    /// Git mode: where the merge train stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainSummary>,
}

/// A merge train in a line: what `regatta status` shows of it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TrainSummary {
    pub target: String,
    /// The target's commit as the train last saw or moved it.
    pub tip: Option<String>,
    pub started: bool,
    pub landed: usize,
    pub waiting_to_land: usize,
    /// Candidates tested, passed and failed so far.
    pub tested: usize,
    pub passed: usize,
    pub failed: usize,
    /// Why it waits, when something outside it fails.
    pub waiting: Option<String>,
}

/// A shared resource as seen by the coordinator.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ResourceView {
    pub name: String,
    pub capacity: u32,
    /// Shares in use over the whole fleet (every batch).
    pub in_use: u32,
    /// This batch's units that hold a share (published or running).
    pub holders: Vec<String>,
    /// This batch's ready units that need it.
    pub waiting: Vec<String>,
}

/// A live lease, as `regatta leases` lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LeaseView {
    pub session_id: String,
    pub worker: String,
    pub batch_id: String,
    pub unit_id: String,
    pub attempt: u32,
    pub fencing: u64,
    pub expires_at_ms: i64,
    /// The semaphores held, with the weight held in each.
    pub semaphores: Vec<(String, u32)>,
}

/// What the API shows of a unit.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UnitView {
    pub id: String,
    pub state: UnitState,
    pub attempt: u32,
    pub failures: u32,
    pub reason: Option<String>,
    pub waiting_for: Option<String>,
    pub history: Vec<crate::scheduler::Attempt>,
}

pub(super) fn summary(
    id: &str,
    entry: &Member<Entry>,
    usage: &BTreeMap<String, u32>,
) -> BatchSummary {
    let batch = &entry.batch;
    BatchSummary {
        id: id.to_owned(),
        name: batch.manifest.batch.clone(),
        state: batch.state,
        total: batch.units.len(),
        counts: batch
            .counts()
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (*s, *n))
            .collect(),
        created_ms: entry.extra.created_ms,
        ended_ms: entry.extra.ended_ms,
        manifest_sha256: entry.extra.manifest_sha256.clone(),
        concurrency: batch.manifest.concurrency,
        calibration: batch.calibration_summary(),
        train: entry
            .extra
            .train
            .as_ref()
            .zip(batch.manifest.git.as_ref())
            .map(|(train, git)| {
                let plan = &train.stored.plan;
                let count = |f: &dyn Fn(&regatta_git::train::CandidateState) -> bool| {
                    plan.history().iter().filter(|c| f(&c.state)).count()
                };
                use regatta_git::train::CandidateState as S;
                let passed = count(&|s| matches!(s, S::Passed | S::Landed | S::Raced { .. }));
                let failed = count(&|s| matches!(s, S::Failed { .. }));
                TrainSummary {
                    target: git.target.clone(),
                    tip: train.stored.tip.clone(),
                    started: train.stored.started,
                    landed: plan.landed_units().len(),
                    waiting_to_land: plan.waiting().len(),
                    tested: passed + failed,
                    passed,
                    failed,
                    waiting: train.stored.waiting.clone(),
                }
            }),
        resources: batch
            .manifest
            .resources
            .iter()
            .map(|(name, capacity)| {
                let needs = |u: &usize| batch.demand(*u).iter().any(|(r, _)| r == name);
                let ids = |state: UnitState| -> Vec<String> {
                    (0..batch.units.len())
                        .filter(|u| batch.units[*u].state == state && needs(u))
                        .map(|u| batch.units[u].id.clone())
                        .collect()
                };
                let mut holders = ids(UnitState::Queued);
                holders.extend(ids(UnitState::Running));
                ResourceView {
                    name: name.clone(),
                    capacity: *capacity,
                    in_use: usage.get(name).copied().unwrap_or(0),
                    holders,
                    waiting: ids(UnitState::Ready),
                }
            })
            .collect(),
    }
}
