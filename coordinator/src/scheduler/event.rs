//! A worker's session event, reduced to the [`Report`] the state machine
//! applies. Times that the scheduler compares with its own clock are taken
//! from the coordinator's clock when the event arrives, never from the
//! worker's: a worker whose clock runs an hour ahead must not hold a unit
//! back an hour.

use regatta_proto::{EventKind, SessionEvent};

use super::{Finish, Report};

impl Report {
    /// The report of `event`, received at `received_at_ms` by the
    /// coordinator's clock. The worker's own times are kept only where they
    /// are shown (when a session started and ended), never compared.
    pub fn from_event(event: &SessionEvent, received_at_ms: i64) -> Report {
        match &event.kind {
            EventKind::Started { .. } => Report::Started {
                worker: event.worker.clone(),
                fencing: event.fencing,
                at_ms: event.at_ms,
            },
            EventKind::Deferred { reason } => Report::Deferred {
                reason: reason.clone(),
                received_at_ms,
            },
            EventKind::Finished {
                outcome,
                exit_code,
                reason,
                log_tail,
                log_path,
                gates,
                evidence,
                git,
                usage,
                started_at_ms,
                ..
            } => Report::Finished(Finish {
                outcome: *outcome,
                exit_code: *exit_code,
                reason: reason.clone(),
                at_ms: event.at_ms,
                log_tail: log_tail.clone(),
                log_path: log_path.clone(),
                gates: gates.clone(),
                fencing: event.fencing,
                evidence: evidence.clone(),
                git: git.clone(),
                usage: usage.clone(),
                worker: (!event.worker.is_empty()).then(|| event.worker.clone()),
                started_at_ms: *started_at_ms,
            }),
        }
    }
}
