//! The merge train's I/O (docs/git-mode.md): the plan is pure
//! ([`regatta_git::train`]); here candidates are built in the coordinator's
//! mirror without a worktree, tested by an integration session on a worker,
//! and landed with a compare-and-swap on the remote.
//!
//! Every step is stored before the next one starts, and the remote is the
//! judge of what landed: a coordinator killed between a passing test and
//! the swap finds the target at the candidate (it landed) or at its tip
//! (swap again) or elsewhere (raced: rebuild), and never lands a unit twice.
//!
//! - [`train_entry`](super::train_entry): what a train stores, and how it is restored;
//! - [`integration`](super::integration): the integration sessions that test candidates;
//! - [`mirrors`](super::mirrors): the coordinator's mirrors of the remotes;
//! - here: the loop that moves every train, one step at a time.

use regatta_git::candidate;
use regatta_git::mirror::Mirror;
use regatta_git::remote::{self, Swap};
use regatta_git::repo::Identity;
use regatta_git::train::CandidateState;
use regatta_proto::git::{candidate_ref, session_ref};

use super::train_entry::TrainEntry;
use super::*;
use crate::metrics::CandidateLabels;

/// The next step of a train, chosen under the fleet's lock.
enum Step {
    Build {
        candidate: u64,
        units: Vec<(String, String)>,
        /// Where the units' commits are: their sessions' refs.
        refs: Vec<String>,
    },
    Publish {
        candidate: u64,
        commit: String,
    },
    Swap {
        candidate: u64,
        expected: String,
        new: String,
    },
}

/// Who the train's merge commits are by.
fn train_identity(batch_id: &str) -> Identity {
    Identity {
        name: "regatta merge train".into(),
        email: format!("{batch_id}@regatta.invalid"),
    }
}

impl Service {
    /// Moves every started train one step at a time until shutdown.
    pub(super) async fn train_loop(self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.train_wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            let trains: Vec<String> = {
                let fleet = self.fleet();
                fleet
                    .iter()
                    .filter(|(_, e)| {
                        e.extra.train.as_ref().is_some_and(|t| t.stored.started)
                            && !matches!(e.batch.state, BatchState::Cancelled)
                    })
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            for batch_id in trains {
                // A few steps per batch per round: building, then testing.
                for _ in 0..4 {
                    match self.advance_train(&batch_id).await {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(why) => {
                            self.train_waits(&batch_id, Some(why));
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Records (and logs, once) why a train waits.
    fn train_waits(&self, batch_id: &str, why: Option<String>) {
        let mut fleet = self.fleet();
        let Some(entry) = fleet.get_mut(batch_id) else {
            return;
        };
        let Some(train) = entry.extra.train.as_mut() else {
            return;
        };
        if train.stored.waiting != why {
            if let Some(why) = &why {
                tracing::warn!(batch = %batch_id, reason = %why, "merge train waits");
            }
            train.stored.waiting = why;
            self.store_train(batch_id, train);
        }
    }

    /// Takes one step of a train; `Ok(true)` when another may follow at once.
    async fn advance_train(&self, batch_id: &str) -> Result<bool, String> {
        let (step, repo, target) = {
            let mut fleet = self.fleet();
            let Some(entry) = fleet.get_mut(batch_id) else {
                return Ok(false);
            };
            let Some(git) = entry.batch.manifest.git.clone() else {
                return Ok(false);
            };
            let Some(train) = entry.extra.train.as_mut() else {
                return Ok(false);
            };
            let names = |units: &[(usize, String)]| {
                units
                    .iter()
                    .map(|(u, commit)| (entry.batch.units[*u].id.clone(), commit.clone()))
                    .collect::<Vec<_>>()
            };
            let refs = |units: &[(usize, String)]| {
                units
                    .iter()
                    .filter_map(|(u, _)| entry.batch.units[*u].current())
                    .map(|a| session_ref(batch_id, &a.session_id))
                    .collect::<Vec<_>>()
            };
            let step = match train.stored.plan.in_flight().cloned() {
                Some(record) => match record.state {
                    CandidateState::Planned => Step::Build {
                        candidate: record.id,
                        units: names(&record.units),
                        refs: refs(&record.units),
                    },
                    CandidateState::Built => Step::Publish {
                        candidate: record.id,
                        commit: record.commit.clone().unwrap_or_default(),
                    },
                    // A session lost or handed back: test it again.
                    CandidateState::Testing if train.integration.state == UnitState::Ready => {
                        Step::Publish {
                            candidate: record.id,
                            commit: record.commit.clone().unwrap_or_default(),
                        }
                    }
                    CandidateState::Passed => Step::Swap {
                        candidate: record.id,
                        expected: record.tip.clone().unwrap_or_default(),
                        new: record.commit.clone().unwrap_or_default(),
                    },
                    _ => return Ok(false),
                },
                None => match train.stored.plan.next_candidate() {
                    Some(planned) => {
                        self.store_train(batch_id, train);
                        Step::Build {
                            candidate: planned.id,
                            units: names(&planned.units),
                            refs: refs(&planned.units),
                        }
                    }
                    // Nothing left to land before them: re-run the units
                    // that conflicted with a candidate's earlier units.
                    // Nothing is left to land before the units that
                    // conflicted with a candidate's earlier units: those did
                    // not land, so they are offered again as they were.
                    None if !train.stored.rebase_after_landing.is_empty() => {
                        for (unit, _) in std::mem::take(&mut train.stored.rebase_after_landing) {
                            let commit = entry.batch.commit_of(unit).map(str::to_owned);
                            if entry.batch.units[unit].state == UnitState::Succeeded {
                                train.stored.plan.offer(unit, commit);
                            }
                        }
                        self.store_train(batch_id, train);
                        return Ok(true);
                    }
                    None => return Ok(false),
                },
            };
            (step, git.repo, git.target)
        };
        let mirror = self.mirrors.get(&self.config.git_dir, &repo).await?;
        match step {
            Step::Build {
                candidate,
                units,
                refs,
            } => {
                let span = tracing::info_span!("train.build", batch = %batch_id, candidate, units = units.len());
                tracing::Instrument::instrument(
                    self.build_candidate(batch_id, &mirror, &target, candidate, units, refs),
                    span,
                )
                .await?;
                Ok(true)
            }
            Step::Publish { candidate, commit } => {
                self.publish_integration(batch_id, candidate, &commit);
                Ok(false)
            }
            Step::Swap {
                candidate,
                expected,
                new,
            } => {
                let span = tracing::info_span!("train.swap", batch = %batch_id, candidate, target = %target, commit = %new);
                let mut swap = tracing::Instrument::instrument(
                    remote::compare_and_swap(&mirror, &target, &expected, &new),
                    span,
                )
                .await
                .map_err(|e| format!("cannot move {target} in {repo}: {e}"))?;
                // Landed by this train before a crash, and built on since:
                // it landed, and must not land twice.
                if let Swap::Raced {
                    actual: Some(actual),
                } = &swap
                {
                    if actual != &new && contains(&mirror, actual, &new).await {
                        swap = Swap::Moved;
                    }
                }
                self.settle_swap(batch_id, candidate, &new, swap);
                Ok(true)
            }
        }
    }

    /// Builds a planned candidate on the target's tip and pushes it where
    /// the workers fetch it from.
    async fn build_candidate(
        &self,
        batch_id: &str,
        mirror: &Mirror,
        target: &str,
        candidate: u64,
        units: Vec<(String, String)>,
        refs: Vec<String>,
    ) -> Result<(), String> {
        let repo = mirror.remote().to_owned();
        let mut wants = vec![format!("refs/heads/{target}")];
        wants.extend(refs);
        let wants: Vec<&str> = wants.iter().map(String::as_str).collect();
        mirror
            .fetch(&wants)
            .await
            .map_err(|e| format!("cannot fetch from {repo}: {e}"))?;
        let tip = remote::tip(mirror, target)
            .await
            .map_err(|e| format!("cannot read {target} in {repo}: {e}"))?
            .ok_or_else(|| format!("the target branch {target} is gone from {repo}"))?;
        mirror
            .fetch(&[tip.as_str()])
            .await
            .map_err(|e| format!("cannot fetch {target} from {repo}: {e}"))?;
        let built = candidate::build(
            mirror.git(),
            &tip,
            &units,
            |unit| format!("Merge regatta/{batch_id}/{unit}"),
            &train_identity(batch_id),
        )
        .await
        .map_err(|e| format!("cannot build candidate {candidate}: {e}"))?;
        match built {
            Ok(built) => {
                remote::push(mirror, &built.commit, &candidate_ref(batch_id, candidate))
                    .await
                    .map_err(|e| format!("cannot push candidate {candidate} to {repo}: {e}"))?;
                let mut fleet = self.fleet();
                let Some(train) = fleet.get_mut(batch_id).and_then(|e| e.extra.train.as_mut())
                else {
                    return Ok(());
                };
                train
                    .stored
                    .plan
                    .built(candidate, tip.clone(), built.commit);
                train.stored.tip = Some(tip);
                train.stored.waiting = None;
                self.store_train(batch_id, train);
            }
            Err(conflict) => {
                // Does it conflict with the tip itself, or only with the
                // units merged before it in this candidate?
                let with_tip = match units.iter().position(|(u, _)| *u == conflict.unit) {
                    Some(0) | None => true,
                    Some(i) => regatta_git::merge::merge_tree(mirror.git(), &tip, &units[i].1)
                        .await
                        .map(|merged| merged.is_err())
                        .unwrap_or(true),
                };
                let mut fleet = self.fleet();
                let Some(entry) = fleet.get_mut(batch_id) else {
                    return Ok(());
                };
                let Some(unit) = entry.batch.index_of(&conflict.unit) else {
                    return Ok(());
                };
                tracing::info!(batch = %batch_id, unit = %conflict.unit, files = ?conflict.files, with_tip, "a unit's branch does not merge");
                self.metrics
                    .train_candidates
                    .get_or_create(&CandidateLabels::of("conflicted"))
                    .inc();
                let effects = if with_tip {
                    entry.batch.rebase(unit, &tip, &conflict.files).1
                } else {
                    if let Some(train) = entry.extra.train.as_mut() {
                        train
                            .stored
                            .rebase_after_landing
                            .push((unit, conflict.files.clone()));
                    }
                    Effects::default()
                };
                if let Some(train) = entry.extra.train.as_mut() {
                    train
                        .stored
                        .plan
                        .conflicted(candidate, unit, conflict.files);
                    train.stored.tip = Some(tip);
                    self.store_train(batch_id, train);
                }
                self.dispatch_and_store(&mut fleet, batch_id, effects);
            }
        }
        Ok(())
    }

    /// Applies what the compare-and-swap found.
    fn settle_swap(&self, batch_id: &str, candidate: u64, new: &str, swap: Swap) {
        let mut fleet = self.fleet();
        let Some(entry) = fleet.get_mut(batch_id) else {
            return;
        };
        let Some(train) = entry.extra.train.as_mut() else {
            return;
        };
        match swap {
            Swap::Moved => {}
            // Moved by this very train before a crash: it landed.
            Swap::Raced { actual } if actual.as_deref() == Some(new) => {}
            Swap::Raced { actual } => {
                tracing::info!(batch = %batch_id, candidate, actual = ?actual, "the target moved meanwhile: the candidate is built again on its new tip");
                self.metrics
                    .train_candidates
                    .get_or_create(&CandidateLabels::of("raced"))
                    .inc();
                train.stored.plan.raced(candidate, actual.clone());
                train.stored.tip = actual;
                self.store_train(batch_id, train);
                return;
            }
        }
        let landing = train.stored.plan.landed(candidate);
        train.stored.tip = Some(new.to_owned());
        train.stored.lost_runs = 0;
        train
            .stored
            .rebase_after_landing
            .retain(|(unit, _)| !landing.units.contains(unit));
        let rebased = rebase_deferred(&mut entry.batch, train, new);
        self.store_train(batch_id, train);
        tracing::info!(batch = %batch_id, candidate, commit = %new, units = landing.units.len(), "candidate landed");
        self.metrics
            .train_candidates
            .get_or_create(&CandidateLabels::of("landed"))
            .inc();
        self.metrics.landed_units.inc_by(landing.units.len() as u64);
        let mut effects = rebased;
        for unit in landing.units {
            let landed = entry.batch.land(unit);
            effects.changed.extend(landed.changed);
        }
        if let Some(culprit) = landing.culprit {
            let reason = culprit_reason(train_failure(entry, candidate));
            effects
                .changed
                .extend(entry.batch.reject(culprit, reason).changed);
        }
        self.dispatch_and_store(&mut fleet, batch_id, effects);
    }

    /// Offers a git-mode unit that just succeeded to its train, and lands
    /// what that settles (units that changed nothing).
    pub(super) fn offer_to_train(
        &self,
        entry: &mut Member<Entry>,
        unit: usize,
        effects: &mut Effects,
    ) {
        if entry.batch.units[unit].state != UnitState::Succeeded {
            return;
        }
        let commit = entry.batch.commit_of(unit).map(str::to_owned);
        let Some(train) = entry.extra.train.as_mut() else {
            return;
        };
        let landed = train.stored.plan.offer(unit, commit);
        self.store_train(&entry.batch.id, train);
        for unit in landed {
            effects.changed.extend(entry.batch.land(unit).changed);
        }
        self.train_wake.notify_one();
    }

    /// A person skipped a git-mode unit: it counts as landed for the train.
    pub(super) fn skip_in_train(
        &self,
        entry: &mut Member<Entry>,
        unit: usize,
        effects: &mut Effects,
    ) {
        let Some(train) = entry.extra.train.as_mut() else {
            return;
        };
        let landed = train.stored.plan.skip(unit);
        self.store_train(&entry.batch.id, train);
        for unit in landed {
            effects.changed.extend(entry.batch.land(unit).changed);
        }
        self.train_wake.notify_one();
    }

    /// `regatta merge`: starts (or resumes) a manual train.
    pub async fn start_train(&self, batch_id: &str) -> Result<(), Error> {
        {
            let mut fleet = self.fleet();
            let entry = fleet
                .get_mut(batch_id)
                .ok_or_else(|| Error::NotFound(format!("batch '{batch_id}'")))?;
            let train = entry.extra.train.as_mut().ok_or_else(|| {
                Error::Conflict(format!(
                    "batch '{batch_id}' is not in git mode: its manifest has no git block"
                ))
            })?;
            train.stored.started = true;
            self.store_train(batch_id, train);
        }
        self.train_wake.notify_one();
        self.store.flushed().await?;
        Ok(())
    }
}

/// Says whether the target at `tip` already holds `commit`.
async fn contains(mirror: &Mirror, tip: &str, commit: &str) -> bool {
    if mirror.fetch(&[tip]).await.is_err() {
        return false;
    }
    regatta_git::merge::is_ancestor(mirror.git(), commit, tip)
        .await
        .unwrap_or(false)
}

/// Sends the units that waited for a landing back to run on `tip`.
fn rebase_deferred(batch: &mut Batch, train: &mut TrainEntry, tip: &str) -> Effects {
    let mut effects = Effects::default();
    for (unit, files) in std::mem::take(&mut train.stored.rebase_after_landing) {
        effects
            .changed
            .extend(batch.rebase(unit, tip, &files).1.changed);
    }
    effects
}

/// The failure that made a culprit: the failed candidate's reason.
fn train_failure(entry: &Member<Entry>, candidate: u64) -> Option<String> {
    let train = entry.extra.train.as_ref()?;
    train
        .stored
        .plan
        .history()
        .iter()
        .rev()
        .filter(|c| c.id <= candidate)
        .find_map(|c| match &c.state {
            CandidateState::Failed { reason } => Some(reason.clone()),
            _ => None,
        })
}

pub(super) fn culprit_reason(failure: Option<String>) -> String {
    match failure {
        Some(why) => format!("it breaks the integration tests: {why}"),
        None => "it breaks the integration tests".to_owned(),
    }
}
