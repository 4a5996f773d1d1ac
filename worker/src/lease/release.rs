//! The release of a finished session's leases, left to the coordinator
//! when it does it in time.
//!
//! The coordinator releases a session's leases in the same Redis write that
//! applies its result, and says so on the control channel (a `released`
//! notice per window of events). The worker's own release matters only when
//! the coordinator is down or far behind: a lease left to expire would be
//! reaped, and a unit whose result waits in the events queue re-run as
//! `lost` (contract 3, docs/contracts.md). So the worker keeps each
//! finished session's leases as pending until the renewal they would next
//! need (a third of a TTL after they were last extended), and releases
//! only those the coordinator has not released by then. A missed notice
//! costs one release, never safety; on shutdown every pending lease is
//! released at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use regatta_telemetry::tasks::Tasks;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::LeaseClient;
use crate::control::{Listener, Notices};

/// Hands finished sessions' leases to the worker's releaser task.
#[derive(Clone)]
pub struct Releases {
    sender: mpsc::UnboundedSender<Pending>,
}

/// A finished session whose leases may still be held.
#[derive(Debug)]
struct Pending {
    session_id: String,
    fence: u64,
    /// The session's cost, for the batch budget; `None`: unknown.
    actual_micros: Option<u64>,
    /// When the worker releases them, unless the coordinator did first.
    due: Instant,
}

impl Releases {
    /// Starts the releaser in `tasks`; at `stop` it releases whatever is
    /// still pending, then ends.
    pub fn start(
        leases: LeaseClient,
        notices: &Notices,
        ttl: Duration,
        stop: &CancellationToken,
        tasks: &mut Tasks,
    ) -> Releases {
        let (sender, receiver) = mpsc::unbounded_channel();
        let releaser = Releaser {
            leases,
            ttl,
            pending: HashMap::new(),
            heard: HashMap::new(),
        };
        tasks.spawn(
            "lease releaser",
            releaser.run(receiver, notices.listen(), stop.clone()),
        );
        Releases { sender }
    }

    /// Takes the leases of a session whose result the broker holds: they
    /// are released by the coordinator, or by the worker if it has not by
    /// the time they would need renewing.
    /// `actual_micros` is the session's cost, which settles its batch
    /// budget reservation if the worker releases (contract 9).
    pub fn after_result(
        &self,
        leases: &LeaseClient,
        session_id: &str,
        fence: u64,
        actual_micros: Option<u64>,
    ) {
        let due = leases.fresh_since(session_id).unwrap_or_else(Instant::now);
        let pending = Pending {
            session_id: session_id.to_owned(),
            fence,
            actual_micros,
            due,
        };
        if let Err(mpsc::error::SendError(pending)) = self.sender.send(pending) {
            // The releaser has ended (shutdown): release now, in the background.
            let leases = leases.clone();
            tokio::spawn(async move {
                let _ = leases
                    .release(&pending.session_id, pending.fence, pending.actual_micros)
                    .await;
            });
        }
    }
}

struct Releaser {
    leases: LeaseClient,
    ttl: Duration,
    /// Sessions to release at their due time, by id: fence, cost, due.
    pending: HashMap<String, (u64, Option<u64>, Instant)>,
    /// This worker's sessions the coordinator said it released, and when:
    /// its notice often comes before the worker's own publish confirm.
    heard: HashMap<String, Instant>,
}

impl Releaser {
    async fn run(
        mut self,
        mut receiver: mpsc::UnboundedReceiver<Pending>,
        mut listener: Listener,
        stop: CancellationToken,
    ) {
        loop {
            let next_due = self.pending.values().map(|(_, _, due)| *due).min();
            tokio::select! {
                _ = stop.cancelled() => break,
                pending = receiver.recv() => match pending {
                    Some(pending) => self.take(pending),
                    None => break,
                },
                released = listener.released() => self.released(released),
                _ = sleep_until(next_due) => self.release_due(Instant::now()).await,
            }
        }
        receiver.close();
        while let Ok(pending) = receiver.try_recv() {
            self.take(pending);
        }
        self.heard.clear();
        self.release_due(far_future()).await;
    }

    /// A finished session: pending until a third of a TTL after its leases
    /// were last extended, unless already heard of.
    fn take(&mut self, pending: Pending) {
        if self.heard.remove(&pending.session_id).is_some() {
            self.leases.forget(&pending.session_id);
            return;
        }
        let due = pending.due + self.ttl / 3;
        self.pending.insert(
            pending.session_id,
            (pending.fence, pending.actual_micros, due),
        );
    }

    /// The coordinator released these sessions' leases.
    fn released(&mut self, session_ids: Vec<String>) {
        let now = Instant::now();
        for session_id in session_ids {
            if self.pending.remove(&session_id).is_some() {
                self.leases.forget(&session_id);
            } else if self.leases.fresh_since(&session_id).is_some() {
                // One of this worker's, whose confirm is still on its way.
                self.heard.insert(session_id, now);
            }
        }
        // A session heard of but never handed over (its report failed).
        let keep = self.ttl;
        self.heard.retain(|_, at| now.duration_since(*at) < keep);
    }

    /// Releases every pending session due by `now`.
    async fn release_due(&mut self, now: Instant) {
        let due: Vec<(String, u64, Option<u64>)> = self
            .pending
            .iter()
            .filter(|(_, (_, _, due))| *due <= now)
            .map(|(id, (fence, actual, _))| (id.clone(), *fence, *actual))
            .collect();
        for (session_id, fence, actual_micros) in due {
            self.pending.remove(&session_id);
            tracing::debug!(session = %session_id, "the coordinator has not released the leases: releasing them");
            if let Err(e) = self.leases.release(&session_id, fence, actual_micros).await {
                tracing::warn!(session = %session_id, error = %e, "releasing leases failed; they expire with their TTL");
            }
        }
    }
}

/// Sleeps until `due`, or forever when there is nothing due.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// A time after every due time.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
