//! The fleet's workers as they describe themselves: each writes its health
//! record in Redis with a TTL (see `regatta_proto::health`), so the list
//! holds the live workers and says which take no work, and why.

use regatta_proto::WorkerHealth;

use super::Service;
use crate::metrics::WorkerLabels;
use crate::Error;

impl Service {
    /// Every live worker's health record, by name.
    pub async fn workers(&self) -> Result<Vec<WorkerHealth>, Error> {
        let mut connection = self.store.connection();
        let redis_error = |e| Error::redis(&self.config.redis_url, e);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.config.keys.workers())
                .arg("COUNT")
                .arg(500)
                .query_async(&mut connection)
                .await
                .map_err(redis_error)?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .map_err(redis_error)?;
        let mut workers: Vec<WorkerHealth> = records
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect();
        workers.sort_by(|a, b| a.worker.cmp(&b.worker));
        Ok(workers)
    }

    /// Sets the worker health gauge at scrape time: 1 per live worker,
    /// labelled healthy or not. Workers gone since the last scrape drop out.
    pub(super) async fn scrape_worker_health(&self) {
        let Ok(workers) = self.workers().await else {
            return;
        };
        self.metrics.workers.clear();
        for worker in workers {
            let labels = WorkerLabels {
                worker: worker.worker,
                healthy: worker.healthy.to_string(),
            };
            self.metrics.workers.get_or_create(&labels).set(1);
        }
    }
}
