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
//! - [`view`]: what the API shows.

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
use crate::metrics::{Metrics, OutcomeLabels, UnitLabels};
pub use crate::scheduler::Control;
use crate::scheduler::{Batch, BatchState, Effects, Fleet, Member, Refusal, Report, UnitState};
use crate::store::{Store, Write};
use crate::Error;

mod events;
mod publisher;
mod reaper;
mod record;
mod recovery;
mod result_span;
mod train;
mod train_view;
mod view;
mod workers;

use publisher::{publish_loop, Origin, Outgoing};
use recovery::restore;
pub use train_view::{CandidateView, ConflictsView, TrainView};
use view::summary;
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
    train: Option<train::TrainEntry>,
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
    mirrors: train::Mirrors,
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
            mirrors: train::Mirrors::default(),
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

    /// Accepts a batch: re-validates the manifest, stores it, and publishes
    /// every unit that can start. Returns the batch id.
    ///
    /// Everything that grows with the manifest (validation, the DAG, the
    /// batch's state, its JSON and hash) is built off the async threads and
    /// outside the fleet's lock: a million units take seconds, which would
    /// otherwise stall the API, the event intake and the renewal of the
    /// coordinator's lock. The new batch then joins the fleet in a short
    /// critical section.
    pub async fn enqueue(&self, manifest: Manifest) -> Result<String, Error> {
        let (manifest, dag) = off_runtime(move || {
            manifest.check()?;
            let dag = Dag::build(&manifest)?;
            Ok((manifest, dag))
        })
        .await?;
        self.claim_capacities(&manifest).await?;
        let git_base = self.pin_base(&manifest).await?;
        let now = now_ms();
        let prepared = off_runtime(move || Prepared::build(manifest, dag)).await?;
        let Prepared {
            batch_id,
            mut batch,
            mut fields,
            manifest_sha256,
        } = prepared;
        fields.push(("created_ms".into(), now.to_string()));
        if let Some(base) = git_base {
            fields.push(("git_base".into(), base.clone()));
            batch.git_base = Some(base);
        }
        let train = train::TrainEntry::new(&batch);
        if let Some(train) = &train {
            if let Ok(json) = serde_json::to_string(&train.stored) {
                fields.push(("train".into(), json));
            }
        }
        // Stored first, and checked: a record Redis refuses (over its bulk
        // limit, say) fails this request and leaves nothing half-stored.
        let record = vec![
            Write::Hash {
                key: self.config.keys.batch(&batch_id),
                fields,
            },
            Write::IndexBatch {
                batch_id: batch_id.clone(),
                created_ms: now,
            },
        ];
        if let Err(e) = self.store.store(record).await {
            self.store.write(Write::Forget { batch_id });
            let _ = self.store.flushed().await;
            // Freeing a million units' state takes a while too.
            tokio::task::spawn_blocking(move || drop(batch));
            return Err(e);
        }
        {
            let mut fleet = self.fleet();
            let entry = Entry {
                created_ms: now,
                ended_ms: None,
                manifest_sha256,
                train,
            };
            // Pending units need no record: a restart derives them.
            fleet.insert(batch, entry);
            self.dispatch_and_store(&mut fleet, &batch_id, Effects::default());
        }
        self.store.flushed().await?;
        tracing::info!(batch = %batch_id, "batch enqueued");
        Ok(batch_id)
    }

    /// Records each declared resource's capacity for the whole fleet, or
    /// refuses a manifest that disagrees with one already recorded: a
    /// resource's semaphore is shared by every batch, so two capacities for
    /// one name would let the larger one over-admit.
    async fn claim_capacities(&self, manifest: &Manifest) -> Result<(), Error> {
        let conflict = self
            .store
            .claim_capacities(&manifest.resources)
            .await
            .map_err(|e| Error::redis(&self.config.redis_url, e))?;
        match conflict {
            None => Ok(()),
            Some((resource, recorded, capacity)) => Err(Error::Conflict(format!(
                "resource '{resource}' has capacity {recorded} in this fleet (namespace '{}'), \
                 but this manifest says {capacity}: a resource is shared by every batch, so use \
                 the same capacity, or another resource name",
                self.config.names.namespace()
            ))),
        }
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

    /// The dead-letter queue's depth as the broker sees it now; `None` when
    /// the broker does not answer at once (a scrape never waits on an
    /// outage, and never queues up behind another scrape).
    async fn dead_letter_depth(&self) -> Option<u32> {
        let mut inspect = self.inspect.try_lock().ok()?;
        let read = async {
            let queue = inspect
                .get_or_open(|| self.link.channel())
                .await
                .ok()?
                .queue_declare(
                    self.config.names.dead_letter_queue().as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            queue.ok().map(|q| q.message_count())
        };
        tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .ok()
            .flatten()
    }

    /// The Prometheus text of every metric, with the gauges read now.
    pub async fn render_metrics(&self) -> String {
        {
            let fleet = self.fleet();
            for (id, entry) in fleet.iter() {
                for state in UnitState::ALL {
                    let labels = UnitLabels {
                        batch: id.clone(),
                        state: state.as_str().to_owned(),
                    };
                    self.metrics
                        .units
                        .get_or_create(&labels)
                        .set(entry.batch.count(state) as i64);
                }
            }
        }
        if let Some(depth) = self.dead_letter_depth().await {
            self.metrics.dead_lettered.set(i64::from(depth));
        }
        self.scrape_worker_health().await;
        self.metrics.render()
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

    /// Every live lease of the fleet, soonest expiry first.
    pub async fn leases(&self) -> Result<Vec<LeaseView>, Error> {
        let records = self
            .store
            .leases()
            .await
            .map_err(|e| Error::redis(&self.config.redis_url, e))?;
        let mut leases = Vec::with_capacity(records.len());
        for (session_id, expires_at_ms, record) in records {
            let Some(owner) = record.get("owner").and_then(|o| LeaseOwner::decode(o).ok()) else {
                continue;
            };
            let semaphores = record
                .get("semaphores")
                .map(|held| {
                    held.lines()
                        .filter_map(|line| {
                            let (key, weight) = line.rsplit_once('\t')?;
                            Some((key.to_owned(), weight.parse().ok()?))
                        })
                        .collect()
                })
                .unwrap_or_default();
            leases.push(LeaseView {
                session_id,
                worker: owner.worker,
                batch_id: owner.batch_id,
                unit_id: owner.unit_id,
                attempt: owner.attempt,
                fencing: record
                    .get("fence")
                    .and_then(|f| f.parse().ok())
                    .unwrap_or(0),
                expires_at_ms,
                semaphores,
            });
        }
        Ok(leases)
    }

    /// Every batch, newest first.
    pub fn batches(&self) -> Vec<BatchSummary> {
        let fleet = self.fleet();
        let mut list: Vec<BatchSummary> = fleet
            .iter()
            .map(|(id, e)| summary(id, e, fleet.usage()))
            .collect();
        list.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        list
    }

    pub fn batch(&self, batch_id: &str) -> Result<BatchSummary, Error> {
        let fleet = self.fleet();
        let entry = fleet
            .get(batch_id)
            .ok_or_else(|| Error::NotFound(format!("batch '{batch_id}'")))?;
        Ok(summary(batch_id, entry, fleet.usage()))
    }

    /// The units of a batch, optionally only those in one state.
    pub fn units(&self, batch_id: &str, state: Option<UnitState>) -> Result<Vec<UnitView>, Error> {
        let fleet = self.fleet();
        let entry = fleet
            .get(batch_id)
            .ok_or_else(|| Error::NotFound(format!("batch '{batch_id}'")))?;
        let batch = &entry.batch;
        Ok((0..batch.units.len())
            .filter(|&u| state.is_none_or(|s| batch.units[u].state == s))
            .map(|u| {
                let record = &batch.units[u];
                UnitView {
                    id: record.id.clone(),
                    state: record.state,
                    attempt: record.attempt,
                    failures: record.failures,
                    reason: record.reason.clone(),
                    waiting_for: fleet.waiting_for(batch_id, u),
                    history: record.history.clone(),
                }
            })
            .collect())
    }
}

/// A checked batch, built outside the fleet's lock, ready to join it.
struct Prepared {
    batch_id: String,
    batch: Batch,
    /// The batch record's fields holding the manifest.
    fields: Vec<(String, String)>,
    manifest_sha256: String,
}

impl Prepared {
    /// The heavy part of an enqueue: seconds for a million units.
    fn build(manifest: Manifest, dag: Dag) -> Result<Prepared, Error> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let batch_id = format!("{}-{}", sanitize(&manifest.batch), &suffix[..8]);
        let (fields, manifest_sha256) = record::manifest_fields(&manifest)?;
        let batch = Batch::new(batch_id.clone(), manifest, dag);
        Ok(Prepared {
            batch_id,
            batch,
            fields,
            manifest_sha256,
        })
    }
}

/// Runs work that grows with a manifest on the blocking pool, so that the
/// async threads keep serving the API and renewing the lock meanwhile.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Invalid(format!("enqueue stopped: {e}")))?
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

/// Keeps batch names usable in keys and file names.
fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if clean.is_empty() {
        "batch".into()
    } else {
        clean
    }
}
