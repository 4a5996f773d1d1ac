//! What the API and the CLI show of batches, units and leases, and the
//! queries that read it (under the fleet's lock, or from Redis and the
//! broker for leases and gauges).

use std::collections::BTreeMap;

use serde::Serialize;

use std::time::Duration;

use lapin::types::FieldTable;
use regatta_proto::LeaseOwner;

use super::{Entry, Service};
use crate::metrics::UnitLabels;
use crate::scheduler::{BatchState, Member, UnitState};
use crate::Error;

/// What the API shows of a batch.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BatchSummary {
    pub id: String,
    pub name: String,
    pub state: BatchState,
    pub total: usize,
    pub counts: BTreeMap<UnitState, usize>,
    pub created_ms: i64,
    pub ended_ms: Option<i64>,
    /// The sha256 of the manifest as enqueued, for evidence packs.
    pub manifest_sha256: String,
    pub concurrency: u32,
    pub resources: Vec<ResourceView>,
    /// How the calibration units went, when the batch calibrates.
    pub calibration: Option<crate::scheduler::CalibrationSummary>,
    /// Git mode: where the merge train stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainSummary>,
    /// The batch budget's ledger, when the batch has one (contract 9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetView>,
}

/// A batch budget as `status` and the API show it, in US dollars.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BudgetView {
    pub cap_usd: f64,
    /// Reservations of sessions in flight.
    pub reserved_usd: f64,
    /// Actual costs of ended sessions, and the reservations of sessions
    /// lost or ended without a known cost.
    pub spent_usd: f64,
}

impl BudgetView {
    /// The ledger in dollars.
    pub fn of(spend: regatta_proto::BudgetSpend) -> BudgetView {
        use regatta_proto::batch_budget::usd;
        BudgetView {
            cap_usd: usd(spend.cap_micros),
            reserved_usd: usd(spend.reserved_micros),
            spent_usd: usd(spend.spent_micros),
        }
    }
}

/// `batch budget: $X reserved + $Y spent of $Z`, the words of "why it waits".
impl std::fmt::Display for BudgetView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let spend = regatta_proto::BudgetSpend {
            reserved_micros: regatta_proto::batch_budget::micros(self.reserved_usd),
            spent_micros: regatta_proto::batch_budget::micros(self.spent_usd),
            cap_micros: regatta_proto::batch_budget::micros(self.cap_usd),
        };
        spend.fmt(f)
    }
}

/// A merge train in a line: what `regatta status` shows of it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TrainSummary {
    pub target: String,
    /// The target's commit as the train last saw or moved it.
    pub tip: Option<String>,
    pub started: bool,
    pub landed: usize,
    pub waiting_to_land: usize,
    /// Candidates tested, passed and failed so far.
    pub tested: usize,
    pub passed: usize,
    pub failed: usize,
    /// Why it waits, when something outside it fails.
    pub waiting: Option<String>,
}

/// A shared resource as seen by the coordinator.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ResourceView {
    pub name: String,
    pub capacity: u32,
    /// Shares in use over the whole fleet (every batch).
    pub in_use: u32,
    /// This batch's units that hold a share (published or running).
    pub holders: Vec<String>,
    /// This batch's ready units that need it.
    pub waiting: Vec<String>,
}

/// A live lease, as `regatta leases` lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LeaseView {
    pub session_id: String,
    pub worker: String,
    pub batch_id: String,
    pub unit_id: String,
    pub attempt: u32,
    pub fencing: u64,
    pub expires_at_ms: i64,
    /// The semaphores held, with the weight held in each.
    pub semaphores: Vec<(String, u32)>,
}

/// What the API shows of a unit.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UnitView {
    pub id: String,
    pub state: UnitState,
    pub attempt: u32,
    pub failures: u32,
    pub reason: Option<String>,
    pub waiting_for: Option<String>,
    pub history: Vec<crate::scheduler::Attempt>,
    /// The units it depends on, as the manifest says (the dashboard lays
    /// the DAG out by them).
    #[serde(default)]
    pub depends_on: Vec<String>,
}

pub(super) fn summary(
    id: &str,
    entry: &Member<Entry>,
    usage: &BTreeMap<String, u32>,
) -> BatchSummary {
    let batch = &entry.batch;
    BatchSummary {
        id: id.to_owned(),
        name: batch.manifest.batch.clone(),
        state: batch.state,
        total: batch.units.len(),
        counts: batch
            .counts()
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (*s, *n))
            .collect(),
        created_ms: entry.extra.created_ms,
        ended_ms: entry.extra.ended_ms,
        manifest_sha256: entry.extra.manifest_sha256.clone(),
        concurrency: batch.manifest.concurrency,
        calibration: batch.calibration_summary(),
        budget: batch.budget_spend().map(BudgetView::of),
        train: entry
            .extra
            .train
            .as_ref()
            .zip(batch.manifest.git.as_ref())
            .map(|(train, git)| {
                let plan = &train.stored.plan;
                let count = |f: &dyn Fn(&regatta_git::train::CandidateState) -> bool| {
                    plan.history().iter().filter(|c| f(&c.state)).count()
                };
                use regatta_git::train::CandidateState as S;
                let passed = count(&|s| matches!(s, S::Passed | S::Landed | S::Raced { .. }));
                let failed = count(&|s| matches!(s, S::Failed { .. }));
                TrainSummary {
                    target: git.target.clone(),
                    tip: train.stored.tip.clone(),
                    started: train.stored.started,
                    landed: plan.landed_units().len(),
                    waiting_to_land: plan.waiting().len(),
                    tested: passed + failed,
                    passed,
                    failed,
                    waiting: train.stored.waiting.clone(),
                }
            }),
        resources: batch
            .manifest
            .resources
            .iter()
            .map(|(name, capacity)| {
                let needs = |u: &usize| batch.demand(*u).iter().any(|(r, _)| r == name);
                let ids = |state: UnitState| -> Vec<String> {
                    (0..batch.units.len())
                        .filter(|u| batch.units[*u].state == state && needs(u))
                        .map(|u| batch.units[u].id.clone())
                        .collect()
                };
                let mut holders = ids(UnitState::Queued);
                holders.extend(ids(UnitState::Running));
                ResourceView {
                    name: name.clone(),
                    capacity: *capacity,
                    in_use: usage.get(name).copied().unwrap_or(0),
                    holders,
                    waiting: ids(UnitState::Ready),
                }
            })
            .collect(),
    }
}

impl Service {
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
                if let Some(spend) = entry.batch.budget_spend() {
                    self.metrics.observe_batch_budget(id, spend);
                }
            }
        }
        if let Some(depth) = self.dead_letter_depth().await {
            self.metrics.dead_lettered.set(i64::from(depth));
        }
        self.scrape_worker_health().await;
        self.metrics.render()
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
                    depends_on: batch.manifest.units[u].depends_on.clone(),
                }
            })
            .collect())
    }
}
