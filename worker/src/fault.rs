//! What a session becomes when the worker, not the unit, is at fault: a
//! session folder that cannot be created, a log that cannot be written, a
//! session leader that cannot start, evidence that cannot be stored.
//!
//! Such a session is reported `interrupted` (the outcome that spends no
//! retry, as for a worker stopped by SIGTERM; the wire format stays as it
//! is, so coordinators of either version understand it) with a reason that
//! starts with [`WORKER_FAULT`], and the worker stops taking work until its
//! disks pass a probe ([`Health`]).

use regatta_proto::{EvidenceRef, Outcome};

use crate::evidence::EvidenceError;
use crate::health::{Health, WORKER_FAULT};

/// Records a worker-side fault and returns the session's outcome and reason.
pub fn worker_fault(health: &Health, what: &str) -> (Outcome, String) {
    let reason =
        format!("{WORKER_FAULT}: {what}; the unit is handed back without spending a retry");
    health.record_fault(&reason);
    (Outcome::Interrupted, reason)
}

/// The session's final outcome, reason and evidence once the worker tried
/// to store its evidence: a session whose evidence could not be stored
/// never succeeds.
pub fn after_evidence(
    health: &Health,
    outcome: Outcome,
    reason: Option<String>,
    stored: Result<EvidenceRef, EvidenceError>,
) -> (Outcome, Option<String>, Option<EvidenceRef>) {
    let error = match stored {
        Ok(evidence) => {
            if outcome != Outcome::Interrupted {
                health.record_success();
            }
            return (outcome, reason, Some(evidence));
        }
        Err(error) => error,
    };
    let what = format!("cannot store the session's evidence: {error}");
    match outcome {
        // Already not counted, or already re-running elsewhere: the outcome
        // stands; the fault still takes the worker out.
        Outcome::Interrupted | Outcome::Cancelled | Outcome::Lost => {
            if error.is_worker_fault() {
                health.record_fault(&format!("{WORKER_FAULT}: {what}"));
            }
            (outcome, reason, None)
        }
        Outcome::Succeeded | Outcome::Failed | Outcome::TimedOut | Outcome::OverBudget
            if error.is_worker_fault() =>
        {
            let (outcome, fault) = worker_fault(health, &what);
            let reason = match reason {
                Some(first) => format!("{fault} (the session itself: {first})"),
                None => fault,
            };
            (outcome, Some(reason), None)
        }
        // A file of the session could not be read: its own failure.
        Outcome::Succeeded => (Outcome::Failed, Some(what), None),
        Outcome::Failed | Outcome::TimedOut | Outcome::OverBudget => (outcome, reason, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::ArtifactError;

    fn full_disk() -> EvidenceError {
        EvidenceError::Artifact(ArtifactError::Io {
            path: "/store/b/u/s/outputs/big.bin".into(),
            source: std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
        })
    }

    #[test]
    fn a_succeeded_session_without_evidence_is_handed_back_uncounted() {
        let health = Health::new(Vec::new());
        let (outcome, reason, evidence) =
            after_evidence(&health, Outcome::Succeeded, None, Err(full_disk()));
        assert_eq!(outcome, Outcome::Interrupted);
        assert!(!outcome.counts_as_attempt());
        assert!(evidence.is_none());
        let reason = reason.unwrap();
        assert!(
            reason.starts_with("worker fault: cannot store the session's evidence"),
            "{reason}"
        );
        assert!(reason.contains("big.bin"), "{reason}");
        assert!(!health.is_healthy());
    }

    #[test]
    fn an_unreadable_output_fails_the_session_itself() {
        let health = Health::new(Vec::new());
        let unreadable = EvidenceError::Artifact(ArtifactError::Source {
            path: "/work/out.sql".into(),
            source: std::io::Error::from_raw_os_error(nix::libc::EIO),
        });
        let (outcome, reason, _) =
            after_evidence(&health, Outcome::Succeeded, None, Err(unreadable));
        assert_eq!(outcome, Outcome::Failed);
        assert!(reason.unwrap().contains("/work/out.sql"));
        assert!(health.is_healthy());
    }
}
