//! The merge train's integration sessions (docs/git-mode.md): a built
//! candidate is tested by a session on a worker, published like a unit's
//! order; its result passes, fails (and bisects) or re-tests the candidate.
//! The sessions are the attempts of a pseudo-unit whose record sits beside
//! the units', so that claims and reaping treat them alike.

use regatta_git::train::Verdict;
use regatta_proto::git::{candidate_ref, GitSession};
use regatta_proto::{GitOrder, LeaseDemand, WorkOrder, INTEGRATION_UNIT};

use super::train::culprit_reason;
use super::*;
use crate::metrics::CandidateLabels;
use crate::scheduler::{Attempt, UnitRecord};

/// How many lost integration sessions in a row fail a candidate.
const MAX_LOST_RUNS: u32 = 3;

impl Service {
    /// Starts an integration session on a built candidate.
    pub(super) fn publish_integration(&self, batch_id: &str, candidate: u64, commit: &str) {
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
        record
            .history
            .push(Attempt::published(record.attempt, new_session_id(), now));
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
                reason,
                log_tail,
                ..
            } => {
                if event.fencing > 0 {
                    self.store.write(Write::Release {
                        session_id: event.session_id.clone(),
                        fence: event.fencing,
                        actual_micros: None,
                    });
                }
                if let (Some(attempt), Report::Finished(finish)) = (
                    record.history.last_mut(),
                    Report::from_event(event, now_ms()),
                ) {
                    attempt.conclude(finish, *outcome, reason.clone());
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
pub(super) fn integration_order(
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
        // The train's integration is the fleet's check, never metered.
        agent: None,
        batch_budget: None,
    }
}
