//! A git-mode batch's merge train as the service keeps it: the plan and
//! what it waits for, stored in the batch record, and the integration
//! sessions' record beside the units'; restored after a restart so that it
//! agrees with the units it already landed or convicted.

use std::collections::HashMap;

use regatta_git::train::Train;
use regatta_proto::{WorkOrder, INTEGRATION_UNIT};
use serde::{Deserialize, Serialize};

use super::integration::integration_order;
use super::Service;
use crate::scheduler::{Batch, UnitRecord, UnitState};
use crate::store::Write;

/// A git-mode batch's train, as the service keeps and stores it.
pub(super) struct TrainEntry {
    pub(super) stored: StoredTrain,
    /// The integration sessions: the attempts of a pseudo-unit whose record
    /// sits beside the units' so that claims and reaping treat it alike.
    pub(super) integration: UnitRecord,
}

/// The part of a train stored in the batch record (field `train`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredTrain {
    pub(super) plan: Train,
    /// `merge: manual` trains wait for `regatta merge`.
    pub(super) started: bool,
    /// The target's tip when the train last moved it or looked.
    pub(super) tip: Option<String>,
    /// Why the train waits, when something outside it fails (the remote).
    pub(super) waiting: Option<String>,
    /// Units whose branch merges onto the tip but not after the units
    /// before them in a candidate: they re-run once those have landed, on
    /// the tip that holds them (with the files that conflicted).
    #[serde(default)]
    pub(super) rebase_after_landing: Vec<(usize, Vec<String>)>,
    /// Integration sessions of the candidate in flight lost in a row.
    #[serde(default)]
    pub(super) lost_runs: u32,
}

impl TrainEntry {
    /// A new batch's train: every unit in a topological order.
    pub(super) fn new(batch: &Batch) -> Option<TrainEntry> {
        let git = batch.manifest.git.as_ref()?;
        let units = batch
            .dag
            .topological_order()
            .map(|u| (u, batch.dag.dependencies(u).collect()))
            .collect();
        Some(TrainEntry {
            stored: StoredTrain {
                plan: Train::new(git.window, units),
                started: git.merge == crate::manifest::MergeMode::Auto,
                tip: None,
                waiting: None,
                rebase_after_landing: Vec::new(),
                lost_runs: 0,
            },
            integration: UnitRecord {
                id: INTEGRATION_UNIT.to_owned(),
                state: UnitState::Pending,
                failures: 0,
                attempt: 0,
                reason: None,
                history: Vec::new(),
                rebase_on: None,
                rebases: 0,
            },
        })
    }
}

impl TrainEntry {
    /// A restarted coordinator's train: as stored, or new if none was.
    ///
    /// The train is stored before the unit records it changes, so a crash
    /// in between leaves units the plan landed (or convicted) still
    /// `succeeded`: they are brought in line here, in memory, which is
    /// idempotent should the coordinator crash again.
    pub(super) fn restore(
        batch: &mut Batch,
        record: &HashMap<String, String>,
        integration: Option<&str>,
    ) -> Option<TrainEntry> {
        let mut train = TrainEntry::new(batch)?;
        let stored = match record.get("train").map(|json| serde_json::from_str(json)) {
            Some(Ok(stored)) => Some(stored),
            Some(Err(e)) => {
                tracing::error!(batch = %batch.id, error = %e, "the stored merge train is unreadable; it starts again from the units' states");
                None
            }
            None => None,
        };
        match stored {
            Some(stored) => train.stored = stored,
            // A new plan: what landed counts as done for its descendants.
            None => {
                for unit in 0..batch.units.len() {
                    if matches!(
                        batch.units[unit].state,
                        UnitState::Landed | UnitState::Skipped
                    ) {
                        train.stored.plan.skip(unit);
                    }
                }
            }
        }
        if let Some(record) = integration.and_then(|json| serde_json::from_str(json).ok()) {
            train.integration = record;
        }
        let plan = &mut train.stored.plan;
        for &unit in plan.landed_units() {
            batch.land(unit);
        }
        for unit in plan.culprits() {
            batch.reject(unit, "it breaks the integration tests".into());
        }
        // Units that succeeded while no train was stored are offered again;
        // an offer the train already holds changes nothing. Those waiting
        // for a landing to re-run stay off the plan.
        let deferred: Vec<usize> = train
            .stored
            .rebase_after_landing
            .iter()
            .map(|(unit, _)| *unit)
            .collect();
        for unit in 0..batch.units.len() {
            if batch.units[unit].state == UnitState::Succeeded && !deferred.contains(&unit) {
                let commit = batch.commit_of(unit).map(str::to_owned);
                train.stored.plan.offer(unit, commit);
            }
        }
        Some(train)
    }
}

impl TrainEntry {
    /// The order of the integration session that is queued, to publish
    /// again after a restart (it may never have reached the broker).
    pub(super) fn queued_order(&self, batch: &Batch, now_ms: i64) -> Option<WorkOrder> {
        if self.integration.state != UnitState::Queued {
            return None;
        }
        let candidate = self.stored.plan.in_flight()?;
        let commit = candidate.commit.as_deref()?;
        let mut order = integration_order(batch, &self.integration, candidate.id, commit, now_ms);
        if let Some(attempt) = self.integration.current() {
            order.published_at_ms = attempt.published_at_ms;
        }
        Some(order)
    }
}

impl Service {
    /// Stores the train's plan in its batch record.
    pub(super) fn store_train(&self, batch_id: &str, train: &TrainEntry) {
        if let Ok(json) = serde_json::to_string(&train.stored) {
            self.store.write(Write::Hash {
                key: self.config.keys.batch(batch_id),
                fields: vec![("train".into(), json)],
            });
        }
    }

    /// Stores the integration sessions' record beside the units'.
    pub(super) fn store_integration(&self, batch_id: &str, train: &TrainEntry) {
        if let Ok(json) = serde_json::to_string(&train.integration) {
            self.store.write(Write::Hash {
                key: self.config.keys.units(batch_id),
                fields: vec![(INTEGRATION_UNIT.to_owned(), json)],
            });
        }
    }
}
