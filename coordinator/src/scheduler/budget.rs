//! The batch budget's side of admission (contract 9, docs/contracts.md): what
//! a unit's session reserves, whether it fits, and the coordinator's copy of
//! the ledger that Redis keeps.
//!
//! Redis's lease script decides (it reserves with the leases, all or none);
//! this copy only keeps the coordinator from publishing what Redis would
//! hand back, and says why a unit waits. It follows the same rules: a
//! session reserves at dispatch, a hand-back gives the reservation back,
//! and an end settles it at the reported cost, or spends it whole when the
//! cost is unknown (a lost session, a session that metered no cost).

use regatta_proto::batch_budget::micros;
use regatta_proto::{BudgetSpend, Outcome};

use super::{Batch, BatchState, UnitState};

/// What a session reserves when nothing better is known: no unit or
/// playbook cost cap, and no calibration to learn from yet.
pub const DEFAULT_RESERVATION_USD: f64 = 1.0;

impl Batch {
    /// The batch budget's ledger as this coordinator keeps it; `None` for a
    /// batch without a budget.
    pub fn budget_spend(&self) -> Option<BudgetSpend> {
        let budget = self.manifest.budget?;
        Some(BudgetSpend {
            reserved_micros: self.budget_reserved,
            spent_micros: self.budget_spent,
            cap_micros: micros(budget.cost_usd),
        })
    }

    /// What a unit's next session reserves, in micro-dollars: the unit's
    /// own cost cap; else, once the calibration is over, the calibration
    /// units' p90 actual cost; else the playbook's cost cap; else
    /// [`DEFAULT_RESERVATION_USD`].
    pub fn reservation(&self, unit: usize) -> u64 {
        self.reservation_with(unit, self.calibration_p90())
    }

    pub(super) fn reservation_with(&self, unit: usize, calibration_p90: Option<u64>) -> u64 {
        let own = self.manifest.units[unit]
            .budget
            .as_ref()
            .and_then(|b| b.cost_usd);
        let playbook = self
            .manifest
            .playbook
            .budget
            .as_ref()
            .and_then(|b| b.cost_usd);
        match (own, calibration_p90) {
            (Some(cap), _) => micros(cap),
            (None, Some(p90)) => p90,
            (None, None) => micros(playbook.unwrap_or(DEFAULT_RESERVATION_USD)),
        }
    }

    /// The p90 of the calibration units' actual costs, once the calibration
    /// is over and some of them reported a cost.
    pub(super) fn calibration_p90(&self) -> Option<u64> {
        self.calibration_size()?;
        if self.state == BatchState::Calibrating {
            return None;
        }
        let mut costs: Vec<u64> = self
            .calibration_units
            .iter()
            .flat_map(|&u| &self.units[u].history)
            .filter_map(|a| a.usage.as_ref()?.cost_usd.map(micros))
            .collect();
        p90(&mut costs)
    }

    /// The admission rule's budget part, written once for dispatch and for
    /// "what does it wait for": the ledger, with `also_reserved` more
    /// reserved, when a reservation of `reserve` does not fit under the cap.
    pub(super) fn budget_shortfall(&self, reserve: u64, also_reserved: u64) -> Option<BudgetSpend> {
        let mut spend = self.budget_spend()?;
        spend.reserved_micros += also_reserved;
        (!spend.fits(reserve)).then_some(spend)
    }

    /// Takes a dispatched attempt's reservation into the ledger.
    pub(super) fn reserve_budget(&mut self, unit: usize, reserve: u64) {
        if self.manifest.budget.is_none() {
            return;
        }
        if let Some(attempt) = self.units[unit].current_mut() {
            attempt.reserved_micros = Some(reserve);
            self.budget_reserved += reserve;
        }
    }

    /// Gives back the current attempt's reservation (a hand-back) or, with
    /// `settle`, replaces it with the attempt's cost: `actual_usd`, or the
    /// whole reservation when unknown.
    pub(super) fn unreserve_budget(&mut self, unit: usize, settle: Option<Option<f64>>) {
        let Some(reserved) = self.units[unit].current().and_then(|a| a.reserved_micros) else {
            return;
        };
        self.budget_reserved = self.budget_reserved.saturating_sub(reserved);
        if let Some(actual) = settle {
            self.budget_spent += actual.map(micros).unwrap_or(reserved);
        }
    }

    /// Rebuilds the ledger from stored records (a restarted coordinator).
    pub(super) fn restore_budget(&mut self) {
        let (mut reserved, mut spent) = (0, 0);
        for record in &self.units {
            for attempt in &record.history {
                let Some(reserve) = attempt.reserved_micros else {
                    continue;
                };
                if let Some(outcome) = attempt.outcome {
                    // As `report` settled it: an attempt that never took
                    // its lease spent nothing.
                    if outcome != Outcome::Lost && attempt.started_at_ms.is_none() {
                        continue;
                    }
                    let actual = attempt.usage.as_ref().and_then(|u| u.cost_usd);
                    spent += actual.map(micros).unwrap_or(reserve);
                } else if record.state.is_in_flight() {
                    reserved += reserve;
                }
            }
        }
        self.budget_reserved = reserved;
        self.budget_spent = spent;
    }

    /// The ledger to write back to a Redis that lost its data: the running
    /// sessions' leases were forgotten there, so their reservations count
    /// as spent, as a reaped lease's would; a queued session has not
    /// reserved in Redis yet (its claim will).
    pub fn budget_after_loss(&self) -> Option<BudgetSpend> {
        let mut spend = self.budget_spend()?;
        let running: u64 = self
            .units
            .iter()
            .filter(|r| r.state == UnitState::Running)
            .filter_map(|r| r.current()?.reserved_micros)
            .sum();
        spend.reserved_micros = 0;
        spend.spent_micros += running;
        Some(spend)
    }

    /// Says whether a ready unit waits on the batch budget, and in what words.
    pub(super) fn budget_wait(&self, unit: usize) -> Option<String> {
        if self.units[unit].state != UnitState::Ready {
            return None;
        }
        self.budget_shortfall(self.reservation(unit), 0)
            .map(|spend| spend.to_string())
    }
}

/// The 90th percentile by nearest rank: the smallest value at least 90% of
/// the values are at or below. `None` for no values.
pub fn p90(values: &mut [u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (values.len() * 9).div_ceil(10);
    values.get(rank.saturating_sub(1)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p90_is_the_nearest_rank() {
        assert_eq!(p90(&mut []), None);
        assert_eq!(p90(&mut [7]), Some(7));
        let mut ten: Vec<u64> = (1..=10).rev().collect();
        assert_eq!(p90(&mut ten), Some(9));
        let mut twenty: Vec<u64> = (1..=20).collect();
        assert_eq!(p90(&mut twenty), Some(18));
        assert_eq!(p90(&mut [5, 1, 100]), Some(100));
    }
}
