//! A merge candidate: the target's tip plus a window of unit branches, one
//! merge commit per unit, built without a worktree so that the coordinator
//! never checks anything out.

use serde::{Deserialize, Serialize};

use crate::merge::merge_commit;
use crate::repo::{Git, Identity, Oid};
use crate::Error;

/// A candidate commit and how it was made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The target's tip the candidate starts from (the compare-and-swap's
    /// expected value).
    pub base: Oid,
    /// The last merge commit: what is tested and then pushed.
    pub commit: Oid,
    /// (unit, the merge commit that brought it in), in order.
    pub merges: Vec<(String, Oid)>,
}

/// The first unit of a window that does not merge, and its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitConflict {
    pub unit: String,
    pub files: Vec<String>,
}

/// Builds `tip` + each unit's commit in order, one merge commit per unit
/// (first parent the previous commit, second the unit's) with message
/// `message(unit)`, no worktree. Ok(Err(UnitConflict)) names the first unit
/// that does not merge. Every commit must be in the repository.
pub async fn build(
    git: &Git,
    tip: &Oid,
    units: &[(String, Oid)],
    message: impl Fn(&str) -> String,
    identity: &Identity,
) -> Result<Result<Candidate, UnitConflict>, Error> {
    let mut current = tip.clone();
    let mut merges = Vec::with_capacity(units.len());
    for (unit, commit) in units {
        match merge_commit(git, &current, commit, &message(unit), identity).await? {
            Ok(merged) => {
                merges.push((unit.clone(), merged.clone()));
                current = merged;
            }
            Err(files) => {
                return Ok(Err(UnitConflict {
                    unit: unit.clone(),
                    files,
                }))
            }
        }
    }
    Ok(Ok(Candidate {
        base: tip.clone(),
        commit: current,
        merges,
    }))
}
