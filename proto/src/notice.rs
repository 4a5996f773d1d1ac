//! Control notices: what the coordinator publishes on the fleet's control
//! channel (`Keys::control_channel`) so that workers act within a second
//! instead of at their next lease renewal (a third of the lease TTL).
//!
//! A notice only makes a worker renew the leases it concerns at once; the
//! renewal's answer (cancelled, lost, released) decides, as it always did.
//! A lost notice therefore costs time, never safety: the periodic renewal
//! stays the fallback.

/// One notice, as published on the control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The batch was cancelled: its sessions should stop now.
    Cancel { batch_id: String },
    /// The session's leases were taken from it (reaped, released): it
    /// must not go on.
    Revoke { session_id: String },
    /// The coordinator applied these sessions' results and released their
    /// leases: their workers need not release them too. Published once per
    /// window of events; a worker that misses it releases them itself.
    Released { session_ids: Vec<String> },
}

impl Notice {
    /// The text published: `cancel <batch>` or `revoke <session>`.
    pub fn encode(&self) -> String {
        match self {
            Notice::Cancel { batch_id } => format!("cancel {batch_id}"),
            Notice::Revoke { session_id } => format!("revoke {session_id}"),
            Notice::Released { session_ids } => format!("released {}", session_ids.join(" ")),
        }
    }

    /// Reads a published notice; `None` for anything else (a newer
    /// coordinator's notice kind is ignored, not an error).
    pub fn parse(text: &str) -> Option<Notice> {
        let (kind, id) = text.split_once(' ')?;
        if id.is_empty() {
            return None;
        }
        match kind {
            "cancel" => Some(Notice::Cancel {
                batch_id: id.to_owned(),
            }),
            "revoke" => Some(Notice::Revoke {
                session_id: id.to_owned(),
            }),
            "released" => Some(Notice::Released {
                session_ids: id
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }),
            _ => None,
        }
    }

    /// True when the notice concerns a running session of this batch, or
    /// this session: its heartbeat should renew at once. A release never
    /// does: it comes once the session's result is in.
    pub fn concerns(&self, batch_id: &str, session_id: &str) -> bool {
        match self {
            Notice::Cancel { batch_id: b } => b == batch_id,
            Notice::Revoke { session_id: s } => s == session_id,
            Notice::Released { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_reads_back_as_written_and_nothing_else_reads() {
        for notice in [
            Notice::Cancel {
                batch_id: "b-1".into(),
            },
            Notice::Revoke {
                session_id: "s1".into(),
            },
            Notice::Released {
                session_ids: vec!["s1".into(), "s2".into()],
            },
        ] {
            assert_eq!(Notice::parse(&notice.encode()), Some(notice));
        }
        for other in ["", "cancel", "cancel ", "pause b", "garbage"] {
            assert_eq!(Notice::parse(other), None, "{other:?}");
        }
        let cancel = Notice::Cancel {
            batch_id: "b".into(),
        };
        assert!(cancel.concerns("b", "s"));
        assert!(!cancel.concerns("c", "s"));
        let released = Notice::Released {
            session_ids: vec!["s".into()],
        };
        assert!(
            !released.concerns("b", "s"),
            "a heartbeat does not wake for it"
        );
    }
}
