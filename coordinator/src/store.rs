//! Batch state in Redis: the coordinator writes every change through here,
//! so the CLI, the API and a restarted coordinator read the truth.
//!
//! Writes are queued to one task that sends them in pipelines, in order; a
//! write can carry a completion signal so that an event is acked only once
//! its effect is stored.

use redis::aio::ConnectionManager;
use regatta_proto::Keys;
use tokio::sync::{mpsc, oneshot};

use crate::lock::Tenure;
use crate::Error;

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
    Release { session_id: String, fence: u64 },
    /// Signals when every write queued before it is stored.
    Flush(oneshot::Sender<()>),
    /// Runs once every write queued before it is stored: how orders are
    /// published only after the state that names them (contract 5).
    Then(Box<dyn FnOnce() + Send>),
}

/// The most fields written by one HSET, so a huge batch never blocks Redis
/// (which also serves lease renewals) for long.
const FIELDS_PER_COMMAND: usize = 1_000;

/// The sending side of the store.
#[derive(Clone)]
pub struct Store {
    sender: mpsc::UnboundedSender<Write>,
    pub keys: Keys,
    connection: ConnectionManager,
}

impl Store {
    /// Connects and starts the writer task. With a `tenure`, nothing is
    /// written while the coordinator's lock is not known to be held.
    pub async fn connect(url: &str, keys: Keys, tenure: Option<Tenure>) -> Result<Store, Error> {
        let client = redis::Client::open(url).map_err(|e| Error::redis(url, e))?;
        let connection = ConnectionManager::new(client)
            .await
            .map_err(|e| Error::redis(url, e))?;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(writer(connection.clone(), keys.clone(), receiver, tenure));
        Ok(Store {
            sender,
            keys,
            connection,
        })
    }

    pub fn write(&self, write: Write) {
        // The writer lives as long as the runtime; a closed channel means shutdown.
        let _ = self.sender.send(write);
    }

    /// Waits until every write queued so far is stored.
    pub async fn flushed(&self) {
        let (done, wait) = oneshot::channel();
        self.write(Write::Flush(done));
        let _ = wait.await;
    }

    /// A connection for reads and scripts.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }
}

async fn writer(
    mut connection: ConnectionManager,
    keys: Keys,
    mut receiver: mpsc::UnboundedReceiver<Write>,
    tenure: Option<Tenure>,
) {
    let mut batch = Vec::new();
    while receiver.recv_many(&mut batch, 512).await > 0 {
        let mut pipe = redis::pipe();
        let mut commands = 0;
        let mut flushes = Vec::new();
        let mut callbacks: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        for write in batch.drain(..) {
            match write {
                Write::Hash { key, fields } => {
                    for chunk in fields.chunks(FIELDS_PER_COMMAND) {
                        pipe.hset_multiple(&key, chunk).ignore();
                        commands += 1;
                    }
                }
                Write::IndexBatch {
                    batch_id,
                    created_ms,
                } => {
                    pipe.zadd(keys.batches(), batch_id, created_ms).ignore();
                    commands += 1;
                }
                Write::Release { session_id, fence } => {
                    pipe.cmd("EVAL")
                        .arg(regatta_proto::scripts::RELEASE)
                        .arg(3)
                        .arg(keys.leases())
                        .arg(keys.lease(&session_id))
                        .arg(keys.done(&session_id))
                        .arg(&session_id)
                        .arg(fence)
                        .ignore();
                    commands += 1;
                }
                Write::Flush(done) => flushes.push(done),
                Write::Then(callback) => callbacks.push(callback),
            }
        }
        // A coordinator whose lock renewal is overdue (paused, cut off)
        // writes nothing, and so publishes nothing, until it is renewed or
        // the lock's holder stops this process.
        if let Some(tenure) = &tenure {
            if !tenure.is_current() {
                tracing::warn!("the coordinator lock is not renewed: writes wait");
                while !tenure.is_current() {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        // Redis outages are waited out: the writes stay queued in order.
        let mut backoff = std::time::Duration::from_millis(100);
        while commands > 0 {
            match pipe.query_async::<()>(&mut connection).await {
                Ok(()) => commands = 0,
                Err(e) => {
                    tracing::warn!(error = %e, "storing batch state failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
        for callback in callbacks {
            callback();
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
