//! Watches a coordinator's responsiveness while it does something heavy:
//! how long `/healthz` takes to answer, and how close its namespace lock
//! (a Redis key with a TTL, renewed every third of it) came to lapsing. A
//! coordinator whose async threads are starved shows both: the API stops
//! answering, and the renewal is late, so a standby could take over.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often both are sampled.
const EVERY: Duration = Duration::from_millis(100);

/// What the watch saw.
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    /// The slowest `/healthz` answer (a request that got none counts until
    /// the watch stopped).
    pub worst_healthz: Duration,
    /// `/healthz` requests made.
    pub healthz_samples: usize,
    /// `/healthz` requests that got no `200 OK` (refused, broken).
    pub healthz_failures: usize,
    /// The lowest PTTL of the lock key seen, in ms: -2 means the key was
    /// gone (the lock lapsed), -1 that it had no TTL.
    pub min_lock_pttl_ms: i64,
    /// PTTL reads made.
    pub lock_samples: usize,
    /// The slowest PTTL answer: how long Redis (which also serves the
    /// workers' lease renewals) was kept busy at most.
    pub worst_redis: Duration,
}

impl Stall {
    /// True when the lock key was ever seen missing or without a TTL.
    pub fn lock_lapsed(&self) -> bool {
        self.min_lock_pttl_ms < 0
    }
}

/// A running watch; [`Watch::stop`] ends it and says what it saw.
pub struct Watch {
    stop: watch::Sender<bool>,
    healthz: JoinHandle<(Duration, usize, usize)>,
    lock: JoinHandle<(i64, usize, Duration)>,
}

impl Watch {
    /// Watches the coordinator of `fleet`: its API and its namespace lock.
    pub async fn coordinator(fleet: &crate::Fleet) -> Watch {
        let lock_key = regatta_proto::Keys::new(&fleet.namespace)
            .expect("the fleet's namespace is valid")
            .coordinator();
        Watch::start(&fleet.api, &lock_key).await
    }

    /// Starts polling `{api}/healthz` and the PTTL of `lock_key`, each every
    /// 100 ms, one request at a time.
    pub async fn start(api: &str, lock_key: &str) -> Watch {
        let (stop, stopped) = watch::channel(false);
        let url = format!("{api}/healthz");
        let healthz = tokio::spawn(poll_healthz(url, Stopped(stopped.clone())));
        // Never times out, so the slowest answer is Redis's own (the
        // default connection gives up after 500 ms).
        let patient = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let redis = redis::Client::open(crate::redis_url())
            .expect("Redis URL")
            .get_multiplexed_async_connection_with_config(&patient)
            .await
            .expect("connect to Redis");
        let lock = tokio::spawn(poll_pttl(redis, lock_key.to_owned(), Stopped(stopped)));
        Watch {
            stop,
            healthz,
            lock,
        }
    }

    pub async fn stop(self) -> Stall {
        let _ = self.stop.send(true);
        let (worst_healthz, healthz_samples, healthz_failures) =
            self.healthz.await.unwrap_or_default();
        let (min_lock_pttl_ms, lock_samples, worst_redis) =
            self.lock.await.unwrap_or((i64::MIN, 0, Duration::ZERO));
        Stall {
            worst_healthz,
            healthz_samples,
            healthz_failures,
            min_lock_pttl_ms,
            lock_samples,
            worst_redis,
        }
    }
}

async fn poll_healthz(url: String, mut stop: Stopped) -> (Duration, usize, usize) {
    let http = reqwest::Client::new();
    let (mut worst, mut samples, mut failures) = (Duration::ZERO, 0, 0);
    while !stop.now() {
        let asked = Instant::now();
        tokio::select! {
            answer = http.get(&url).send() => {
                if !answer.is_ok_and(|a| a.status().is_success()) {
                    failures += 1;
                }
            }
            // An answer still awaited when the watch stops counts as slow as that.
            _ = stop.wait() => {}
        }
        worst = worst.max(asked.elapsed());
        samples += 1;
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.wait() => {}
        }
    }
    (worst, samples, failures)
}

async fn poll_pttl(
    mut redis: redis::aio::MultiplexedConnection,
    key: String,
    mut stop: Stopped,
) -> (i64, usize, Duration) {
    let (mut lowest, mut samples, mut worst) = (i64::MAX, 0, Duration::ZERO);
    while !stop.now() {
        let asked = Instant::now();
        let pttl: redis::RedisResult<i64> =
            redis::cmd("PTTL").arg(&key).query_async(&mut redis).await;
        worst = worst.max(asked.elapsed());
        if let Ok(pttl) = pttl {
            lowest = lowest.min(pttl);
            samples += 1;
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.wait() => {}
        }
    }
    (lowest, samples, worst)
}

/// The pollers' view of [`Watch::stop`].
struct Stopped(watch::Receiver<bool>);

impl Stopped {
    fn now(&self) -> bool {
        *self.0.borrow()
    }

    async fn wait(&mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}
