//! What a session's report does to its unit: started, handed back, or
//! finished with an outcome that succeeds, retries, or sends it to review;
//! a session that ends gives its resource shares back to the fleet.

use std::collections::BTreeMap;

use regatta_proto::Outcome;

use super::{Batch, BatchState, Effects, Report, UnitState, DEFER_MS};

impl Batch {
    /// Applies a worker's report about a session. Reports about any session
    /// but the unit's current one are stale and change nothing; so does a
    /// report that repeats what is already known.
    pub(super) fn report(
        &mut self,
        unit: usize,
        session_id: &str,
        report: Report,
        fleet_usage: &mut BTreeMap<String, u32>,
    ) -> Effects {
        let mut effects = Effects::default();
        let state = self.units[unit].state;
        let current = self.units[unit].current().map(|a| a.session_id.as_str());
        if current != Some(session_id) || !state.is_in_flight() {
            return effects;
        }
        match report {
            Report::Started {
                worker,
                fencing,
                at_ms,
            } => {
                if state != UnitState::Queued {
                    return effects;
                }
                self.set_state(unit, UnitState::Running);
                if let Some(attempt) = self.units[unit].current_mut() {
                    attempt.worker = Some(worker);
                    attempt.fencing = fencing;
                    attempt.started_at_ms = Some(at_ms);
                }
                effects.changed.insert(unit);
            }
            // Only a claim that never started can be handed back.
            Report::Deferred { .. }
                if state != UnitState::Queued
                    || self.units[unit]
                        .current()
                        .is_some_and(|a| a.started_at_ms.is_some()) =>
            {
                return effects;
            }
            Report::Deferred {
                reason,
                received_at_ms,
            } => {
                self.release_usage(unit, fleet_usage);
                self.unreserve_budget(unit, None);
                self.set_state(unit, UnitState::Ready);
                let record = &mut self.units[unit];
                record.reason = Some(reason);
                // The attempt never ran: it does not count.
                record.history.pop();
                record.attempt = record.attempt.saturating_sub(1);
                // By the coordinator's clock, as `dispatch` compares it.
                self.deferred_until.insert(unit, received_at_ms + DEFER_MS);
                effects.changed.insert(unit);
            }
            Report::Finished(finish) => {
                // A session's events carry its lease's fencing number; an
                // older number is a zombie of a previous claim.
                let known = self.units[unit].current().map(|a| a.fencing).unwrap_or(0);
                if finish.fencing > 0 && known > 0 && finish.fencing != known {
                    return effects;
                }
                self.release_usage(unit, fleet_usage);
                // The budget settles at the reported cost, as Redis does;
                // an attempt that never took its lease (an order refused
                // before it ran) reserved nothing there, and settles nothing.
                // A short session's start comes only in its `Finished`.
                let cost = finish.usage.as_ref().and_then(|u| u.cost_usd);
                let never_ran = finish.outcome != Outcome::Lost
                    && finish.started_at_ms.is_none()
                    && self.units[unit]
                        .current()
                        .is_some_and(|a| a.started_at_ms.is_none());
                self.unreserve_budget(unit, (!never_ran).then_some(cost));
                // A git-mode success must name a commit the train can merge.
                let (outcome, reason) =
                    match self.unusable_git_result(finish.outcome, finish.git.as_deref()) {
                        Some(problem) => (Outcome::Failed, Some(problem)),
                        None => (finish.outcome, finish.reason.clone()),
                    };
                if let Some(attempt) = self.units[unit].current_mut() {
                    attempt.conclude(finish, outcome, reason.clone());
                }
                effects.changed.insert(unit);
                if let Some(files) = self.dependency_conflict(unit) {
                    // Git mode: the dependencies' commits conflict; no
                    // retry can change that, a person must.
                    let record = &mut self.units[unit];
                    record.reason = Some(reason.unwrap_or_else(|| {
                        format!("its dependencies conflict in {}", files.join(", "))
                    }));
                    self.set_state(unit, UnitState::NeedsReview);
                    self.block_descendants(unit, &mut effects);
                    self.update_batch_state();
                    return effects;
                }
                match outcome {
                    Outcome::Succeeded if self.git_mode() => {
                        // Its dependents start once it has landed.
                        self.set_state(unit, UnitState::Succeeded);
                        self.units[unit].reason = Some("waiting to land".into());
                    }
                    Outcome::Succeeded => {
                        self.set_state(unit, UnitState::Succeeded);
                        self.units[unit].reason = None;
                        self.release_dependents(unit, &mut effects);
                    }
                    // A worker reports a cancel only for a cancelled batch;
                    // should one arrive for a live batch, run the unit again
                    // rather than leave its dependents waiting forever.
                    Outcome::Cancelled if self.state != BatchState::Cancelled => {
                        self.set_state(unit, UnitState::Ready);
                        self.units[unit].reason = reason;
                    }
                    Outcome::Cancelled => {
                        self.set_state(unit, UnitState::Cancelled);
                        self.units[unit].reason = reason;
                    }
                    Outcome::Interrupted => {
                        // Not the unit's fault: run it again, uncounted.
                        self.set_state(unit, UnitState::Ready);
                        self.units[unit].reason = reason;
                    }
                    // Over budget: a re-run would likely spend as much
                    // again, so it goes to review unless the playbook lets
                    // it retry.
                    Outcome::OverBudget if !self.manifest.playbook.retry_over_budget => {
                        let record = &mut self.units[unit];
                        record.failures += 1;
                        record.reason = reason;
                        self.set_state(unit, UnitState::NeedsReview);
                        self.block_descendants(unit, &mut effects);
                    }
                    Outcome::Failed | Outcome::TimedOut | Outcome::Lost | Outcome::OverBudget => {
                        let retries = self.manifest.effective_retries(&self.manifest.units[unit]);
                        let record = &mut self.units[unit];
                        record.failures += 1;
                        record.reason = reason;
                        if record.failures <= retries {
                            self.set_state(unit, UnitState::Ready);
                        } else {
                            self.set_state(unit, UnitState::NeedsReview);
                            self.block_descendants(unit, &mut effects);
                        }
                    }
                }
            }
        }
        self.update_batch_state();
        effects
    }

    pub(super) fn release_usage(&mut self, unit: usize, fleet_usage: &mut BTreeMap<String, u32>) {
        for (resource, weight) in &self.demands[unit] {
            if let Some(used) = fleet_usage.get_mut(resource) {
                *used = used.saturating_sub(*weight);
            }
        }
    }
}
