//! The reaper: sessions whose leases expired (a dead or cut-off worker)
//! are re-run as `lost` attempts, and timers (deferrals) are ticked.

use super::*;

impl Service {
    /// Re-runs the units of sessions whose leases expired (a dead worker).
    pub(super) async fn reap_loop(self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.reap_interval);
        let mut connection = self.store.connection();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            self.notice_data_loss().await;
            let reaped: Result<Vec<String>, _> = redis::Script::new(scripts::REAP)
                .key(self.config.keys.leases())
                .arg(self.config.keys.lease(""))
                .arg(1000)
                .arg(self.config.keys.done(""))
                .invoke_async(&mut connection)
                .await;
            let reaped = match reaped {
                Ok(reaped) => reaped,
                Err(e) => {
                    tracing::warn!(error = %e, "reaping expired leases failed");
                    continue;
                }
            };
            for pair in reaped.chunks(2) {
                let [session_id, owner] = pair else { continue };
                let Ok(owner) = LeaseOwner::decode(owner) else {
                    tracing::warn!(session = %session_id, "reaped a lease without a readable owner");
                    continue;
                };
                tracing::warn!(batch = %owner.batch_id, unit = %owner.unit_id, session = %session_id, worker = %owner.worker, "session lost: its worker stopped renewing its leases");
                // A worker still alive kills it now, not at its next renewal.
                self.store
                    .write(Write::Notify(regatta_proto::Notice::Revoke {
                        session_id: session_id.clone(),
                    }));
                let event = SessionEvent {
                    batch_id: owner.batch_id,
                    unit_id: owner.unit_id,
                    session_id: session_id.clone(),
                    attempt: owner.attempt,
                    fencing: 0,
                    worker: owner.worker.clone(),
                    at_ms: now_ms(),
                    kind: EventKind::ended_without_running(
                        Outcome::Lost,
                        format!("lost: worker {} stopped renewing its leases", owner.worker),
                    ),
                };
                let span = {
                    let fleet = self.fleet();
                    let attempt = fleet.get(&event.batch_id).and_then(|e| {
                        let unit = e.batch.index_of(&event.unit_id)?;
                        e.batch.units[unit]
                            .history
                            .iter()
                            .find(|a| a.session_id == event.session_id)
                    });
                    result_span::reaped(&event, attempt)
                };
                tracing::Instrument::instrument(self.apply_event(event), span).await;
            }
        }
    }

    /// Gives deferred units their next chance.
    pub(super) async fn tick_loop(self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let mut fleet = self.fleet();
            let live: Vec<String> = fleet
                .iter()
                .filter(|(_, e)| {
                    e.batch.state == BatchState::Running && e.batch.count(UnitState::Ready) > 0
                })
                .map(|(id, _)| id.clone())
                .collect();
            for batch_id in live {
                self.dispatch_and_store(&mut fleet, &batch_id, Effects::default());
            }
        }
    }
}
