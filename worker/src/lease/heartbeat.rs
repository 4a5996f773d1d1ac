//! The heartbeat of a session's leases: renews them every third of their
//! TTL, and at once when a control notice concerns them (see
//! [`crate::control`]); when they are lost (taken over, reaped, or Redis
//! unreachable for longer than the TTL), it stops the session, so that it
//! cannot overlap a re-run (contract 3, docs/contracts.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regatta_proto::WorkOrder;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{LeaseClient, Renewal};
use crate::command::Stop;
use crate::control::Listener;

/// A heartbeat, ready to start.
pub struct Heartbeat {
    leases: LeaseClient,
    batch_id: String,
    session_id: String,
    fence: u64,
    ttl: Duration,
    /// Until the first renewal.
    first_after: Duration,
    notices: Listener,
    /// The running session it guards; `None` once the session is over.
    session: Option<Guarded>,
}

/// What a heartbeat does to the running session it guards.
struct Guarded {
    stop: Stop,
    /// Counts renewals, for the session's leader (see [`crate::leader`]).
    renewed: watch::Sender<u64>,
}

/// Why the heartbeat stopped a session, read when it ends.
#[derive(Debug, Default)]
pub struct StopCause {
    lost: AtomicBool,
    cancelled: AtomicBool,
}

impl StopCause {
    /// The session's leases were lost: a re-run may already be starting.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The session's batch was cancelled.
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

impl Heartbeat {
    /// The heartbeat of a running session: the first renewal a third of the
    /// TTL after the claim; `stop` is fired when the batch is cancelled
    /// (gently) or the leases are lost (at once). The receiver counts the
    /// renewals, for the session's leader.
    pub fn for_session(
        leases: LeaseClient,
        order: &WorkOrder,
        fence: u64,
        ttl: Duration,
        notices: Listener,
        stop: Stop,
    ) -> (Heartbeat, watch::Receiver<u64>) {
        let (renewed, renewals) = watch::channel(0u64);
        let heartbeat = Heartbeat {
            first_after: ttl / 3,
            session: Some(Guarded { stop, renewed }),
            ..Heartbeat::for_result(leases, order, fence, ttl, notices)
        };
        (heartbeat, renewals)
    }

    /// The heartbeat while a session's evidence is stored and its result
    /// reported: an output may be a touched file, and a worker that dies
    /// now must be reaped. Its first renewal falls a third of a TTL after
    /// the leases were last extended (at once if that is unknown), so a
    /// short session's young lease is not renewed again; there is no
    /// session left to stop.
    pub fn for_result(
        leases: LeaseClient,
        order: &WorkOrder,
        fence: u64,
        ttl: Duration,
        notices: Listener,
    ) -> Heartbeat {
        let first_after = match leases.fresh_since(&order.session_id) {
            Some(since) => (ttl / 3).saturating_sub(since.elapsed()),
            None => Duration::ZERO,
        };
        Heartbeat {
            leases,
            batch_id: order.batch_id.clone(),
            session_id: order.session_id.clone(),
            fence,
            ttl,
            first_after,
            notices,
            session: None,
        }
    }

    /// Starts renewing, until [`Beating::stop`] or the leases are lost.
    pub fn start(self) -> Beating {
        let done = CancellationToken::new();
        let cause = Arc::new(StopCause::default());
        let task = tokio::spawn(self.beat(done.clone(), cause.clone()));
        Beating { done, cause, task }
    }

    async fn beat(mut self, done: CancellationToken, cause: Arc<StopCause>) {
        let period = self.ttl / 3;
        let mut last_renewal = Instant::now();
        let mut wait = self.first_after;
        let session_id = self.session_id.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = done.cancelled() => return,
                _ = self.notices.concerning(&self.batch_id, &self.session_id) => {}
            }
            wait = period;
            let renewal = self
                .leases
                .renew(&self.batch_id, &self.session_id, self.fence, self.ttl);
            match tokio::time::timeout(period, renewal).await {
                Ok(Ok(Renewal::Renewed)) => {
                    last_renewal = Instant::now();
                    self.renewed();
                }
                Ok(Ok(Renewal::Cancelled)) => {
                    // The lease was extended: it holds while the session dies.
                    last_renewal = Instant::now();
                    self.renewed();
                    if !cause.cancelled.swap(true, Ordering::SeqCst) {
                        if let Some(session) = &self.session {
                            tracing::info!(session = %session_id, "batch cancelled: stopping the session");
                            session.stop.gently.cancel();
                        }
                    }
                }
                Ok(Ok(Renewal::Released)) => {
                    // Only after the result is sent; a session still running
                    // has no business without its leases either.
                    tracing::debug!(session = %session_id, "leases released: renewals stop");
                    return self.lose(&cause);
                }
                Ok(Ok(Renewal::Lost)) => {
                    tracing::warn!(session = %session_id, "lease lost (expired or taken over): killing the session");
                    return self.lose(&cause);
                }
                Ok(Err(e)) => {
                    tracing::warn!(session = %session_id, error = %e, "lease renewal failed")
                }
                Err(_) => tracing::warn!(session = %session_id, "lease renewal timed out"),
            }
            // Leave a margin of one period: kill before anyone else can reap.
            if last_renewal.elapsed() + period >= self.ttl {
                tracing::warn!(session = %session_id, "leases could not be renewed within their TTL: killing the session");
                return self.lose(&cause);
            }
        }
    }

    /// Tells the session's leader that the leases still hold.
    fn renewed(&self) {
        if let Some(session) = &self.session {
            session.renewed.send_modify(|n| *n += 1);
        }
    }

    /// The leases are gone: the session dies at once.
    fn lose(&self, cause: &StopCause) {
        cause.lost.store(true, Ordering::SeqCst);
        if let Some(session) = &self.session {
            session.stop.now.cancel();
        }
    }
}

/// A started heartbeat.
pub struct Beating {
    done: CancellationToken,
    cause: Arc<StopCause>,
    task: JoinHandle<()>,
}

impl Beating {
    /// Why it stopped the session, if it did.
    pub fn cause(&self) -> &StopCause {
        &self.cause
    }

    /// Stops renewing, and waits until no renewal is under way.
    pub async fn stop(self) {
        self.done.cancel();
        let _ = self.task.await;
    }
}
