//! One coordinator per namespace. Two would both publish every ready unit
//! and each count resources as if alone, so the second to start waits in
//! [`CoordinatorLock::acquire`] until the first is gone.
//!
//! The lock is a Redis key holding the instance's id, renewed every third of
//! its TTL. An instance is named by its host and API address (or
//! `--instance`), so a coordinator that crashes and restarts in place takes
//! its own lock back at once, while a different one waits for the TTL to
//! run out. A coordinator that finds another instance holding its lock (it
//! was paused past the TTL), or that could not renew it for most of the TTL
//! (cut off from Redis), stops: another may hold it by then.
//!
//! Each run of a coordinator is a [`Tenure`] with an id of its own that the
//! lock records in Redis (`Keys::coordinator_tenure`); the store's writes are
//! fenced by it in Redis itself, so a write that was sent in time but lands
//! late (stalled on the network) after another took over is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use regatta_proto::{scripts, Keys};
use tokio_util::sync::CancellationToken;

use crate::Error;

/// The held lock of one namespace.
pub struct CoordinatorLock {
    connection: ConnectionManager,
    key: String,
    /// Names the tenure holding the lock; outlives the lock.
    tenure_key: String,
    instance: String,
    ttl: Duration,
    tenure: Tenure,
}

/// Whether this coordinator may still write: its lock was renewed recently
/// enough that no other coordinator can hold it yet. The store checks it
/// before every write, so a coordinator that wakes from a pause, or comes
/// back from a partition, writes nothing before it learns its fate.
///
/// A tenure also names this run of the coordinator (`id`): the lock records
/// it in Redis, and every store write is fenced by it there
/// (`scripts::FENCED_WRITE`), since a write may be sent while the tenure is
/// current yet land, stalled on the network, after another took over.
#[derive(Clone, Debug)]
pub struct Tenure {
    start: std::time::Instant,
    /// Milliseconds from `start` to the last successful renewal.
    renewed_ms: Arc<AtomicU64>,
    /// How long after a renewal writes stay allowed.
    valid_for: Duration,
    /// The lock's TTL.
    pub ttl: Duration,
    /// The name the lock holds.
    pub instance: String,
    /// This run's own id, unique across runs of the same instance.
    pub id: String,
    /// Cancelled by the store when Redis refuses a write as another
    /// tenure's: the lock holder then stops at once.
    deposed: CancellationToken,
}

impl Tenure {
    /// A tenure for a lock of `ttl`, counted as renewed when it is made,
    /// with a fresh id (an instance named after it, for tests and tools).
    pub fn new(ttl: Duration) -> Tenure {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Tenure::named(&id, ttl)
    }

    /// A fresh tenure of `instance`.
    pub fn named(instance: &str, ttl: Duration) -> Tenure {
        Tenure {
            start: std::time::Instant::now(),
            renewed_ms: Arc::new(AtomicU64::new(0)),
            valid_for: ttl * 2 / 3,
            ttl,
            instance: instance.to_owned(),
            id: format!("{instance}#{}", uuid::Uuid::new_v4().simple()),
            deposed: CancellationToken::new(),
        }
    }

    /// Records a successful renewal, now.
    pub fn renewed(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.renewed_ms.store(now, Ordering::SeqCst);
    }

    /// True while the last renewal is recent enough.
    pub fn is_current(&self) -> bool {
        let since = (self.start.elapsed().as_millis() as u64)
            .saturating_sub(self.renewed_ms.load(Ordering::SeqCst));
        Duration::from_millis(since) < self.valid_for
    }

    /// Redis refused a write of this tenure: another holds the lock.
    pub fn depose(&self) {
        self.deposed.cancel();
    }

    /// True once Redis refused a write of this tenure.
    pub fn is_deposed(&self) -> bool {
        self.deposed.is_cancelled()
    }
}

/// Who holds a lock, and for how much longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub instance: String,
    pub remaining_ms: i64,
}

/// Why a coordinator no longer holds its lock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Loss {
    /// Another instance holds it now.
    #[error("coordinator '{}' holds it now", .0.instance)]
    TakenBy(Holder),
    /// Renewals failed for most of the TTL (Redis unreachable, or this
    /// process paused): another coordinator may take it any moment, so this
    /// one must stop before it writes or publishes anything more.
    #[error("not renewed for {0:?}, most of its TTL")]
    Unrenewed(Duration),
    /// Redis refused a store write of this coordinator: another tenure
    /// holds the lock (this one was stalled or paused meanwhile).
    #[error("Redis refused a write of this coordinator: another coordinator holds the namespace")]
    Fenced,
}

impl CoordinatorLock {
    /// Takes the namespace's lock, waiting (and saying for whom) while another
    /// instance holds it, and for at most
    /// [`START_PATIENCE`](regatta_telemetry::backoff::START_PATIENCE) while
    /// Redis does not answer yet. `None` if `shutdown` comes first.
    pub async fn acquire(
        redis_url: &str,
        keys: &Keys,
        instance: &str,
        ttl: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<CoordinatorLock>, Error> {
        let client = redis::Client::open(redis_url).map_err(|e| Error::redis(redis_url, e))?;
        // The first thing `serve` reaches: a Redis still starting is waited for.
        let redis = format!("Redis at {}", regatta_proto::names::redact_url(redis_url));
        let connection = regatta_telemetry::backoff::wait_at_start(
            &redis,
            regatta_telemetry::backoff::START_PATIENCE,
            || ConnectionManager::new(client.clone()),
        )
        .await
        .map_err(|e| Error::redis(redis_url, e))?;
        let mut lock = CoordinatorLock {
            connection,
            key: keys.coordinator(),
            tenure_key: keys.coordinator_tenure(),
            instance: instance.to_owned(),
            ttl,
            tenure: Tenure::named(instance, ttl),
        };
        let mut told = None;
        loop {
            match lock.hold_once(scripts::TAKE_COORDINATOR).await {
                Ok(None) => {
                    lock.tenure.renewed();
                    return Ok(Some(lock));
                }
                Ok(Some(holder)) => {
                    if told.as_ref() != Some(&holder.instance) {
                        tracing::warn!(
                            holder = %holder.instance,
                            expires_in_ms = holder.remaining_ms,
                            "another coordinator holds this namespace; waiting until it stops (or its lock expires)"
                        );
                        told = Some(holder.instance);
                    }
                }
                // Redis away at start: wait for it like everything else.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach Redis for the coordinator lock; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(ttl / 3) => {}
                _ = shutdown.cancelled() => return Ok(None),
            }
        }
    }

    /// Renews the lock until `shutdown`, then lets it go. Returns why the
    /// lock was lost, if it was: the caller must stop at once.
    pub async fn hold(mut self, shutdown: CancellationToken) -> Option<Loss> {
        let mut interval = tokio::time::interval(self.ttl / 3);
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.tenure.deposed.cancelled() => return Some(Loss::Fenced),
                _ = shutdown.cancelled() => {
                    let _: Result<i64, _> = redis::Script::new(scripts::LET_GO_TENURE)
                        .key(&self.key)
                        .key(&self.tenure_key)
                        .arg(&self.instance)
                        .arg(&self.tenure.id)
                        .invoke_async(&mut self.connection)
                        .await;
                    return None;
                }
            }
            match self.hold_once(scripts::RENEW_COORDINATOR).await {
                Ok(None) => {
                    renewed = tokio::time::Instant::now();
                    self.tenure.renewed();
                }
                Ok(Some(other)) => return Some(Loss::TakenBy(other)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the coordinator lock; retrying");
                    let silent = renewed.elapsed();
                    if silent > self.ttl * 2 / 3 {
                        return Some(Loss::Unrenewed(silent));
                    }
                }
            }
        }
    }

    /// What the store checks before each write.
    pub fn tenure(&self) -> Tenure {
        self.tenure.clone()
    }

    /// One attempt of `script` (take or renew): `None` when this tenure
    /// holds the lock now.
    async fn hold_once(&mut self, script: &str) -> redis::RedisResult<Option<Holder>> {
        let (held, instance, remaining_ms): (i64, String, i64) = redis::Script::new(script)
            .key(&self.key)
            .key(&self.tenure_key)
            .arg(&self.instance)
            .arg(&self.tenure.id)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.connection)
            .await?;
        Ok((held != 1).then_some(Holder {
            instance,
            remaining_ms,
        }))
    }
}

/// The default instance name: this host and the API's bound address, the
/// same across a restart in place (same host, same port), different for any
/// other coordinator.
pub fn default_instance(listen: &str) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}/{listen}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenure_is_current_only_shortly_after_a_renewal() {
        let tenure = Tenure::new(Duration::from_millis(300));
        tenure.renewed();
        assert!(tenure.is_current());
        std::thread::sleep(Duration::from_millis(250));
        assert!(!tenure.is_current(), "two thirds of the TTL passed");
        tenure.renewed();
        assert!(tenure.is_current());
    }

    #[test]
    fn the_default_instance_names_host_and_port() {
        let name = default_instance("127.0.0.1:7700");
        assert!(name.ends_with("/127.0.0.1:7700"), "{name}");
        assert_ne!(name, default_instance("127.0.0.1:7701"));
    }
}
