//! The worker's own health: whether its disks (the work dir and the
//! artifact store) work. A worker whose disk is broken or full would fail
//! every unit it took, spending every unit's retries on a fault that is its
//! own; instead, a session that meets such a fault is handed back uncounted
//! (see [`WORKER_FAULT`]), and the worker stops taking work until a probe
//! (create, write, fsync and remove a file in each folder) passes again.
//!
//! The state is published in Redis, `{ns}:worker:{name}` with a TTL, so the
//! coordinator can show it (`regatta status`, `/metrics`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use regatta_proto::WorkerHealth;
use tokio_util::sync::CancellationToken;

/// How a worker-side fault starts a session's reason, so a reviewer (and
/// the coordinator's listings) can tell it from the unit's own failures.
pub const WORKER_FAULT: &str = "worker fault";

/// How often an unhealthy worker probes its disks.
const PROBE_UNHEALTHY: Duration = Duration::from_secs(1);
/// How often a healthy worker probes them, to stop before taking work
/// rather than after failing a session.
const PROBE_HEALTHY: Duration = Duration::from_secs(10);
/// How often the health record is written, and (three times that) its TTL.
const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// The least time a worker stays out after a fault; it doubles with each
/// fault in a row (up to [`MAX_HOLD_OFF`]), so a disk that passes the
/// probe but still fails sessions (too small for them) does not take and
/// hand back the same units in a loop.
const MIN_HOLD_OFF: Duration = Duration::from_secs(2);
const MAX_HOLD_OFF: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct State {
    /// Why the worker takes no work; `None` when healthy.
    fault: Option<String>,
    /// Faults in a row since the last session that went through.
    faults_in_a_row: u32,
    /// Not before this, even if the probe passes.
    hold_off_until: Option<Instant>,
}

/// Shared by every slot of a worker.
pub struct Health {
    folders: Vec<PathBuf>,
    state: Mutex<State>,
    changed: tokio::sync::watch::Sender<bool>,
}

impl Health {
    /// A healthy worker whose disks are these folders.
    pub fn new(folders: Vec<PathBuf>) -> Health {
        Health {
            folders,
            state: Mutex::new(State::default()),
            changed: tokio::sync::watch::channel(true).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain data: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_healthy(&self) -> bool {
        self.lock().fault.is_none()
    }

    /// Why the worker is unhealthy, if it is.
    pub fn fault(&self) -> Option<String> {
        self.lock().fault.clone()
    }

    /// Records a worker-side fault: the worker stops taking work until its
    /// disks pass a probe again.
    pub fn record_fault(&self, reason: &str) {
        let mut state = self.lock();
        state.faults_in_a_row = state.faults_in_a_row.saturating_add(1);
        let hold_off = MIN_HOLD_OFF
            .saturating_mul(1 << state.faults_in_a_row.saturating_sub(1).min(10))
            .min(MAX_HOLD_OFF);
        state.hold_off_until = Some(Instant::now() + hold_off);
        if state.fault.is_none() {
            tracing::error!(%reason, ?hold_off, "worker fault: this worker takes no work until its disks work again");
        }
        state.fault = Some(reason.to_owned());
        drop(state);
        self.changed.send_replace(false);
    }

    /// A session went through (its evidence stored): faults in a row end.
    pub fn record_success(&self) {
        self.lock().faults_in_a_row = 0;
    }

    /// Waits until the worker is healthy; `false` if `shutdown` came first.
    pub async fn wait_healthy(&self, shutdown: &CancellationToken) -> bool {
        let mut changed = self.changed.subscribe();
        tokio::select! {
            healthy = changed.wait_for(|healthy| *healthy) => healthy.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    }

    /// Resolves when the worker becomes unhealthy (a slot waiting for work
    /// then stops consuming).
    pub async fn became_unhealthy(&self) {
        let mut changed = self.changed.subscribe();
        let _ = changed.wait_for(|healthy| !*healthy).await;
    }

    /// Probes the disks once and updates the state: a fault found marks the
    /// worker unhealthy; a passing probe after the hold-off makes it healthy.
    pub async fn probe_once(&self) {
        let folders = self.folders.clone();
        let result = tokio::task::spawn_blocking(move || probe(&folders))
            .await
            .unwrap_or_else(|e| Err(format!("the disk probe failed: {e}")));
        match result {
            Err(reason) => {
                let reason = format!("{WORKER_FAULT}: {reason}");
                let mut state = self.lock();
                if state.fault.is_none() {
                    tracing::error!(%reason, "disk probe failed: this worker takes no work until it passes");
                }
                state.fault = Some(reason);
                drop(state);
                self.changed.send_replace(false);
            }
            Ok(()) => {
                let mut state = self.lock();
                let held = state.hold_off_until.is_some_and(|t| Instant::now() < t);
                if state.fault.is_some() && !held {
                    tracing::info!(fault = ?state.fault, "disks work again: taking work");
                    state.fault = None;
                    drop(state);
                    self.changed.send_replace(true);
                }
            }
        }
    }

    /// The record to publish.
    pub fn record(&self, worker: &str, slots: usize) -> WorkerHealth {
        let fault = self.fault();
        WorkerHealth {
            worker: worker.to_owned(),
            healthy: fault.is_none(),
            reason: fault,
            slots,
            at_ms: chrono::Utc::now().timestamp_millis(),
        }
    }
}

/// Probes the worker's disks once, then keeps probing them and publishing
/// the worker's health in Redis in `tasks` until `shutdown` (the watcher
/// then removes the record, and the caller joins it).
pub async fn start(
    config: &crate::WorkerConfig,
    shutdown: &CancellationToken,
    tasks: &mut regatta_telemetry::tasks::Tasks,
) -> std::sync::Arc<Health> {
    let health = std::sync::Arc::new(Health::new(vec![
        config.work_dir.clone(),
        config.artifact_store.clone(),
    ]));
    health.probe_once().await;
    let redis = match redis::Client::open(config.redis_url.as_str()) {
        Ok(client) => ConnectionManager::new(client).await.ok(),
        Err(_) => None,
    };
    if redis.is_none() {
        tracing::warn!("cannot connect to Redis to publish this worker's health");
    }
    tasks.spawn(
        "health watcher",
        watch(
            health.clone(),
            redis,
            config.keys.worker(&config.name),
            config.name.clone(),
            config.slots,
            shutdown.clone(),
        ),
    );
    health
}

/// Probes the disks and publishes the worker's health until `shutdown`.
pub async fn watch(
    health: std::sync::Arc<Health>,
    redis: Option<ConnectionManager>,
    key: String,
    worker: String,
    slots: usize,
    shutdown: CancellationToken,
) {
    let mut last_probe: Option<Instant> = None;
    loop {
        let every = if health.is_healthy() {
            PROBE_HEALTHY
        } else {
            PROBE_UNHEALTHY
        };
        if last_probe.is_none_or(|t| t.elapsed() >= every) {
            health.probe_once().await;
            last_probe = Some(Instant::now());
        }
        if let Some(mut redis) = redis.clone() {
            let record = health.record(&worker, slots);
            if let Ok(json) = serde_json::to_string(&record) {
                let ttl = (PUBLISH_EVERY * 3).as_millis() as u64;
                let set: Result<(), _> = redis::cmd("SET")
                    .arg(&key)
                    .arg(json)
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut redis)
                    .await;
                if let Err(e) = set {
                    tracing::debug!(error = %e, "cannot publish the worker's health");
                }
            }
        }
        let pause = if health.is_healthy() {
            PUBLISH_EVERY
        } else {
            PROBE_UNHEALTHY.min(PUBLISH_EVERY)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            // A fault publishes at once.
            _ = health.became_unhealthy(), if health.is_healthy() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    if let Some(mut redis) = redis {
        let _: Result<(), _> = redis::cmd("DEL").arg(&key).query_async(&mut redis).await;
    }
}

/// Creates, writes, fsyncs and removes a small file in each folder.
pub fn probe(folders: &[PathBuf]) -> Result<(), String> {
    for folder in folders {
        probe_folder(folder)
            .map_err(|e| format!("the disk of {} does not work: {e}", folder.display()))?;
    }
    Ok(())
}

fn probe_folder(folder: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(folder)?;
    let path = folder.join(format!(
        ".regatta-probe-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        // A few KiB: a full disk refuses them even when an empty file fits.
        file.write_all(&[0u8; 4096])?;
        file.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    written?;
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_blocked_by_a_file_fails_the_probe() {
        let temp = tempfile::tempdir().unwrap();
        let blocked = temp.path().join("blocked");
        std::fs::write(&blocked, b"in the way").unwrap();
        let good = temp.path().join("good");
        let error = probe(&[good.clone(), blocked.join("store")]).unwrap_err();
        assert!(error.contains("blocked/store"), "{error}");
        probe(&[good]).unwrap();
    }

    #[tokio::test]
    async fn a_fault_holds_work_off_until_the_probe_passes() {
        let temp = tempfile::tempdir().unwrap();
        let health = Health::new(vec![temp.path().to_path_buf()]);
        assert!(health.is_healthy());
        health.record_fault("worker fault: disk full");
        assert!(!health.is_healthy());
        // The probe passes, but the hold-off is not over.
        health.probe_once().await;
        assert!(!health.is_healthy());
        health.lock().hold_off_until = None;
        health.probe_once().await;
        assert!(health.is_healthy());
    }
}
