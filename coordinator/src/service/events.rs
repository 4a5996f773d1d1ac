//! Event intake: the results workers report, consumed off the events
//! queue, opened (a bad one is dead-lettered), applied to the scheduler and
//! acked once their effects are stored.

use regatta_telemetry::backoff::Backoff;

use super::*;

impl Service {
    /// Applies one worker event; returns once its effects are stored.
    pub async fn apply_event(&self, event: SessionEvent) {
        if event.unit_id == regatta_proto::INTEGRATION_UNIT {
            // The merge train's own sessions (docs/git-mode.md).
            self.apply_integration_event(&mut self.fleet(), &event);
            let _ = self.store.flushed().await;
            return;
        }
        {
            let mut fleet = self.fleet();
            let Some(batch) = fleet.batch(&event.batch_id) else {
                tracing::debug!(batch = %event.batch_id, "event for an unknown batch ignored");
                return;
            };
            let Some(unit) = batch.index_of(&event.unit_id) else {
                tracing::warn!(batch = %event.batch_id, unit = %event.unit_id, "event for an unknown unit ignored");
                return;
            };
            if let EventKind::Started { lease_wait_ms } = event.kind {
                self.metrics
                    .lease_wait
                    .observe(lease_wait_ms as f64 / 1000.0);
            }
            // Deferrals count from this coordinator's clock, not the worker's.
            let report = Report::from_event(&event, now_ms());
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
                // that it allows (dispatch_and_store below), under its fencing number.
                self.store.write(Write::Release {
                    session_id: event.session_id.clone(),
                    fence,
                    actual_micros,
                });
            }
            if !effects.changed.is_empty() {
                self.observe(&entry.batch, unit, observed);
                if let Some(attempt) = entry.batch.units[unit]
                    .history
                    .iter()
                    .find(|a| a.session_id == event.session_id)
                {
                    result_span::conclude(attempt);
                }
            }
            let batch_id = event.batch_id.clone();
            self.dispatch_and_store(&mut fleet, &batch_id, effects);
        }
        // Acked either way: a coordinator that lost its lock stops, and its
        // successor has the state Redis holds.
        let _ = self.store.flushed().await;
    }

    /// Feeds the metrics from an applied report.
    fn observe(&self, batch: &Batch, unit: usize, observed: Observation) {
        let record = &batch.units[unit];
        let seconds = |from: i64, to: i64| (to - from).max(0) as f64 / 1000.0;
        match observed {
            Observation::Started => {
                if let Some(a) = record.current() {
                    if let Some(started) = a.started_at_ms {
                        self.metrics
                            .queue_wait
                            .observe(seconds(a.published_at_ms, started));
                    }
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
        channel.basic_qos(512, BasicQosOptions::default()).await?;
        let mut consumer = channel
            .basic_consume(
                self.config.names.events_queue().as_str().into(),
                "regatta-coordinator".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        loop {
            let delivery = tokio::select! {
                next = consumer.next() => next,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            };
            match open::<SessionEvent>(&delivery.data, &self.config.signer) {
                Ok(event) => {
                    // The result handling joins the session's trace.
                    let span = result_span::received(
                        &event,
                        &self.config.names.events_queue(),
                        delivery.properties.headers().as_ref(),
                        delivery.data.len(),
                    );
                    tracing::Instrument::instrument(self.apply_event(event), span).await
                }
                Err(e) => {
                    // Contract 7: never silently dropped, always with its reason.
                    let reason = e.to_string();
                    tracing::warn!(%reason, "unreadable event dead-lettered");
                    let mut headers = FieldTable::default();
                    headers.insert(
                        regatta_proto::REASON_HEADER.into(),
                        lapin::types::AMQPValue::LongString(reason.into()),
                    );
                    let dead = publish_confirmed(
                        &channel,
                        &self.config.names.dead_letter_queue(),
                        &delivery.data,
                        BasicProperties::default().with_headers(headers),
                    )
                    .await;
                    match dead {
                        Ok(()) => {}
                        Err(PublishError::Broker(e)) => return Err(e.into()),
                        Err(other) => {
                            // Left unacked, the broker dead-letters it once
                            // the queue's delivery limit is reached.
                            tracing::error!(error = %other, "cannot dead-letter an unreadable event");
                            delivery
                                .nack(lapin::options::BasicNackOptions {
                                    requeue: true,
                                    ..Default::default()
                                })
                                .await?;
                            continue;
                        }
                    }
                }
            }
            delivery.ack(BasicAckOptions::default()).await?;
        }
    }
}

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
