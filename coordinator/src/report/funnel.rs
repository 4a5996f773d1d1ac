//! The outcome funnel: how each unit got where it is.

use regatta_proto::Outcome;
use serde::Serialize;

use crate::scheduler::UnitState;
use crate::service::UnitView;

/// One stage of the funnel: a count and (the first of) its units.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stage {
    /// `first_pass`, `passed_on_retry`, `repaired_by_gate`, `rebased`,
    /// `needs_review`, `skipped`, `blocked`, `cancelled`, `not_done`.
    pub stage: String,
    pub count: usize,
    /// At most 50 unit ids.
    pub units: Vec<String>,
}

/// Where each unit ended, by the way it got there.
pub fn funnel(units: &[UnitView]) -> Vec<Stage> {
    let order = [
        "first_pass",
        "repaired_by_gate",
        "passed_on_retry",
        "rebased",
        "needs_review",
        "skipped",
        "blocked",
        "cancelled",
        "not_done",
    ];
    let mut stages: Vec<Stage> = order
        .iter()
        .map(|s| Stage {
            stage: (*s).to_owned(),
            count: 0,
            units: Vec::new(),
        })
        .collect();
    for unit in units {
        let stage = stage_of(unit);
        if let Some(entry) = stages.iter_mut().find(|s| s.stage == stage) {
            entry.count += 1;
            if entry.units.len() < 50 {
                entry.units.push(unit.id.clone());
            }
        }
    }
    stages
}

fn stage_of(unit: &UnitView) -> &'static str {
    match unit.state {
        UnitState::Succeeded | UnitState::Landed => {}
        UnitState::NeedsReview => return "needs_review",
        UnitState::Skipped => return "skipped",
        UnitState::Blocked => return "blocked",
        UnitState::Cancelled => return "cancelled",
        _ => return "not_done",
    }
    let succeeded: Vec<_> = unit
        .history
        .iter()
        .filter(|a| a.outcome == Some(Outcome::Succeeded))
        .collect();
    // Git mode: an earlier success re-run on a newer tip.
    if succeeded.len() > 1 {
        return "rebased";
    }
    if unit
        .history
        .iter()
        .any(|a| a.outcome.is_some_and(Outcome::counts_as_attempt))
    {
        return "passed_on_retry";
    }
    if succeeded
        .iter()
        .any(|a| a.gates.iter().any(|g| g.repairs > 0))
    {
        return "repaired_by_gate";
    }
    "first_pass"
}
