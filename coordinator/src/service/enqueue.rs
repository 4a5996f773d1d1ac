//! Enqueue: a manifest checked again, its resources' capacities claimed for
//! the fleet, its git base pinned, the batch stored and then joined to the
//! fleet, which publishes what can start. Everything that grows with the
//! manifest runs off the async threads and outside the fleet's lock.

use super::*;

impl Service {
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
        let train = train_entry::TrainEntry::new(&batch);
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
