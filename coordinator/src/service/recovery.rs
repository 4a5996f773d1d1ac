//! Recovery: reading every batch back from Redis on start, re-publishing
//! what was queued, and writing every batch back when Redis lost its data.

use std::collections::HashMap;

use regatta_proto::scripts;

use super::record::{manifest_fields, stored_manifest};
use super::{now_ms, progress_fields, Entry, Origin, Outgoing, Service, ServiceConfig};
use crate::dag::Dag;
use crate::manifest::Manifest;
use crate::order::work_order;
use crate::scheduler::{Batch, BatchState, Fleet, UnitState};
use crate::store::{Store, Write};
use crate::Error;

impl Service {
    /// Marks this Redis as holding the fleet's data. On a fresh Redis (no
    /// batch stored) that is all; if batches were restored but the marker is
    /// missing, Redis lost data meanwhile and [`Self::notice_data_loss`] acts.
    pub(super) async fn mark_epoch(&self) -> Result<(), Error> {
        let has_batches = !self.fleet().is_empty();
        if has_batches {
            self.notice_data_loss().await;
            return Ok(());
        }
        let mut connection = self.store.connection();
        let _: Option<String> = redis::cmd("SET")
            .arg(self.config.keys.epoch())
            .arg("1")
            .arg("NX")
            .query_async(&mut connection)
            .await
            .map_err(|e| Error::redis(&self.config.redis_url, e))?;
        Ok(())
    }

    /// Notices a Redis that lost its data (restarted without persistence):
    /// no lease is granted for one lease TTL, so that the holders it forgot
    /// notice and stop first, and every batch is written back from memory.
    pub(super) async fn notice_data_loss(&self) {
        let mut connection = self.store.connection();
        let lost: Result<i64, _> = redis::Script::new(scripts::NOTICE_LOSS)
            .key(self.config.keys.epoch())
            .key(self.config.keys.quiet())
            .arg(self.config.lease_ttl.as_millis() as u64)
            .invoke_async(&mut connection)
            .await;
        match lost {
            Ok(1) => {
                tracing::warn!(quiet = ?self.config.lease_ttl, "Redis lost its data: no lease is granted for one lease TTL; writing every batch back");
                self.write_back();
                let _ = self.store.flushed().await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check Redis for lost data"),
        }
    }

    /// Writes every batch's manifest, state and unit records to Redis.
    fn write_back(&self) {
        let fleet = self.fleet();
        let keys = &self.config.keys;
        for (id, entry) in fleet.iter() {
            let batch = &entry.batch;
            let mut fields = match manifest_fields(&batch.manifest) {
                Ok((fields, _)) => fields,
                Err(e) => {
                    tracing::error!(batch = %id, error = %e, "cannot write a batch back");
                    continue;
                }
            };
            fields.push(("created_ms".to_owned(), entry.extra.created_ms.to_string()));
            fields.extend(progress_fields(entry));
            // Git mode: the pinned base and the train, as stored on enqueue.
            if let Some(base) = &batch.git_base {
                fields.push(("git_base".to_owned(), base.clone()));
            }
            if let Some(train) = &entry.extra.train {
                if let Ok(json) = serde_json::to_string(&train.stored) {
                    fields.push(("train".to_owned(), json));
                }
            }
            self.store.write(Write::Hash {
                key: keys.batch(id),
                fields,
            });
            self.store.write(Write::IndexBatch {
                batch_id: id.clone(),
                created_ms: entry.extra.created_ms,
            });
            let units = batch
                .units
                .iter()
                .chain(entry.extra.train.as_ref().map(|t| &t.integration))
                .filter_map(|u| {
                    serde_json::to_string(u)
                        .ok()
                        .map(|json| (u.id.clone(), json))
                })
                .collect();
            self.store.write(Write::Hash {
                key: keys.units(id),
                fields: units,
            });
            // The batch budget's ledger (contract 9), running sessions'
            // reservations counted as spent.
            if let Some(spend) = batch.budget_after_loss() {
                self.store.write(Write::Hash {
                    key: keys.batch_budget(id),
                    fields: vec![
                        ("reserved".to_owned(), "0".to_owned()),
                        ("spent".to_owned(), spend.spent_micros.to_string()),
                        ("cap".to_owned(), spend.cap_micros.to_string()),
                    ],
                });
            }
            let capacities = batch
                .manifest
                .resources
                .iter()
                .map(|(name, capacity)| (name.clone(), capacity.to_string()))
                .collect();
            self.store.write(Write::Hash {
                key: keys.capacities(),
                fields: capacities,
            });
        }
    }

    /// Publishes again every unit that was queued when the state was stored:
    /// its order may not have reached the broker before a crash. The order
    /// keeps its session id, so if both copies exist the second is refused
    /// by its lease (the session holds one, or already ran).
    pub(super) fn republish_queued(&self) {
        let fleet = self.fleet();
        let now = now_ms();
        for (_, entry) in fleet.iter() {
            for unit in entry.batch.in_flight_units() {
                if entry.batch.units[unit].state == UnitState::Queued {
                    let order = work_order(&entry.batch, unit, now);
                    let trace = entry.batch.units[unit]
                        .current()
                        .and_then(|a| a.trace.as_ref());
                    let _ = self.publisher.send(Outgoing::new(
                        &order,
                        &self.config.signer,
                        Origin::Again(trace),
                    ));
                }
            }
            // The merge train's integration session, likewise.
            if let Some(order) = entry
                .extra
                .train
                .as_ref()
                .and_then(|t| t.queued_order(&entry.batch, now))
            {
                let trace = entry
                    .extra
                    .train
                    .as_ref()
                    .and_then(|t| t.integration.current())
                    .and_then(|a| a.trace.as_ref());
                let _ = self.publisher.send(Outgoing::new(
                    &order,
                    &self.config.signer,
                    Origin::Again(trace),
                ));
            }
        }
    }
}

/// Reads every stored batch back from Redis, so a restarted coordinator
/// resumes where it stopped without re-running succeeded units (contract 5, docs/contracts.md).
pub(super) async fn restore(store: &Store, config: &ServiceConfig) -> Result<Fleet<Entry>, Error> {
    let keys = &config.keys;
    let mut connection = store.connection();
    let redis_error = |e| Error::redis(&config.redis_url, e);
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.batches())
        .arg(0)
        .arg(-1)
        .query_async(&mut connection)
        .await
        .map_err(redis_error)?;
    let mut fleet = Fleet::new();
    for id in ids {
        let record: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.batch(&id))
            .query_async(&mut connection)
            .await
            .map_err(redis_error)?;
        let Some(manifest) =
            stored_manifest(&record).and_then(|m| serde_json::from_str::<Manifest>(&m).ok())
        else {
            tracing::warn!(batch = %id, "stored batch without a readable manifest; skipped");
            continue;
        };
        let Ok(dag) = Dag::build(&manifest) else {
            tracing::warn!(batch = %id, "stored manifest no longer builds a DAG; skipped");
            continue;
        };
        let state = record
            .get("state")
            .and_then(|s| BatchState::parse(s))
            .unwrap_or(BatchState::Running);
        let units: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.units(&id))
            .query_async(&mut connection)
            .await
            .map_err(redis_error)?;
        let mut units = units;
        let integration = units.remove(regatta_proto::INTEGRATION_UNIT);
        let records = units
            .into_iter()
            .filter_map(|(unit, json)| Some((unit, serde_json::from_str(&json).ok()?)))
            .collect();
        let manifest_sha256 = manifest.sha256();
        let mut batch = Batch::restore(id.clone(), manifest, dag, state, records);
        batch.git_base = record.get("git_base").cloned();
        let train =
            super::train_entry::TrainEntry::restore(&mut batch, &record, integration.as_deref());
        let created_ms = record
            .get("created_ms")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let ended_ms = record.get("ended_ms").and_then(|t| t.parse().ok());
        tracing::info!(batch = %id, state = state.as_str(), "batch restored");
        // Its units in flight take their shares of the fleet's ledger.
        fleet.insert(
            batch,
            Entry {
                created_ms,
                ended_ms,
                manifest_sha256,
                train,
            },
        );
    }
    Ok(fleet)
}
