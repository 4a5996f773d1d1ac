//! What people see of a merge train (`regatta train`) and of the branches
//! that would not merge (`regatta conflicts`), docs/git-mode.md.

use regatta_git::conflicts::{conflict_matrix, Conflict};
use regatta_git::train::CandidateState;
use regatta_proto::git::session_ref;
use serde::{Deserialize, Serialize};

use super::*;

/// A batch's merge train, with unit ids instead of positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrainView {
    pub batch_id: String,
    pub repo: String,
    pub target: String,
    /// `auto` or `manual`.
    pub merge: String,
    /// Whether the train runs (a manual one waits for `regatta merge`).
    pub started: bool,
    /// Units per candidate now.
    pub window: u32,
    /// The target's commit as the train last saw or moved it.
    pub tip: Option<String>,
    /// Why the train waits, when something outside it fails.
    pub waiting: Option<String>,
    /// Units in landing order.
    pub landed: Vec<String>,
    /// Units that succeeded and wait to land.
    pub waiting_to_land: Vec<String>,
    /// The units a bisection still suspects.
    pub suspects: Vec<String>,
    pub candidates: Vec<CandidateView>,
    /// Every integration session, in order: which worker ran it, how it
    /// ended, its log's tail and its evidence pack.
    pub integration_sessions: Vec<crate::scheduler::Attempt>,
}

/// One merge candidate (or one landing of a unit that changed nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CandidateView {
    pub id: u64,
    /// The units merged, in order, each with its commit.
    pub units: Vec<(String, String)>,
    /// The target's commit it was built on.
    pub tip: Option<String>,
    pub commit: Option<String>,
    /// planned, built, testing, passed, landed, failed, conflicted, raced,
    /// abandoned or unchanged.
    pub state: String,
    /// Why it failed, conflicted or raced.
    pub detail: Option<String>,
    pub integration_session: Option<String>,
    /// Planned as the first half of a failing range.
    pub bisecting: bool,
}

/// The pairs of branches that do not merge.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConflictsView {
    pub batch_id: String,
    pub target: String,
    /// The target's commit the branches were merged against.
    pub tip: String,
    /// The unit branches checked (succeeded, not landed).
    pub branches: Vec<String>,
    /// Each conflicting pair (`a` is `target` for a branch that does not
    /// merge onto the target) with its files.
    pub conflicts: Vec<Conflict>,
}

impl Service {
    /// The train of a git-mode batch.
    pub fn train(&self, batch_id: &str) -> Result<TrainView, Error> {
        let fleet = self.fleet();
        let entry = fleet
            .get(batch_id)
            .ok_or_else(|| Error::NotFound(format!("batch '{batch_id}'")))?;
        let (Some(train), Some(git)) = (&entry.extra.train, &entry.batch.manifest.git) else {
            return Err(not_git_mode(batch_id));
        };
        let id = |u: usize| entry.batch.units[u].id.clone();
        let plan = &train.stored.plan;
        let candidates = plan
            .history()
            .iter()
            .map(|c| {
                let (state, detail) = describe(&c.state, &id);
                CandidateView {
                    id: c.id,
                    units: c
                        .units
                        .iter()
                        .map(|(u, commit)| (id(*u), commit.clone()))
                        .collect(),
                    tip: c.tip.clone(),
                    commit: c.commit.clone(),
                    state: state.to_owned(),
                    detail,
                    integration_session: c.integration_session.clone(),
                    bisecting: c.bisecting,
                }
            })
            .collect();
        Ok(TrainView {
            batch_id: batch_id.to_owned(),
            repo: git.repo.clone(),
            target: git.target.clone(),
            merge: match git.merge {
                crate::manifest::MergeMode::Auto => "auto",
                crate::manifest::MergeMode::Manual => "manual",
            }
            .to_owned(),
            started: train.stored.started,
            window: plan.window(),
            tip: train.stored.tip.clone(),
            waiting: train.stored.waiting.clone(),
            landed: plan.landed_units().iter().map(|&u| id(u)).collect(),
            waiting_to_land: plan.waiting().into_iter().map(id).collect(),
            suspects: plan
                .suspects()
                .unwrap_or(&[])
                .iter()
                .map(|&u| id(u))
                .collect(),
            candidates,
            integration_sessions: train.integration.history.clone(),
        })
    }

    /// Git mode: the integration sessions as the units of a batch are
    /// shown, under the pseudo-unit `@integration`, so that `regatta
    /// sessions` and `regatta logs` show them too.
    pub fn integration_unit(&self, batch_id: &str) -> Option<super::UnitView> {
        let fleet = self.fleet();
        let record = &fleet.get(batch_id)?.extra.train.as_ref()?.integration;
        Some(super::UnitView {
            id: record.id.clone(),
            state: record.state,
            attempt: record.attempt,
            failures: record.failures,
            reason: record.reason.clone(),
            waiting_for: None,
            history: record.history.clone(),
            depends_on: Vec::new(),
        })
    }

    /// Merges every pair of succeeded, unlanded unit branches, and each
    /// against the target's tip, without a worktree.
    pub async fn conflicts(&self, batch_id: &str) -> Result<ConflictsView, Error> {
        let (git, branches, refs) = {
            let fleet = self.fleet();
            let entry = fleet
                .get(batch_id)
                .ok_or_else(|| Error::NotFound(format!("batch '{batch_id}'")))?;
            let batch = &entry.batch;
            let git = batch
                .manifest
                .git
                .clone()
                .ok_or_else(|| not_git_mode(batch_id))?;
            let succeeded =
                (0..batch.units.len()).filter(|&u| batch.units[u].state == UnitState::Succeeded);
            let mut branches = Vec::new();
            let mut refs = Vec::new();
            for u in succeeded {
                let (Some(commit), Some(attempt)) = (batch.commit_of(u), batch.units[u].current())
                else {
                    continue;
                };
                branches.push((batch.units[u].id.clone(), commit.to_owned()));
                refs.push(session_ref(batch_id, &attempt.session_id));
            }
            (git, branches, refs)
        };
        let unreachable =
            |e: regatta_git::Error| Error::Unavailable(format!("git mode: {}: {e}", git.repo));
        let mirror = self
            .mirrors
            .get(&self.config.git_dir, &git.repo)
            .await
            .map_err(Error::Unavailable)?;
        let mut wants = vec![format!("refs/heads/{}", git.target)];
        wants.extend(refs);
        let wants: Vec<&str> = wants.iter().map(String::as_str).collect();
        mirror.fetch(&wants).await.map_err(unreachable)?;
        let tip = regatta_git::remote::tip(&mirror, &git.target)
            .await
            .map_err(unreachable)?
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "the target branch {} is gone from {}",
                    git.target, git.repo
                ))
            })?;
        mirror.fetch(&[tip.as_str()]).await.map_err(unreachable)?;
        let conflicts = conflict_matrix(mirror.git(), &tip, &branches)
            .await
            .map_err(unreachable)?;
        Ok(ConflictsView {
            batch_id: batch_id.to_owned(),
            target: git.target,
            tip,
            branches: branches.into_iter().map(|(unit, _)| unit).collect(),
            conflicts,
        })
    }
}

fn not_git_mode(batch_id: &str) -> Error {
    Error::Conflict(format!(
        "batch '{batch_id}' is not in git mode: its manifest has no git block"
    ))
}

/// A candidate's state as the API spells it, with its detail.
fn describe(
    state: &CandidateState,
    id: &dyn Fn(usize) -> String,
) -> (&'static str, Option<String>) {
    match state {
        CandidateState::Planned => ("planned", None),
        CandidateState::Built => ("built", None),
        CandidateState::Testing => ("testing", None),
        CandidateState::Passed => ("passed", None),
        CandidateState::Landed => ("landed", None),
        CandidateState::Failed { reason } => ("failed", Some(reason.clone())),
        CandidateState::Conflicted { unit, files } => (
            "conflicted",
            Some(format!(
                "{} does not merge: {}",
                id(*unit),
                files.join(", ")
            )),
        ),
        CandidateState::Raced { actual } => (
            "raced",
            Some(format!(
                "the target moved to {}",
                actual.as_deref().unwrap_or("nothing")
            )),
        ),
        CandidateState::Abandoned { unit } => (
            "abandoned",
            Some(format!("{} changed before it landed", id(*unit))),
        ),
        CandidateState::Unchanged { unit } => {
            ("unchanged", Some(format!("{} changed nothing", id(*unit))))
        }
    }
}
