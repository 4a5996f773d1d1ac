//! The coordinator daemon's core: it holds every live batch, publishes units
//! as their dependencies clear, applies worker events, reaps lost sessions,
//! and stores every change in Redis.
//!
//! State lives behind one mutex, held only for pure, short updates of the
//! [`scheduler`](crate::scheduler); the I/O that follows (publishing, storing,
//! acking) runs in tasks fed by channels, so a slow broker or Redis never
//! blocks event handling.
//!
//! - [`events`]: results in, applied once their effects are stored;
//! - [`reaper`]: lost sessions re-run, timers ticked;
//! - [`publisher`]: orders out, with confirms and re-sends;
//! - [`recovery`]: batches read back on start, written back after Redis
//!   lost its data;
//! - [`enqueue`]: a manifest checked, stored and joined to the fleet;
//! - [`view`]: what the API shows, and the queries behind it;
//! - [`workers`]: the workers' health records;
//! - git mode's merge train: [`train`] moves it, [`train_entry`] keeps and
//!   stores it, [`integration`] tests its candidates, [`mirrors`] holds the
//!   remotes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use regatta_broker::{publish_confirmed, BrokerLink, PublishError};
use regatta_proto::{
    open, scripts, EventKind, Keys, LeaseOwner, Names, Outcome, SessionEvent, Signer,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dag::Dag;
use crate::manifest::Manifest;
use crate::metrics::{Metrics, OutcomeLabels};
pub use crate::scheduler::Control;
use crate::scheduler::{Batch, BatchState, Effects, Fleet, Member, Refusal, Report, UnitState};
use crate::store::{Store, Write};
use crate::Error;

mod enqueue;
mod events;
mod integration;
mod mirrors;
mod publisher;
mod reaper;
mod record;
mod recovery;
mod result_span;
mod train;
mod train_entry;
mod train_view;
mod view;
mod workers;

use publisher::{publish_loop, Origin, Outgoing};
use recovery::restore;
pub use train_view::{CandidateView, ConflictsView, TrainView};
pub use view::{BatchSummary, LeaseView, ResourceView, TrainSummary, UnitView};

/// The coordinator's settings.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub amqp_url: String,
    pub redis_url: String,
    pub names: Names,
    pub keys: Keys,
    pub signer: Signer,
    /// How often expired leases are looked for.
    pub reap_interval: Duration,
    /// The workers' lease TTL (the longest, if they differ): after Redis
    /// loses its data, no lease is granted for this long.
    pub lease_ttl: Duration,
    /// The coordinator lock's tenure: no write while it is not current.
    pub tenure: Option<crate::lock::Tenure>,
    /// Git mode: where the coordinator keeps its mirrors of the batches'
    /// repositories (docs/git-mode.md).
    pub git_dir: std::path::PathBuf,
}

/// What the service keeps beside each batch of the fleet: its timings,
/// its manifest's hash and its merge train (the scheduler keeps the rest).
struct Entry {
    created_ms: i64,
    ended_ms: Option<i64>,
    /// Computed once: hashing a million-unit manifest takes a while.
    manifest_sha256: String,
    /// Git mode: the batch's merge train.
    train: Option<train_entry::TrainEntry>,
}

/// A cheap-to-clone handle on the running coordinator.
#[derive(Clone)]
pub struct Service {
    fleet: Arc<Mutex<Fleet<Entry>>>,
    pub metrics: Arc<Metrics>,
    /// The supervised broker connection every task takes channels from.
    link: BrokerLink,
    /// A channel for read-only broker queries (queue depths), opened when needed.
    inspect: Arc<tokio::sync::Mutex<regatta_broker::KeptChannel>>,
    store: Store,
    publisher: mpsc::UnboundedSender<Outgoing>,
    config: Arc<ServiceConfig>,
    /// Git mode: the coordinator's mirrors, and the train loop's wake-up.
    mirrors: mirrors::Mirrors,
    train_wake: Arc<tokio::sync::Notify>,
}

impl Service {
    /// Connects to RabbitMQ and Redis, declares the topology, and starts the
    /// publisher, the event consumer and the reaper in `tasks`; they stop
    /// with `shutdown`, and the caller joins them.
    pub async fn start(
        config: ServiceConfig,
        shutdown: CancellationToken,
        tasks: &mut regatta_telemetry::tasks::Tasks,
    ) -> Result<Service, Error> {
        let connection_name = format!("regatta-coordinator {}", config.names.namespace());
        let link =
            BrokerLink::connect(&config.amqp_url, &connection_name, config.names.clone()).await?;
        let store = Store::connect(
            &config.redis_url,
            config.keys.clone(),
            config.tenure.clone(),
            &shutdown,
            tasks,
        )
        .await?;
        let (publisher, outgoing) = mpsc::unbounded_channel();
        let fleet = restore(&store, &config).await?;
        let service = Service {
            fleet: Arc::new(Mutex::new(fleet)),
            metrics: Arc::new(Metrics::new()),
            link,
            inspect: Arc::default(),
            store,
            publisher,
            config: Arc::new(config),
            mirrors: mirrors::Mirrors::default(),
            train_wake: Arc::default(),
        };
        service.republish_queued();
        service.mark_epoch().await?;
        tasks.spawn(
            "publisher",
            publish_loop(
                service.link.clone(),
                service.config.names.work_queue(),
                outgoing,
                shutdown.clone(),
            ),
        );
        tasks.spawn(
            "event consumer",
            service.clone().consume_events(shutdown.clone()),
        );
        tasks.spawn("reaper", service.clone().reap_loop(shutdown.clone()));
        tasks.spawn("ticker", service.clone().tick_loop(shutdown.clone()));
        tasks.spawn("merge train", service.clone().train_loop(shutdown));
        Ok(service)
    }

    fn fleet(&self) -> MutexGuard<'_, Fleet<Entry>> {
        // A panic while holding the lock would be a bug; keep serving.
        self.fleet
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Dispatches what can start, then stores and publishes every effect.
    fn dispatch_and_store(&self, fleet: &mut Fleet<Entry>, batch_id: &str, mut effects: Effects) {
        let now = now_ms();
        let outgoing = publisher::dispatch_orders(
            fleet,
            batch_id,
            now,
            &mut effects,
            &self.config.signer,
            &mut new_session_id,
        );
        let Some(entry) = fleet.get_mut(batch_id) else {
            return;
        };
        let batch = &entry.batch;
        if !effects.changed.is_empty() {
            let fields = effects
                .changed
                .iter()
                .filter_map(|&u| {
                    serde_json::to_string(&batch.units[u])
                        .ok()
                        .map(|json| (batch.units[u].id.clone(), json))
                })
                .collect();
            self.store.write(Write::Hash {
                key: self.config.keys.units(batch_id),
                fields,
            });
        }
        self.metrics.published.inc_by(effects.publish.len() as u64);
        if !outgoing.is_empty() {
            // Publish only once the units' `queued` records are stored: a
            // crash in between then re-publishes the same sessions on
            // restart, never new ones beside live orders.
            let publisher = self.publisher.clone();
            self.store.write(Write::Then(Box::new(move || {
                for order in outgoing {
                    let _ = publisher.send(order);
                }
            })));
        }
        if batch.state.is_terminal() && entry.extra.ended_ms.is_none() {
            entry.extra.ended_ms = Some(now);
            tracing::info!(batch = %batch_id, state = batch.state.as_str(), "batch ended");
        }
        let fields = progress_fields(entry);
        self.store.write(Write::Hash {
            key: self.config.keys.batch(batch_id),
            fields,
        });
    }

    /// Applies a human's decision to a batch.
    pub async fn control(&self, batch_id: &str, action: Control) -> Result<(), Error> {
        let cancelling = matches!(action, Control::Cancel);
        {
            let mut fleet = self.fleet();
            let mut effects =
                fleet
                    .control(batch_id, &action)
                    .map_err(|refusal| match refusal {
                        Refusal::NotFound(what) => Error::NotFound(what),
                        Refusal::Conflict(why) => Error::Conflict(why),
                    })?;
            if let Some(entry) = fleet.get_mut(batch_id) {
                if let Control::Skip(unit) = &action {
                    if let Some(unit) = entry.batch.index_of(unit) {
                        self.skip_in_train(entry, unit, &mut effects);
                    }
                }
                if !entry.batch.state.is_terminal() {
                    entry.extra.ended_ms = None;
                }
            }
            self.dispatch_and_store(&mut fleet, batch_id, effects);
        }
        if cancelling {
            // Workers hear it now, not at their next lease renewal.
            self.store
                .write(Write::Notify(regatta_proto::Notice::Cancel {
                    batch_id: batch_id.to_owned(),
                }));
        }
        // Answered as done only once stored by the lock's holder.
        self.store.flushed().await?;
        Ok(())
    }
}

/// The batch record's fields that change as the batch runs.
fn progress_fields(entry: &Member<Entry>) -> Vec<(String, String)> {
    let batch = &entry.batch;
    let counts: BTreeMap<&str, usize> = batch
        .counts()
        .iter()
        .map(|(s, n)| (s.as_str(), *n))
        .collect();
    let mut fields = vec![
        ("state".to_owned(), batch.state.as_str().to_owned()),
        (
            "counts".to_owned(),
            serde_json::to_string(&counts).unwrap_or_default(),
        ),
    ];
    if let Some(ended) = entry.extra.ended_ms {
        fields.push(("ended_ms".into(), ended.to_string()));
    }
    fields
}

fn new_session_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
