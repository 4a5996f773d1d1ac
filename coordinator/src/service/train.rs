//! The merge train's I/O (docs/git-mode.md): the plan is pure
//! ([`regatta_git::train`]); here candidates are built in the coordinator's
//! mirror without a worktree, tested by an integration session on a worker,
//! and landed with a compare-and-swap on the remote.
//!
//! Every step is stored before the next one starts, and the remote is the
//! judge of what landed: a coordinator killed between a passing test and
//! the swap finds the target at the candidate (it landed) or at its tip
//! (swap again) or elsewhere (raced: rebuild), and never lands a unit twice.

use std::collections::HashMap;
use std::sync::Arc;

use regatta_git::candidate;
use regatta_git::mirror::Mirror;
use regatta_git::remote::{self, Swap};
use regatta_git::repo::Identity;
use regatta_git::train::{CandidateState, Train, Verdict};
use regatta_proto::git::{candidate_ref, session_ref, GitSession};
use regatta_proto::{GitOrder, LeaseDemand, WorkOrder, INTEGRATION_UNIT};
use serde::{Deserialize, Serialize};

use super::*;
use crate::metrics::CandidateLabels;
use crate::scheduler::{Attempt, UnitRecord};

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

/// How many lost integration sessions in a row fail a candidate.
const MAX_LOST_RUNS: u32 = 3;

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

/// The coordinator's mirrors, one per remote.
#[derive(Default, Clone)]
pub(super) struct Mirrors {
    open: Arc<tokio::sync::Mutex<HashMap<String, Arc<Mirror>>>>,
}

impl Mirrors {
    pub(super) async fn get(
        &self,
        root: &std::path::Path,
        repo: &str,
    ) -> Result<Arc<Mirror>, String> {
        let mut open = self.open.lock().await;
        if let Some(mirror) = open.get(repo) {
            return Ok(mirror.clone());
        }
        let name = regatta_proto::evidence::digest::sha256_hex(repo.as_bytes());
        let mirror = Mirror::open(&root.join(&name[..16]), repo)
            .await
            .map_err(|e| format!("cannot open a mirror of {repo}: {e}"))?;
        let mirror = Arc::new(mirror);
        open.insert(repo.to_owned(), mirror.clone());
        Ok(mirror)
    }
}

/// Who the train's merge commits are by.
fn train_identity(batch_id: &str) -> Identity {
    Identity {
        name: "regatta merge train".into(),
        email: format!("{batch_id}@regatta.invalid"),
    }
}

impl Service {
    /// Pins the manifest's `git.base` to a commit and checks that the
    /// target exists, before a git-mode batch is accepted.
    pub(super) async fn pin_base(&self, manifest: &Manifest) -> Result<Option<String>, Error> {
        let Some(git) = &manifest.git else {
            return Ok(None);
        };
        let mirror = self
            .mirrors
            .get(&self.config.git_dir, &git.repo)
            .await
            .map_err(Error::Invalid)?;
        let base = remote::pin(&mirror, &git.base).await.map_err(|e| {
            Error::Invalid(format!(
                "git.base '{}' cannot be pinned in {}: {e}",
                git.base, git.repo
            ))
        })?;
        let tip = remote::tip(&mirror, &git.target)
            .await
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", git.repo)))?;
        if tip.is_none() {
            return Err(Error::Invalid(format!(
                "git.target: branch '{}' does not exist in {}; create it (for example at {base})",
                git.target, git.repo
            )));
        }
        Ok(Some(base))
    }

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

    fn store_train(&self, batch_id: &str, train: &TrainEntry) {
        if let Ok(json) = serde_json::to_string(&train.stored) {
            self.store.write(Write::Hash {
                key: self.config.keys.batch(batch_id),
                fields: vec![("train".into(), json)],
            });
        }
    }

    fn store_integration(&self, batch_id: &str, train: &TrainEntry) {
        if let Ok(json) = serde_json::to_string(&train.integration) {
            self.store.write(Write::Hash {
                key: self.config.keys.units(batch_id),
                fields: vec![(INTEGRATION_UNIT.to_owned(), json)],
            });
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

    /// Starts an integration session on a built candidate.
    fn publish_integration(&self, batch_id: &str, candidate: u64, commit: &str) {
        let mut fleet = self.fleet();
        let Some(entry) = fleet.get_mut(batch_id) else {
            return;
        };
        let Some(train) = entry.extra.train.as_mut() else {
            return;
        };
        let now = now_ms();
        let record = &mut train.integration;
        record.attempt += 1;
        record.state = UnitState::Queued;
        record.reason = None;
        record.history.push(Attempt {
            attempt: record.attempt,
            session_id: new_session_id(),
            worker: None,
            fencing: 0,
            published_at_ms: now,
            started_at_ms: None,
            ended_at_ms: None,
            outcome: None,
            exit_code: None,
            reason: None,
            log_tail: String::new(),
            log_path: String::new(),
            gates: Vec::new(),
            evidence: None,
            trace: None,
            git: None,
        });
        let order = integration_order(&entry.batch, record, candidate, commit, now);
        train
            .stored
            .plan
            .testing(candidate, order.session_id.clone());
        let previous = record.previous().and_then(|a| a.trace.as_ref());
        let outgoing = Outgoing::new(&order, &self.config.signer, Origin::Attempt { previous });
        if let Some(trace) = outgoing.trace() {
            record.set_trace(trace);
        }
        tracing::info!(batch = %batch_id, candidate, session = %order.session_id, "testing a merge candidate");
        self.store_integration(batch_id, train);
        self.store_train(batch_id, train);
        // Published once its record is stored, like a unit's order.
        let publisher = self.publisher.clone();
        self.store.write(Write::Then(Box::new(move || {
            let _ = publisher.send(outgoing);
        })));
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

    /// Applies an integration session's event: its start, its hand-back or
    /// its result, which passes, fails or re-tests the candidate.
    pub(super) fn apply_integration_event(&self, fleet: &mut Fleet<Entry>, event: &SessionEvent) {
        let Some(entry) = fleet.get_mut(&event.batch_id) else {
            return;
        };
        let Some(train) = entry.extra.train.as_mut() else {
            return;
        };
        let record = &mut train.integration;
        let current = record.current().map(|a| a.session_id.as_str());
        if current != Some(event.session_id.as_str()) || !record.state.is_in_flight() {
            return;
        }
        let Some((candidate, bisecting)) = train
            .stored
            .plan
            .in_flight()
            .filter(|c| c.integration_session.as_deref() == Some(&event.session_id))
            .map(|c| (c.id, c.bisecting))
        else {
            return;
        };
        let tested = |result: &str| {
            self.metrics
                .train_candidates
                .get_or_create(&CandidateLabels::of(result))
                .inc();
            if bisecting {
                self.metrics.bisection_steps.inc();
            }
        };
        let mut effects = Effects::default();
        match &event.kind {
            EventKind::Started { .. } => {
                record.state = UnitState::Running;
                if let Some(attempt) = record.history.last_mut() {
                    attempt.worker = Some(event.worker.clone());
                    attempt.fencing = event.fencing;
                    attempt.started_at_ms = Some(event.at_ms);
                }
            }
            // Only a claim that never started can be handed back.
            EventKind::Deferred { .. }
                if record.state != UnitState::Queued
                    || record.current().is_some_and(|a| a.started_at_ms.is_some()) =>
            {
                return;
            }
            EventKind::Deferred { reason } => {
                record.history.pop();
                record.attempt = record.attempt.saturating_sub(1);
                record.state = UnitState::Ready;
                record.reason = Some(reason.clone());
            }
            EventKind::Finished {
                outcome,
                exit_code,
                reason,
                log_tail,
                log_path,
                gates,
                evidence,
                git,
                ..
            } => {
                if event.fencing > 0 {
                    self.store.write(Write::Release {
                        session_id: event.session_id.clone(),
                        fence: event.fencing,
                    });
                }
                if let Some(attempt) = record.history.last_mut() {
                    attempt.ended_at_ms = Some(event.at_ms);
                    attempt.outcome = Some(*outcome);
                    attempt.exit_code = *exit_code;
                    attempt.reason = reason.clone();
                    attempt.log_tail = log_tail.clone();
                    attempt.log_path = log_path.clone();
                    attempt.gates = gates.clone();
                    attempt.evidence = evidence.clone();
                    attempt.git = git.as_deref().cloned();
                }
                match outcome {
                    Outcome::Succeeded => {
                        record.state = UnitState::Pending;
                        train.stored.lost_runs = 0;
                        train
                            .stored
                            .plan
                            .passed(candidate, event.session_id.clone());
                        tracing::info!(batch = %event.batch_id, candidate, "integration passed");
                        tested("passed");
                        self.train_wake.notify_one();
                    }
                    Outcome::Failed | Outcome::TimedOut => {
                        record.state = UnitState::Pending;
                        train.stored.lost_runs = 0;
                        let why = integration_failure(reason.as_deref(), log_tail);
                        let verdict = train.stored.plan.failed(
                            candidate,
                            event.session_id.clone(),
                            why.clone(),
                        );
                        tracing::info!(batch = %event.batch_id, candidate, verdict = ?verdict, "integration failed");
                        tested("failed");
                        if let Verdict::Culprit(unit) = verdict {
                            effects = entry.batch.reject(unit, culprit_reason(Some(why)));
                        }
                        self.train_wake.notify_one();
                    }
                    // Not the candidate's fault: test it again elsewhere,
                    // up to a point (a candidate whose tests kill workers).
                    _ => {
                        train.stored.lost_runs += 1;
                        if train.stored.lost_runs >= MAX_LOST_RUNS {
                            record.state = UnitState::Pending;
                            let why = format!(
                                "its integration session was lost {} times in a row, the last: {}",
                                train.stored.lost_runs,
                                reason.as_deref().unwrap_or("lost")
                            );
                            train.stored.lost_runs = 0;
                            let verdict = train.stored.plan.failed(
                                candidate,
                                event.session_id.clone(),
                                why.clone(),
                            );
                            if let Verdict::Culprit(unit) = verdict {
                                effects = entry.batch.reject(unit, culprit_reason(Some(why)));
                            }
                        } else {
                            record.state = UnitState::Ready;
                            record.reason = reason.clone();
                        }
                        self.train_wake.notify_one();
                    }
                }
            }
        }
        self.store_integration(&event.batch_id, train);
        self.store_train(&event.batch_id, train);
        let batch_id = event.batch_id.clone();
        self.dispatch_and_store(fleet, &batch_id, effects);
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

fn culprit_reason(failure: Option<String>) -> String {
    match failure {
        Some(why) => format!("it breaks the integration tests: {why}"),
        None => "it breaks the integration tests".to_owned(),
    }
}

/// Why an integration run failed, with the tail of its log.
fn integration_failure(reason: Option<&str>, log_tail: &str) -> String {
    let reason = reason.unwrap_or("the integration command failed");
    let tail: Vec<&str> = log_tail.lines().rev().take(10).collect();
    if tail.is_empty() {
        reason.to_owned()
    } else {
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{reason}; log tail:\n{}", tail.join("\n"))
    }
}

/// The order of an integration session on a candidate.
fn integration_order(
    batch: &Batch,
    record: &UnitRecord,
    candidate: u64,
    commit: &str,
    now_ms: i64,
) -> WorkOrder {
    let manifest = &batch.manifest;
    let git = manifest.git.as_ref();
    WorkOrder {
        batch_id: batch.id.clone(),
        unit_id: INTEGRATION_UNIT.to_owned(),
        attempt: record.attempt,
        session_id: record
            .current()
            .map(|a| a.session_id.clone())
            .unwrap_or_default(),
        playbook: manifest.playbook.name.clone(),
        task: format!("integration test of merge candidate {candidate}"),
        run: git.map(|g| g.integration.clone()).unwrap_or_default(),
        workdir: String::new(),
        env: manifest.playbook.env.clone(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        timeout_ms: git
            .map(|g| g.integration_timeout.as_millis() as u64)
            .unwrap_or(30 * 60 * 1000),
        gates: Vec::new(),
        // One slot over the batch's cap: the train never waits behind the
        // batch's own units.
        leases: LeaseDemand {
            concurrency: manifest.concurrency.saturating_add(1),
            resources: Vec::new(),
        },
        published_at_ms: now_ms,
        git: git.map(|g| GitOrder {
            repo: g.repo.clone(),
            session: GitSession::Integration { candidate },
            base: commit.to_owned(),
            fetch: vec![candidate_ref(&batch.id, candidate)],
            dependencies: Vec::new(),
            branch: None,
            writes: None,
        }),
    }
}
