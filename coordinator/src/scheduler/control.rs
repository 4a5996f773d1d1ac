//! What people do to a running batch: cancel, calibrate and approve, pause
//! and resume, retry and skip units in review, and ask what a unit waits for.

use std::collections::{BTreeMap, BTreeSet};

use crate::dag::Dag;

use super::{Batch, BatchState, CalibrationSummary, Effects, UnitState};

impl Batch {
    /// Cancels the batch: nothing new starts. The coordinator's own
    /// accounting frees the batch's shares at once, but running sessions are
    /// not revoked in Redis: their workers hear of the cancel (a notice on
    /// the control channel, or else their next lease renewal), kill them and
    /// only then release their leases. A unit of
    /// another batch published meanwhile finds the lease still held and is
    /// handed back, so a slot is never used twice while its session is
    /// still dying (contract 6, docs/contracts.md).
    pub(super) fn cancel(&mut self, fleet_usage: &mut BTreeMap<String, u32>) -> Effects {
        let mut effects = Effects::default();
        if self.state.is_terminal() {
            return effects;
        }
        self.state = BatchState::Cancelled;
        for unit in 0..self.units.len() {
            let state = self.units[unit].state;
            if state.is_in_flight() {
                self.release_usage(unit, fleet_usage);
            }
            if !state.is_terminal() || state == UnitState::Blocked {
                self.set_state(unit, UnitState::Cancelled);
                self.units[unit].reason = Some("the batch was cancelled".into());
                effects.changed.insert(unit);
            }
        }
        effects
    }

    /// How many units calibrate the batch, when it calibrates at all (a
    /// calibration as large as the batch is just a run).
    pub fn calibration_size(&self) -> Option<usize> {
        self.manifest
            .calibration
            .map(|n| n as usize)
            .filter(|&n| n > 0 && n < self.units.len())
    }

    /// How the calibration units went so far.
    pub fn calibration_summary(&self) -> Option<CalibrationSummary> {
        self.calibration_size()?;
        let units = &self.calibration_units;
        let succeeded = units
            .iter()
            .filter(|&&u| self.units[u].state.satisfies_dependents())
            .count();
        let failed = units
            .iter()
            .filter(|&&u| matches!(self.units[u].state, UnitState::NeedsReview))
            .count();
        let durations: Vec<u64> = units
            .iter()
            .filter_map(|&u| {
                let attempt = self.units[u].current()?;
                Some(attempt.ended_at_ms?.saturating_sub(attempt.started_at_ms?) as u64)
            })
            .collect();
        let mean =
            (!durations.is_empty()).then(|| durations.iter().sum::<u64>() / durations.len() as u64);
        Some(CalibrationSummary {
            units: units.len(),
            succeeded,
            failed,
            success_rate: if units.is_empty() {
                0.0
            } else {
                succeeded as f64 / units.len() as f64
            },
            mean_duration_ms: mean,
            max_duration_ms: durations.iter().max().copied(),
        })
    }

    /// Releases the rest of a calibrating or calibrated batch.
    pub fn approve(&mut self) -> bool {
        if matches!(
            self.state,
            BatchState::Calibrating | BatchState::AwaitingApproval
        ) {
            self.state = BatchState::Running;
            self.update_batch_state();
            true
        } else {
            false
        }
    }

    /// Holds new starts; running sessions go on.
    pub fn pause(&mut self) -> bool {
        if self.state == BatchState::Running {
            self.state = BatchState::Paused;
            true
        } else {
            false
        }
    }

    pub fn resume(&mut self) -> bool {
        if self.state == BatchState::Paused {
            self.state = BatchState::Running;
            true
        } else {
            false
        }
    }

    /// Sends a `needs_review` unit back to `ready` with a fresh retry
    /// budget; the units it blocked return to `pending`.
    pub fn retry(&mut self, unit: usize) -> Result<Effects, String> {
        self.review(unit, UnitState::Ready)
    }

    /// Marks a `needs_review` unit as done by hand; its dependents may run.
    pub fn skip(&mut self, unit: usize) -> Result<Effects, String> {
        self.review(unit, UnitState::Skipped)
    }

    fn review(&mut self, unit: usize, to: UnitState) -> Result<Effects, String> {
        let record = &self.units[unit];
        if record.state != UnitState::NeedsReview {
            return Err(format!(
                "unit '{}' is {}, not needs_review",
                record.id,
                record.state.as_str()
            ));
        }
        if self.state == BatchState::Cancelled {
            return Err(format!("batch '{}' is cancelled", self.id));
        }
        let mut effects = Effects::default();
        self.units[unit].failures = 0;
        self.units[unit].reason = None;
        self.set_state(unit, to);
        effects.changed.insert(unit);
        // Unblock descendants that no other needs_review ancestor holds.
        for descendant in self.dag.descendants(unit) {
            if self.units[descendant].state != UnitState::Blocked {
                continue;
            }
            let still_blocked = ancestors(&self.dag, descendant)
                .into_iter()
                .any(|a| a != unit && self.units[a].state == UnitState::NeedsReview);
            if !still_blocked {
                let next = if self.remaining[descendant] == 0 {
                    UnitState::Ready
                } else {
                    UnitState::Pending
                };
                self.set_state(descendant, next);
                self.units[descendant].reason = None;
                effects.changed.insert(descendant);
            }
        }
        if to == UnitState::Skipped {
            self.release_dependents(unit, &mut effects);
        }
        if self.state.is_terminal() {
            self.state = BatchState::Running;
        }
        self.update_batch_state();
        Ok(effects)
    }

    /// Every unit in `needs_review`.
    pub fn needs_review(&self) -> Vec<usize> {
        (0..self.units.len())
            .filter(|&u| self.units[u].state == UnitState::NeedsReview)
            .collect()
    }

    /// Says what a ready unit waits for, for status displays.
    pub(super) fn waiting_for(
        &self,
        unit: usize,
        fleet_usage: &BTreeMap<String, u32>,
    ) -> Option<String> {
        if self.units[unit].state != UnitState::Ready {
            return None;
        }
        if self.state == BatchState::Paused {
            return Some("the batch is paused".into());
        }
        let handed_back = self.units[unit].reason.as_deref();
        if let Some(reason) = handed_back.filter(|r| r.starts_with("batch budget")) {
            // Redis's own ledger refused the reservation: its words.
            if self.deferred_until.contains_key(&unit) {
                return Some(reason.to_owned());
            }
        }
        if self.deferred_until.contains_key(&unit) {
            return Some(format!(
                "a lease still held in Redis ({})",
                self.units[unit]
                    .reason
                    .as_deref()
                    .unwrap_or("handed back by a worker")
            ));
        }
        if self.in_flight >= self.manifest.concurrency {
            return Some(format!(
                "the batch cap ({} sessions)",
                self.manifest.concurrency
            ));
        }
        self.full_resource(unit, fleet_usage)
            .map(|(resource, used, capacity)| {
                format!("resource {resource} ({used}/{capacity} in use)")
            })
            .or_else(|| self.budget_wait(unit))
    }
}

/// Every unit that a unit depends on, directly or not.
fn ancestors(dag: &Dag, unit: usize) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<usize> = dag.dependencies(unit).collect();
    while let Some(next) = stack.pop() {
        if seen.insert(next) {
            stack.extend(dag.dependencies(next));
        }
    }
    seen.into_iter().collect()
}
