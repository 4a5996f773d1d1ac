//! Event intake: the results workers report, consumed off the events
//! queue, opened (a bad one is dead-lettered), applied to the scheduler and
//! acked once their effects are stored.

use futures::FutureExt;
use regatta_telemetry::backoff::Backoff;

use super::*;

impl Service {
    /// Applies one worker event (the reaper's own reports); returns once
    /// its effects are stored.
    pub async fn apply_event(&self, event: SessionEvent) {
        self.apply_window(vec![(event, tracing::Span::current())])
            .await;
    }

    /// Applies a window of events, in the order they were delivered, under
    /// one hold of the fleet lock, and returns once all their effects are
    /// stored: one flush for the window, so that its deliveries can be
    /// acked at once (contract 5, docs/contracts.md). Each event is applied
    /// and dispatches what it allows in its own span, which the orders it
    /// unblocks link to.
    pub(super) async fn apply_window(&self, events: Vec<(SessionEvent, tracing::Span)>) {
        {
            let mut fleet = self.fleet();
            // Sessions whose leases this window releases.
            let mut released = Vec::new();
            for (event, span) in events {
                span.in_scope(|| self.apply_locked(&mut fleet, &event, &mut released));
            }
            if !released.is_empty() {
                // Their workers need not release them too (a worker that
                // misses this does, once their renewal would be due).
                self.store
                    .write(Write::Notify(regatta_proto::Notice::Released {
                        session_ids: released,
                    }));
            }
        }
        // Acked either way: a coordinator that lost its lock stops, and its
        // successor has the state Redis holds.
        let _ = self.store.flushed().await;
    }

    /// Applies one event to the fleet, dispatches what it allows and
    /// queues their writes; a result applied here frees its leases, and its
    /// session joins `released`.
    fn apply_locked(
        &self,
        fleet: &mut Fleet<Entry>,
        event: &SessionEvent,
        released: &mut Vec<String>,
    ) {
        if event.unit_id == regatta_proto::INTEGRATION_UNIT {
            // The merge train's own sessions (docs/git-mode.md).
            self.apply_integration_event(fleet, event);
            return;
        }
        let Some(batch) = fleet.batch(&event.batch_id) else {
            tracing::debug!(batch = %event.batch_id, "event for an unknown batch ignored");
            return;
        };
        let Some(unit) = batch.index_of(&event.unit_id) else {
            tracing::warn!(batch = %event.batch_id, unit = %event.unit_id, "event for an unknown unit ignored");
            return;
        };
        // Whether this session's start was known before this event: a
        // short session reports it only in its `Finished`.
        let start_known = batch.units[unit]
            .history
            .iter()
            .any(|a| a.session_id == event.session_id && a.started_at_ms.is_some());
        if let EventKind::Started { lease_wait_ms } = event.kind {
            self.metrics
                .lease_wait
                .observe(lease_wait_ms as f64 / 1000.0);
        }
        // Deferrals count from this coordinator's clock, not the worker's.
        let report = Report::from_event(event, now_ms());
        // A worker's result (the reaper's own reports carry no fence).
        let finished_fence = match &report {
            Report::Finished(finish) if finish.fencing > 0 => Some(finish.fencing),
            _ => None,
        };
        // What the session cost settles its batch budget reservation.
        let actual_micros = match &report {
            Report::Finished(finish) => finish.usage.as_ref().and_then(|u| u.cost_usd),
            _ => None,
        }
        .map(regatta_proto::batch_budget::micros);
        let observed = Observation::of(&report);
        let mut effects = fleet.report(&event.batch_id, unit, &event.session_id, report);
        let Some(entry) = fleet.get_mut(&event.batch_id) else {
            return;
        };
        if entry.batch.git_mode() && effects.changed.contains(&unit) {
            self.offer_to_train(entry, unit, &mut effects);
        }
        if let (Some(fence), false) = (finished_fence, effects.changed.is_empty()) {
            // The result is applied: free its leases before any publish
            // that it allows (dispatch_and_store below), under its fencing
            // number.
            self.store.write(Write::Release {
                session_id: event.session_id.clone(),
                fence,
                actual_micros,
            });
            released.push(event.session_id.clone());
        }
        if !effects.changed.is_empty() {
            if let (Observation::Finished(_), false) = (observed, start_known) {
                // The start is first heard of now: its metrics too.
                if let EventKind::Finished {
                    lease_wait_ms: Some(waited),
                    ..
                } = event.kind
                {
                    self.metrics.lease_wait.observe(waited as f64 / 1000.0);
                }
                self.observe_start(&entry.batch, unit, &event.session_id);
            }
            self.observe(&entry.batch, unit, observed);
            if let Some(attempt) = entry.batch.units[unit]
                .history
                .iter()
                .find(|a| a.session_id == event.session_id)
            {
                result_span::conclude(attempt);
            }
        }
        self.dispatch_and_store(fleet, &event.batch_id, effects);
    }

    /// Feeds the queue-wait metric once a session's start is known.
    fn observe_start(&self, batch: &Batch, unit: usize, session_id: &str) {
        let seconds = |from: i64, to: i64| (to - from).max(0) as f64 / 1000.0;
        let attempt = batch.units[unit]
            .history
            .iter()
            .find(|a| a.session_id == session_id);
        if let Some(a) = attempt {
            if let Some(started) = a.started_at_ms {
                self.metrics
                    .queue_wait
                    .observe(seconds(a.published_at_ms, started));
            }
        }
    }

    /// Feeds the metrics from an applied report.
    fn observe(&self, batch: &Batch, unit: usize, observed: Observation) {
        let record = &batch.units[unit];
        let seconds = |from: i64, to: i64| (to - from).max(0) as f64 / 1000.0;
        match observed {
            Observation::Started => {
                if let Some(a) = record.current() {
                    self.observe_start(batch, unit, &a.session_id);
                }
            }
            Observation::Finished(outcome) => {
                self.metrics
                    .sessions
                    .get_or_create(&OutcomeLabels::of(outcome))
                    .inc();
                if outcome == Outcome::Lost {
                    self.metrics.lost_sessions.inc();
                }
                if outcome.counts_as_attempt() && record.state == UnitState::Ready {
                    self.metrics.retries.inc();
                }
                if let Some(a) = record.current() {
                    if let (Some(start), Some(end)) = (a.started_at_ms, a.ended_at_ms) {
                        self.metrics.session_duration.observe(seconds(start, end));
                    }
                }
                // The attempt that just ended: a retry's new attempt is not
                // pushed until dispatch.
                let ended = record.history.iter().rev().find(|a| a.outcome.is_some());
                if let Some(usage) = ended.and_then(|a| a.usage.as_ref()) {
                    self.metrics.observe_usage(&batch.id, outcome, usage);
                }
            }
            Observation::Other => {}
        }
    }

    /// Consumes session events until shutdown; each is acked once stored.
    pub(super) async fn consume_events(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        while !shutdown.is_cancelled() {
            let subscribed = std::time::Instant::now();
            let ended = match self.consume_events_once(&shutdown).await {
                Ok(()) if shutdown.is_cancelled() => return,
                // The broker ended the subscription (its channel closed).
                Ok(()) => "the subscription ended".to_owned(),
                Err(e) => e.to_string(),
            };
            if subscribed.elapsed() > Duration::from_secs(30) {
                backoff.reset();
            }
            tracing::warn!(error = %ended, "event consumer stopped; subscribing again");
            tokio::select! {
                _ = backoff.wait() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn consume_events_once(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<(), regatta_broker::Error> {
        // A new channel after any failure: delivery tags of the old one are
        // void. The topology is declared again: a queue deleted under a live
        // connection would otherwise fail every subscription.
        let channel = self.link.confirm_channel().await?;
        regatta_broker::declare_topology(&channel, &self.config.names).await?;
        channel
            .basic_qos(EVENTS_PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.config.names.events_queue().as_str().into(),
                "regatta-coordinator".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        loop {
            let first = tokio::select! {
                next = consumer.next() => next,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let mut window = Vec::new();
            match first {
                Some(Ok(delivery)) => window.push(delivery),
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            }
            // Whatever else the broker already delivered joins the window;
            // nothing is waited for.
            while window.len() < EVENT_WINDOW {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(delivery))) => window.push(delivery),
                    Some(Some(Err(e))) => return Err(e.into()),
                    Some(None) | None => break,
                }
            }
            self.apply_deliveries(&channel, window).await?;
        }
    }

    /// Opens a window of deliveries, dead-letters the unreadable ones one
    /// by one, applies the rest with one store flush, then acks the whole
    /// window with one multiple-ack, only once their effects are stored
    /// (contract 5, docs/contracts.md).
    async fn apply_deliveries(
        &self,
        channel: &lapin::Channel,
        window: Vec<lapin::message::Delivery>,
    ) -> Result<(), regatta_broker::Error> {
        let mut events = Vec::with_capacity(window.len());
        // The last delivery still to settle: acking it with `multiple` acks
        // every earlier one of this channel too. A requeued one is settled
        // already, and is not covered.
        let mut last_to_ack = None;
        for delivery in window {
            match open::<SessionEvent>(&delivery.data, &self.config.signer) {
                Ok(event) => {
                    // The result handling joins the session's trace.
                    let span = result_span::received(
                        &event,
                        &self.config.names.events_queue(),
                        delivery.properties.headers().as_ref(),
                        delivery.data.len(),
                    );
                    events.push((event, span));
                }
                Err(e) => {
                    if !self.dead_letter(channel, &delivery, &e.to_string()).await? {
                        continue;
                    }
                }
            }
            last_to_ack = Some(delivery);
        }
        self.metrics.event_windows.observe(events.len() as f64);
        if !events.is_empty() {
            self.apply_window(events).await;
        }
        if let Some(delivery) = last_to_ack {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }

    /// Puts an unreadable event on the dead-letter queue with its reason
    /// (contract 7: never silently dropped). `false` when it could not, and
    /// the delivery went back to the queue instead.
    async fn dead_letter(
        &self,
        channel: &lapin::Channel,
        delivery: &lapin::message::Delivery,
        reason: &str,
    ) -> Result<bool, regatta_broker::Error> {
        tracing::warn!(%reason, "unreadable event dead-lettered");
        let mut headers = FieldTable::default();
        headers.insert(
            regatta_proto::REASON_HEADER.into(),
            lapin::types::AMQPValue::LongString(reason.into()),
        );
        let dead = publish_confirmed(
            channel,
            &self.config.names.dead_letter_queue(),
            &delivery.data,
            BasicProperties::default().with_headers(headers),
        )
        .await;
        match dead {
            Ok(()) => Ok(true),
            Err(PublishError::Broker(e)) => Err(e.into()),
            Err(other) => {
                // Left unacked, the broker dead-letters it once the
                // queue's delivery limit is reached.
                tracing::error!(error = %other, "cannot dead-letter an unreadable event");
                delivery
                    .nack(lapin::options::BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
                Ok(false)
            }
        }
    }
}

/// How many events the coordinator holds unacked: the broker's buffer from
/// which a window is taken.
const EVENTS_PREFETCH: u16 = 512;

/// The most events applied under one lock and one flush: large enough to
/// absorb a burst of short sessions, small enough that the fleet lock is
/// never held long.
const EVENT_WINDOW: usize = 256;

/// What a report means for the metrics, taken before it is consumed.
#[derive(Debug, Clone, Copy)]
enum Observation {
    Started,
    Finished(Outcome),
    Other,
}

impl Observation {
    fn of(report: &Report) -> Observation {
        match report {
            Report::Started { .. } => Observation::Started,
            Report::Finished(finish) => Observation::Finished(finish.outcome),
            Report::Deferred { .. } => Observation::Other,
        }
    }
}
