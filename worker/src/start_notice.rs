//! The `started` event of a session, sent only if the session outlives
//! the worker's `--started-after` threshold. A short session (most of a
//! batch of small units) then costs two confirmed messages, its order and
//! its `finished`, not three; its `finished` carries the start time and the
//! lease wait instead. The command never waits for `started`'s confirm:
//! the notice is sent by its own task.
//!
//! Order on the wire: `finished` is sent only once a `started` that was
//! sent is confirmed, so the coordinator never hears them the other way
//! round (contract 4, docs/contracts.md, also makes a late `started` harmless).

use std::time::Instant;

use regatta_proto::{EventKind, SessionEvent, WorkOrder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::worker::Shared;

/// A session's start, announced to the coordinator once it is long enough.
pub(crate) struct StartNotice {
    at_ms: i64,
    lease_wait_ms: u64,
    /// Cancelled when the session ends before the threshold.
    ended: CancellationToken,
    task: JoinHandle<()>,
}

impl StartNotice {
    /// Starts the clock of a session that holds its leases: `claimed` is
    /// when intake began to claim them. `started` follows after the
    /// worker's threshold unless [`StartNotice::settle`] comes first.
    pub(crate) fn arm(shared: &Shared, order: &WorkOrder, fence: u64, claimed: Instant) -> Self {
        let at_ms = chrono::Utc::now().timestamp_millis();
        let lease_wait_ms = claimed.elapsed().as_millis() as u64;
        let event = SessionEvent {
            batch_id: order.batch_id.clone(),
            unit_id: order.unit_id.clone(),
            session_id: order.session_id.clone(),
            attempt: order.attempt,
            fencing: fence,
            worker: shared.config.name.clone(),
            at_ms,
            kind: EventKind::Started { lease_wait_ms },
        };
        let ended = CancellationToken::new();
        let reporter = shared.reporter.clone();
        let shutdown = shared.shutdown.clone();
        let after = shared.config.started_after;
        let span = tracing::Span::current();
        let task = tokio::spawn({
            let ended = ended.clone();
            async move {
                // With no threshold, every session reports it.
                if !after.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(after) => {}
                        _ = ended.cancelled() => return,
                    }
                }
                // Once begun, the send is not cut short: `settle` waits
                // for it, so that `finished` follows it.
                let _ =
                    tracing::Instrument::instrument(reporter.event(&event, &shutdown), span).await;
            }
        });
        StartNotice {
            at_ms,
            lease_wait_ms,
            ended,
            task,
        }
    }

    /// Ends the notice before `finished` is sent: a `started` not sent yet
    /// never will be, one under way is waited for. Fills `finished`'s start
    /// time and lease wait, which the coordinator reads when no `started`
    /// came.
    pub(crate) async fn settle(self, finished: &mut EventKind) {
        self.ended.cancel();
        let _ = self.task.await;
        if let EventKind::Finished {
            started_at_ms,
            lease_wait_ms,
            ..
        } = finished
        {
            *started_at_ms = Some(self.at_ms);
            *lease_wait_ms = Some(self.lease_wait_ms);
        }
    }
}
