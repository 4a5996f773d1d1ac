//! The records the scheduler keeps and stores: unit and batch states, each
//! unit's record and its attempts (stored in Redis as JSON).

use regatta_proto::Outcome;
use serde::{Deserialize, Serialize};

/// Where a unit is in its lifecycle.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    Pending,
    Ready,
    Queued,
    Running,
    Succeeded,
    /// Git mode: the unit's commit is on the target branch, tested.
    Landed,
    NeedsReview,
    Blocked,
    Cancelled,
    Skipped,
}

impl UnitState {
    pub const ALL: [UnitState; 10] = [
        UnitState::Pending,
        UnitState::Ready,
        UnitState::Queued,
        UnitState::Running,
        UnitState::Succeeded,
        UnitState::Landed,
        UnitState::NeedsReview,
        UnitState::Blocked,
        UnitState::Cancelled,
        UnitState::Skipped,
    ];

    /// Says whether the unit's work is done well: succeeded, landed or
    /// skipped. (In git mode only a landed unit releases its dependents:
    /// [`super::Batch::satisfies`].)
    pub fn satisfies_dependents(self) -> bool {
        matches!(
            self,
            UnitState::Succeeded | UnitState::Landed | UnitState::Skipped
        )
    }

    /// Says whether nothing more will happen to the unit without a human.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            UnitState::Succeeded
                | UnitState::Landed
                | UnitState::NeedsReview
                | UnitState::Blocked
                | UnitState::Cancelled
                | UnitState::Skipped
        )
    }

    /// Says whether a session of the unit is published or running.
    pub fn is_in_flight(self) -> bool {
        matches!(self, UnitState::Queued | UnitState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Pending => "pending",
            UnitState::Ready => "ready",
            UnitState::Queued => "queued",
            UnitState::Running => "running",
            UnitState::Succeeded => "succeeded",
            UnitState::Landed => "landed",
            UnitState::NeedsReview => "needs_review",
            UnitState::Blocked => "blocked",
            UnitState::Cancelled => "cancelled",
            UnitState::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<UnitState> {
        UnitState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl BatchState {
    pub const ALL: [BatchState; 7] = [
        BatchState::Calibrating,
        BatchState::AwaitingApproval,
        BatchState::Running,
        BatchState::Paused,
        BatchState::Succeeded,
        BatchState::Failed,
        BatchState::Cancelled,
    ];

    pub fn parse(text: &str) -> Option<BatchState> {
        BatchState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Where a batch is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Only the first `calibration` units run; then a human (or the auto
    /// ratio) approves the rest.
    Calibrating,
    /// The calibration units are done; nothing new starts until approved.
    AwaitingApproval,
    Running,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Calibrating => "calibrating",
            BatchState::AwaitingApproval => "awaiting_approval",
            BatchState::Running => "running",
            BatchState::Paused => "paused",
            BatchState::Succeeded => "succeeded",
            BatchState::Failed => "failed",
            BatchState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchState::Succeeded | BatchState::Failed | BatchState::Cancelled
        )
    }
}

/// One attempt of a unit, as its history shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    pub attempt: u32,
    pub session_id: String,
    pub worker: Option<String>,
    pub fencing: u64,
    pub published_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub log_tail: String,
    pub log_path: String,
    pub gates: Vec<regatta_proto::GateReport>,
    /// The session's evidence pack in the worker's artifact store.
    #[serde(default)]
    pub evidence: Option<regatta_proto::EvidenceRef>,
    /// The attempt's trace, when spans are exported: absent from records
    /// stored before traces were recorded.
    #[serde(default)]
    pub trace: Option<AttemptTrace>,
    /// Git mode: the worktree's commits and the unit's commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<regatta_proto::GitReport>,
    /// An agent session's usage (tokens, turns, cost) as its worker
    /// reported it, also when it was killed over its budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<regatta_proto::Usage>,
    /// What the attempt reserved against the batch budget at dispatch, in
    /// micro-dollars; `None` for a batch without one (contract 9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_micros: Option<u64>,
}

/// Where an attempt's trace is: one trace per attempt, rooted at its
/// `publish` span, so a person can go from a session to its spans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptTrace {
    /// 32 hex digits, as tracing UIs search it.
    pub trace_id: String,
    /// The root `publish` span (16 hex digits): what a retry links to, and
    /// what a re-published order or a reaped session's result joins.
    pub span_id: String,
}

/// The runtime record of one unit; stored in Redis as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    pub id: String,
    pub state: UnitState,
    /// How many attempts failed in a way that uses up a retry.
    pub failures: u32,
    /// The number of the latest attempt (0 before the first).
    pub attempt: u32,
    /// Why the unit is where it is (a failure, what blocks it, what it waits for).
    pub reason: Option<String>,
    pub history: Vec<Attempt>,
    /// Git mode: the target's tip the next attempt rebuilds on, when the
    /// unit's branch no longer merged there (docs/git-mode.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebase_on: Option<String>,
    /// Git mode: how many times the unit was re-run on a new tip.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rebases: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Attempt {
    /// A new attempt, published at `at_ms` as session `session_id`.
    pub fn published(attempt: u32, session_id: String, at_ms: i64) -> Attempt {
        Attempt {
            attempt,
            session_id,
            worker: None,
            fencing: 0,
            published_at_ms: at_ms,
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
            usage: None,
            reserved_micros: None,
        }
    }

    /// Records how the session ended, with the outcome and reason the
    /// coordinator settled on (which may differ from the worker's).
    pub fn conclude(
        &mut self,
        finish: super::Finish,
        outcome: regatta_proto::Outcome,
        reason: Option<String>,
    ) {
        // A short session sent no `Started`: its end says when and where
        // it ran. A `Started` already applied is kept as it was.
        if self.started_at_ms.is_none() {
            self.started_at_ms = finish.started_at_ms;
        }
        if self.worker.is_none() {
            self.worker = finish.worker;
        }
        self.ended_at_ms = Some(finish.at_ms);
        self.outcome = Some(outcome);
        self.exit_code = finish.exit_code;
        self.reason = reason;
        self.log_tail = finish.log_tail;
        self.log_path = finish.log_path;
        self.gates = finish.gates;
        self.evidence = finish.evidence;
        self.git = finish.git.map(|g| *g);
        self.usage = finish.usage;
        if finish.fencing > 0 {
            self.fencing = finish.fencing;
        }
    }
}

impl UnitRecord {
    /// The attempt now in flight or last finished.
    pub fn current(&self) -> Option<&Attempt> {
        self.history.last()
    }

    pub(super) fn current_mut(&mut self) -> Option<&mut Attempt> {
        self.history.last_mut()
    }

    /// The attempt before the current one, which a retry follows from.
    pub fn previous(&self) -> Option<&Attempt> {
        self.history.iter().rev().nth(1)
    }

    /// Records where the current attempt's trace is, once it is published.
    pub fn set_trace(&mut self, trace: AttemptTrace) {
        if let Some(attempt) = self.current_mut() {
            attempt.trace = Some(trace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_stored_before_traces_were_recorded_still_loads() {
        let stored = r#"{"attempt":1,"session_id":"s-1","worker":null,"fencing":0,
            "published_at_ms":0,"started_at_ms":null,"ended_at_ms":null,"outcome":null,
            "exit_code":null,"reason":null,"log_tail":"","log_path":"","gates":[]}"#;
        let attempt: Attempt = serde_json::from_str(stored).expect("an old record loads");
        assert_eq!(attempt.trace, None);
        assert_eq!(attempt.session_id, "s-1");
    }

    #[test]
    fn a_retry_follows_the_attempt_before_it() {
        let attempt = |n: u32| {
            let mut attempt: Attempt = serde_json::from_str(&format!(
                r#"{{"attempt":{n},"session_id":"s-{n}","worker":null,"fencing":0,
                "published_at_ms":0,"started_at_ms":null,"ended_at_ms":null,"outcome":null,
                "exit_code":null,"reason":null,"log_tail":"","log_path":"","gates":[]}}"#
            ))
            .expect("valid");
            attempt.trace = Some(AttemptTrace {
                trace_id: format!("{n:032x}"),
                span_id: format!("{n:016x}"),
            });
            attempt
        };
        let mut record = UnitRecord {
            id: "u".into(),
            state: UnitState::Queued,
            failures: 1,
            attempt: 2,
            reason: None,
            history: vec![attempt(1), attempt(2)],
            rebase_on: None,
            rebases: 0,
        };
        assert_eq!(record.previous().map(|a| a.attempt), Some(1));
        let trace = AttemptTrace {
            trace_id: "f".repeat(32),
            span_id: "e".repeat(16),
        };
        record.set_trace(trace.clone());
        assert_eq!(record.history[1].trace, Some(trace));
        assert_eq!(record.history[0].trace, attempt(1).trace);
    }
}
