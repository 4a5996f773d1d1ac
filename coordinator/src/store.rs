//! Batch state in Redis: the coordinator writes every change through here,
//! so the CLI, the API and a restarted coordinator read the truth.
//!
//! Writes are queued to one task, the `writer`, that sends them in order;
//! a write can carry a completion signal so that an event is acked only once
//! its effect is stored. Reads and the few direct commands (capacity claims,
//! lease listing) are methods of [`Store`].
//!
//! Every write is fenced in Redis itself: it is sent as one Lua script
//! ([`scripts::FENCED_WRITE`]) that first checks that the coordinator lock
//! still names this coordinator's tenure, then applies it. A coordinator
//! that believed it held the lock when it sent a write, but whose request
//! stalled on the network while another took over, is refused: it stops,
//! and never retries.
//!
//! A write Redis refuses for good (an error reply: a key of the wrong type, a
//! value over its bulk limit, no memory left) is not retried either: it
//! fails alone, with its reason, and the writes after it go on. Outages
//! (connection and I/O errors) are waited out, the writes kept in order.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RetryMethod};
use regatta_proto::{scripts, Keys, Notice};
use regatta_telemetry::tasks::Tasks;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::lock::Tenure;
use crate::Error;

mod budget;
mod writer;

use budget::largest_value;
use writer::{Writer, WRITE_TIMEOUT};

/// One change to store.
pub enum Write {
    /// Set fields of a hash.
    Hash {
        key: String,
        fields: Vec<(String, String)>,
    },
    /// Add a batch to the index of batches.
    IndexBatch { batch_id: String, created_ms: i64 },
    /// Frees a finished session's leases (idempotent), so that a unit the
    /// coordinator publishes next finds them free even before the worker's
    /// own release, which waits for the coordinator to hold the result.
    /// It settles the session's batch budget reservation at
    /// `actual_micros` (`None`: unknown, spent whole; contract 9).
    Release {
        session_id: String,
        fence: u64,
        actual_micros: Option<u64>,
    },
    /// Drops a batch that could not be stored whole: its records and its
    /// place in the index, so that nothing of it is left half-stored.
    Forget { batch_id: String },
    /// Tells the workers at once (pub/sub) what their next lease renewal
    /// would tell them, once every write queued before it is stored.
    Notify(Notice),
    /// Signals when every write queued before it is stored (or refused),
    /// with who holds the lock if this coordinator lost it (its writes are
    /// refused from then on).
    Flush(oneshot::Sender<Option<String>>),
    /// Runs once every write queued before it is stored: how orders are
    /// published only after the state that names them (contract 5, docs/contracts.md). It does
    /// not run if a write queued since the previous `Then` or `Flush` was
    /// refused: the orders would name state Redis does not hold.
    Then(Box<dyn FnOnce() + Send>),
    /// Stores these writes and answers whether every one was stored, so
    /// that a request can fail with Redis's reason.
    Checked {
        writes: Vec<Write>,
        done: oneshot::Sender<Result<(), Error>>,
    },
}

/// The sending side of the store.
#[derive(Clone)]
pub struct Store {
    sender: mpsc::UnboundedSender<Write>,
    pub keys: Keys,
    connection: ConnectionManager,
}

impl Store {
    /// Connects and starts the writer task in `tasks`; it stores what is
    /// queued and ends after `shutdown`. With a `tenure`, nothing is
    /// written while the coordinator's lock is not known to be held, and
    /// Redis refuses every write once another tenure holds it.
    /// A Redis that does not answer yet is waited for, with logged retries,
    /// for at most [`START_PATIENCE`](regatta_telemetry::backoff::START_PATIENCE).
    pub async fn connect(
        url: &str,
        keys: Keys,
        tenure: Option<Tenure>,
        shutdown: &CancellationToken,
        tasks: &mut Tasks,
    ) -> Result<Store, Error> {
        let client = redis::Client::open(url).map_err(|e| Error::redis(url, e))?;
        let redis = format!("Redis at {}", regatta_proto::names::redact_url(url));
        let connection = regatta_telemetry::backoff::wait_at_start(
            &redis,
            regatta_telemetry::backoff::START_PATIENCE,
            || ConnectionManager::new(client.clone()),
        )
        .await
        .map_err(|e| Error::redis(url, e))?;
        // The writer's own connection waits longer for an answer: storing a
        // manifest of hundreds of MB takes seconds, and a write that timed
        // out would be sent again, and time out again, forever.
        let patient = ConnectionManagerConfig::new().set_response_timeout(Some(WRITE_TIMEOUT));
        let mut writer_connection = ConnectionManager::new_with_config(client, patient)
            .await
            .map_err(|e| Error::redis(url, e))?;
        let largest_value = largest_value(&mut writer_connection).await;
        let (sender, receiver) = mpsc::unbounded_channel();
        Writer::spawn(
            writer_connection,
            largest_value,
            keys.clone(),
            tenure,
            receiver,
            shutdown.clone(),
            tasks,
        );
        Ok(Store {
            sender,
            keys,
            connection,
        })
    }

    pub fn write(&self, write: Write) {
        // The writer lives until shutdown; a closed channel means it is over.
        let _ = self.sender.send(write);
    }

    /// Waits until every write queued so far is stored; an error when this
    /// coordinator lost its lock (Redis refused its writes as another
    /// tenure's) or its writer stopped, so that a request is never answered
    /// as done when what it changed was not stored.
    pub async fn flushed(&self) -> Result<(), Error> {
        let (done, wait) = oneshot::channel();
        self.write(Write::Flush(done));
        match wait.await {
            Ok(None) => Ok(()),
            Ok(Some(holder)) => Err(Error::LockLost(holder)),
            Err(_) => Err(Error::LockLost("the store's writer stopped".into())),
        }
    }

    /// Stores `writes` after every write queued so far, and says whether
    /// Redis took every one of them.
    pub async fn store(&self, writes: Vec<Write>) -> Result<(), Error> {
        let (done, wait) = oneshot::channel();
        self.write(Write::Checked { writes, done });
        wait.await
            .map_err(|_| Error::LockLost("the store's writer stopped".into()))?
    }

    /// A connection for reads and scripts.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Records each resource's capacity the first time any batch names it
    /// (a resource is one semaphore for the whole fleet), and returns the
    /// first one the fleet already knows with another capacity:
    /// `(resource, recorded, asked)`.
    pub async fn claim_capacities(
        &self,
        resources: &std::collections::BTreeMap<String, u32>,
    ) -> Result<Option<(String, u32, u32)>, redis::RedisError> {
        let mut connection = self.connection();
        let key = self.keys.capacities();
        for (resource, capacity) in resources {
            let _: bool = redis::cmd("HSETNX")
                .arg(&key)
                .arg(resource)
                .arg(capacity)
                .query_async(&mut connection)
                .await?;
            let recorded: Option<u32> = redis::cmd("HGET")
                .arg(&key)
                .arg(resource)
                .query_async(&mut connection)
                .await?;
            if let Some(recorded) = recorded.filter(|r| r != capacity) {
                return Ok(Some((resource.clone(), recorded, *capacity)));
            }
        }
        Ok(None)
    }

    /// Every live lease: its session, expiry (ms) and record, as the lease
    /// scripts keep them.
    pub async fn leases(
        &self,
    ) -> Result<Vec<(String, i64, std::collections::HashMap<String, String>)>, redis::RedisError>
    {
        let mut connection = self.connection();
        let sessions: Vec<(String, i64)> = redis::cmd("ZRANGE")
            .arg(self.keys.leases())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut connection)
            .await?;
        let mut leases = Vec::with_capacity(sessions.len());
        for (session_id, expires_at_ms) in sessions {
            let record = redis::cmd("HGETALL")
                .arg(self.keys.lease(&session_id))
                .query_async(&mut connection)
                .await?;
            leases.push((session_id, expires_at_ms, record));
        }
        Ok(leases)
    }
}
