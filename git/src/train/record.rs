//! What the train tells its caller: the candidate to build next, the
//! record of each candidate, what a failure means and what a landing
//! settled. Plain values, stored with the train.

use serde::{Deserialize, Serialize};

use super::UnitIx;

/// A candidate to build on the caller's current tip: one merge commit per
/// unit, in this order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Planned {
    pub id: u64,
    pub units: Vec<(UnitIx, String)>,
}

/// What the train knows of one candidate (or of one landing without a merge).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CandidateRecord {
    /// Counts up from 1 over the batch.
    pub id: u64,
    /// The units merged, with their commits, in order; empty for
    /// [`CandidateState::Unchanged`].
    pub units: Vec<(UnitIx, String)>,
    /// The tip the candidate was built on.
    pub tip: Option<String>,
    /// The candidate's commit.
    pub commit: Option<String>,
    pub state: CandidateState,
    /// The session that ran the integration command on it.
    pub integration_session: Option<String>,
    /// Planned as the first half of a failing range.
    pub bisecting: bool,
}

/// Where a candidate stands; the first four are in flight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum CandidateState {
    Planned,
    Built,
    Testing,
    Passed,
    Landed,
    Failed {
        reason: String,
    },
    /// `unit` does not merge onto the tip.
    Conflicted {
        unit: UnitIx,
        files: Vec<String>,
    },
    /// The compare-and-swap found the target at `actual`.
    Raced {
        actual: Option<String>,
    },
    /// `unit` was withdrawn, skipped or offered anew before it landed.
    Abandoned {
        unit: UnitIx,
    },
    /// No candidate: `unit` changed nothing and landed without a merge once
    /// its dependencies had.
    Unchanged {
        unit: UnitIx,
    },
}

impl CandidateState {
    /// Still being built, tested or pushed.
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            CandidateState::Planned
                | CandidateState::Built
                | CandidateState::Testing
                | CandidateState::Passed
        )
    }
}

/// What a failed integration run means.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Verdict {
    /// This unit breaks integration: it needs review, its descendants wait.
    Culprit(UnitIx),
    /// More than one unit is suspect: the next candidate is the first half.
    Bisecting,
    /// The candidate was not in flight: nothing changed.
    Stale,
}

/// What a landed candidate settled.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Landing {
    /// Every unit that landed, in landing order: the candidate's, then the
    /// units that changed nothing and were waiting for them.
    pub units: Vec<UnitIx>,
    /// The last unit left of a failing range once its passing prefix
    /// landed: it is the culprit without another run.
    pub culprit: Option<UnitIx>,
}
