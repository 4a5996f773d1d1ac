//! Session events: what a worker reports about a session it runs.
//!
//! Every event names its session and carries the fencing number of the
//! session's leases, so the coordinator can ignore a stale or duplicated
//! event (contract 4, docs/contracts.md).

use serde::{Deserialize, Serialize};

use crate::envelope::Message;

/// One report about one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub batch_id: String,
    pub unit_id: String,
    pub session_id: String,
    pub attempt: u32,
    /// Fencing number returned by the lease acquisition; 0 before any.
    pub fencing: u64,
    /// The worker's name (host and pid), for status and leases listings.
    pub worker: String,
    /// Milliseconds since the epoch, on the worker's clock: shown (when a
    /// session started and ended), never compared with the coordinator's.
    pub at_ms: i64,
    pub kind: EventKind,
}

impl Message for SessionEvent {
    const KIND: &'static str = "event";
}

/// What happened.
// One event per message, moved once: a boxed `Finished` would cost every
// constructor and pattern more than the bytes save.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// The leases are held and the session's command has been spawned.
    /// Sent only for a session that outlives the worker's `--started-after`
    /// threshold: a shorter one says all of it in `Finished`, whose
    /// `started_at_ms` then tells the coordinator it ran (docs/contracts.md,
    /// contract 4: a `Finished` with no `Started` before it is valid).
    Started {
        /// How long the worker waited for its leases, for the lease-wait metric.
        #[serde(default)]
        lease_wait_ms: u64,
    },
    /// The worker could not get the leases and handed the order back; it
    /// will be re-published by the coordinator.
    Deferred { reason: String },
    /// The session is over, one way or another.
    Finished {
        outcome: Outcome,
        exit_code: Option<i32>,
        duration_ms: u64,
        /// Why it failed, in words a reviewer can act on.
        reason: Option<String>,
        /// The last lines of the session's log.
        log_tail: String,
        /// Where the full log lives on the worker's disk.
        log_path: String,
        gates: Vec<GateReport>,
        /// The session's evidence pack in the worker's artifact store;
        /// `None` when none could be written (or from an older worker).
        #[serde(default)]
        evidence: Option<EvidenceRef>,
        /// Git mode: the worktree's commits and the unit's commit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        git: Option<Box<crate::git::GitReport>>,
        /// What the session used (tokens, turns, cost), also when it was
        /// killed; `None` from a session that reported nothing, or from an
        /// older worker.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<crate::agent::Usage>,
        /// When the session started, on the worker's clock (shown, never
        /// compared), so that a session that sent no `Started` still has
        /// its start on record; `None` from an older worker, which always
        /// sent `Started`, or for a session that never ran.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_at_ms: Option<i64>,
        /// How long the worker waited for the leases, for the lease-wait
        /// metric; `None` from an older worker or a session that never ran.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_wait_ms: Option<u64>,
    },
}

impl EventKind {
    /// The end of a session that never ran (a cancelled order, a lost
    /// worker's session): no log, no gates, no evidence, no usage.
    pub fn ended_without_running(outcome: Outcome, reason: String) -> EventKind {
        EventKind::Finished {
            outcome,
            exit_code: None,
            duration_ms: 0,
            reason: Some(reason),
            log_tail: String::new(),
            log_path: String::new(),
            gates: vec![],
            evidence: None,
            git: None,
            usage: None,
            started_at_ms: None,
            lease_wait_ms: None,
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Outcome {
    /// The command and every required gate passed.
    Succeeded,
    /// The command exited non-zero, a gate escalated, or an output is missing.
    Failed,
    /// The deadline passed and the session was killed.
    TimedOut,
    /// The worker lost its leases and killed the session.
    Lost,
    /// The worker shut down before the session ended; not the unit's fault.
    Interrupted,
    /// The batch was cancelled and the session was killed.
    Cancelled,
    /// The session crossed its budget (tokens, cost, turns or wall time)
    /// and was killed; retried only when the playbook says so.
    OverBudget,
}

impl Outcome {
    /// Every outcome, for code that must name them all (metric labels,
    /// tests that the names agree).
    pub const ALL: [Outcome; 7] = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::Lost,
        Outcome::Interrupted,
        Outcome::Cancelled,
        Outcome::OverBudget,
    ];

    /// The outcome as people read it, the one spelling of the API, the
    /// evidence pack, the CLI and the `/metrics` labels. (The wire format
    /// keeps serde's own names, so older peers still decode it.)
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Lost => "lost",
            Outcome::Interrupted => "interrupted",
            Outcome::Cancelled => "cancelled",
            Outcome::OverBudget => "over_budget",
        }
    }

    /// Says whether this outcome uses up one of the unit's retries (an
    /// `over_budget` one does when the playbook lets it be retried).
    pub fn counts_as_attempt(self) -> bool {
        matches!(
            self,
            Outcome::Failed | Outcome::TimedOut | Outcome::Lost | Outcome::OverBudget
        )
    }
}

/// Where a session's evidence pack was written, and its hash, so that a
/// batch pack can name it and an auditor can check it was not altered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvidenceRef {
    /// Absolute path of `evidence-pack.json` on the worker's disk:
    /// `<store>/<batch_id>/<unit_id>/<session_id>/evidence-pack.json`.
    pub path: String,
    /// Hex SHA-256 of the pack's bytes.
    pub sha256: String,
}

/// The result of one verification gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateReport {
    pub name: String,
    pub passed: bool,
    pub required: bool,
    /// How many times `fix` ran.
    pub repairs: u32,
    pub duration_ms: u64,
}

impl SessionEvent {
    /// A small event for tests and examples.
    pub fn example(kind: EventKind) -> Self {
        SessionEvent {
            batch_id: "b-1".into(),
            unit_id: "customer-pkg".into(),
            session_id: "s-1".into(),
            attempt: 1,
            fencing: 7,
            worker: "host-1:42".into(),
            at_ms: 1_764_064_800_000,
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{open, seal, Signer};

    /// `Finished` as a worker wrote it before it carried its start.
    #[derive(Serialize, Deserialize)]
    enum OlderKind {
        Finished {
            outcome: Outcome,
            exit_code: Option<i32>,
            duration_ms: u64,
            reason: Option<String>,
            log_tail: String,
            log_path: String,
            gates: Vec<GateReport>,
            evidence: Option<EvidenceRef>,
        },
    }

    #[derive(Serialize, Deserialize)]
    struct OlderEvent {
        batch_id: String,
        unit_id: String,
        session_id: String,
        attempt: u32,
        fencing: u64,
        worker: String,
        at_ms: i64,
        kind: OlderKind,
    }

    impl Message for OlderEvent {
        const KIND: &'static str = "event";
    }

    #[test]
    fn an_older_workers_finished_still_opens_without_a_start() {
        let signer = Signer::new(b"secret");
        let older = OlderEvent {
            batch_id: "b-1".into(),
            unit_id: "u".into(),
            session_id: "s-1".into(),
            attempt: 1,
            fencing: 7,
            worker: "w".into(),
            at_ms: 5,
            kind: OlderKind::Finished {
                outcome: Outcome::Succeeded,
                exit_code: Some(0),
                duration_ms: 3,
                reason: None,
                log_tail: String::new(),
                log_path: String::new(),
                gates: vec![],
                evidence: None,
            },
        };
        let event: SessionEvent = open(&seal(&older, &signer), &signer).expect("opens");
        match event.kind {
            EventKind::Finished {
                outcome,
                started_at_ms,
                lease_wait_ms,
                ..
            } => {
                assert_eq!(outcome, Outcome::Succeeded);
                assert_eq!((started_at_ms, lease_wait_ms), (None, None));
            }
            other => panic!("expected finished, got {other:?}"),
        }
    }

    #[test]
    fn a_finished_with_its_start_round_trips() {
        let signer = Signer::new(b"secret");
        let event = SessionEvent::example(EventKind::Finished {
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            duration_ms: 3,
            reason: None,
            log_tail: String::new(),
            log_path: String::new(),
            gates: vec![],
            evidence: None,
            git: None,
            usage: None,
            started_at_ms: Some(1_764_064_799_990),
            lease_wait_ms: Some(4),
        });
        let back: SessionEvent = open(&seal(&event, &signer), &signer).expect("opens");
        assert_eq!(back, event);
    }
}
