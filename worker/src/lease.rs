//! The worker's side of leases: acquire all at once, renew, release.
//!
//! The atomic logic lives in the Lua scripts of [`regatta_proto::scripts`];
//! this module only chooses the keys and reads the answers; its
//! [`Heartbeat`] keeps a session's leases renewed, and [`Releases`] gives
//! back those of finished sessions that the coordinator did not release.
//! Each script is hashed once and invoked by its SHA (`EVALSHA`, loaded
//! again only if Redis forgot it).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::Script;
use regatta_proto::{scripts, Keys, LeaseOwner, WorkOrder};

use crate::Error;

mod heartbeat;
mod release;

pub use heartbeat::{Beating, Heartbeat, StopCause};
pub use release::Releases;

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::ACQUIRE));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::RENEW));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::RELEASE));

/// The answer to an acquisition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Every lease is held; events of the session carry this fencing number.
    Held { fence: u64, expiry_ms: i64 },
    /// This semaphore is full; nothing was taken.
    Busy { semaphore: String },
    /// The session already holds a lease (a redelivered order).
    AlreadyHeld,
    /// The batch was cancelled: the order must not run.
    Cancelled,
    /// No such batch was ever enqueued: the order must not run.
    UnknownBatch,
    /// The session is not the unit's current queued session, as the
    /// coordinator stored it: a stale or replayed order that must never run.
    NotCurrent { reason: String },
    /// The session's reservation does not fit the batch budget; nothing
    /// was taken (contract 9, docs/contracts.md).
    OverBatchBudget { reason: String },
}

/// The answer to a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// Expired, reaped or taken over: the session must die.
    Lost,
    /// The batch was cancelled: the session must die.
    Cancelled,
    /// The leases were released: the session's result is with the coordinator.
    Released,
}

/// Leases of one fleet in one Redis.
#[derive(Clone)]
pub struct LeaseClient {
    connection: ConnectionManager,
    keys: Keys,
    /// When each held session's leases were last acquired or renewed, by
    /// this worker's clock: a heartbeat or a release times its first call
    /// from it instead of calling Redis at once.
    fresh: Arc<Mutex<HashMap<String, Instant>>>,
}

impl LeaseClient {
    /// Connects to Redis, waiting for one that does not answer yet for at
    /// most [`START_PATIENCE`](regatta_telemetry::backoff::START_PATIENCE);
    /// then the connection manager reconnects by itself.
    pub async fn connect(url: &str, keys: Keys) -> Result<Self, Error> {
        let redis_error = |source| Error::Redis {
            url: regatta_proto::names::redact_url(url),
            source,
        };
        let client = redis::Client::open(url).map_err(redis_error)?;
        let redis = format!("Redis at {}", regatta_proto::names::redact_url(url));
        let connection = regatta_telemetry::backoff::wait_at_start(
            &redis,
            regatta_telemetry::backoff::START_PATIENCE,
            || ConnectionManager::new(client.clone()),
        )
        .await
        .map_err(redis_error)?;
        Ok(LeaseClient {
            connection,
            keys,
            fresh: Arc::default(),
        })
    }

    /// Acquires the batch slot and every resource share of an order, all or none.
    ///
    /// `claim` names this handling of the order (one per delivery): asked
    /// again with the same owner and claim, after a reply that never came,
    /// the script answers `Held` with the lease it already granted, extended.
    /// A redelivered copy handled under another claim is refused.
    pub async fn acquire(
        &self,
        order: &WorkOrder,
        owner: &LeaseOwner,
        claim: &str,
        ttl: Duration,
    ) -> Result<Claim, Error> {
        let asked = Instant::now();
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation
            .key(self.keys.leases())
            .key(self.keys.lease(&order.session_id))
            .key(self.keys.fence())
            .key(self.keys.batch(&order.batch_id))
            .key(self.keys.done(&order.session_id))
            .key(self.keys.epoch())
            .key(self.keys.quiet())
            .key(self.keys.units(&order.batch_id))
            .key(self.keys.batch_budget(&order.batch_id))
            .arg(&order.session_id)
            .arg(ttl.as_millis() as u64)
            .arg(owner.encode())
            .arg(&order.unit_id)
            .arg(claim);
        // The batch budget's cap (0: none) and this session's reservation.
        let budget = order
            .batch_budget
            .unwrap_or(regatta_proto::BudgetReservation {
                cap_micros: 0,
                reserve_micros: 0,
            });
        invocation.arg(budget.cap_micros).arg(budget.reserve_micros);
        invocation
            .key(self.keys.batch_semaphore(&order.batch_id))
            .arg(order.leases.concurrency.max(1))
            .arg(1);
        for resource in &order.leases.resources {
            invocation
                .key(self.keys.resource_semaphore(&resource.name))
                .arg(resource.capacity)
                .arg(resource.weight);
        }
        let mut connection = self.connection.clone();
        let answer: Vec<redis::Value> = invocation.invoke_async(&mut connection).await?;
        let claim = parse_claim(&answer).ok_or_else(|| {
            Error::Config(format!("unexpected answer of the lease script: {answer:?}"))
        })?;
        if let Claim::Held { .. } = claim {
            self.refreshed(&order.session_id, asked);
        }
        Ok(claim)
    }

    /// Extends a session's leases.
    pub async fn renew(
        &self,
        batch_id: &str,
        session_id: &str,
        fence: u64,
        ttl: Duration,
    ) -> Result<Renewal, Error> {
        let mut connection = self.connection.clone();
        let asked = Instant::now();
        let expiry: i64 = RENEW
            .key(self.keys.leases())
            .key(self.keys.lease(session_id))
            .key(self.keys.batch(batch_id))
            .key(self.keys.done(session_id))
            .arg(session_id)
            .arg(ttl.as_millis() as u64)
            .arg(fence)
            .invoke_async(&mut connection)
            .await?;
        Ok(match expiry {
            e if e > 0 => {
                self.refreshed(session_id, asked);
                Renewal::Renewed
            }
            -1 => {
                self.refreshed(session_id, asked);
                Renewal::Cancelled
            }
            -2 => {
                self.forget(session_id);
                Renewal::Released
            }
            _ => {
                self.forget(session_id);
                Renewal::Lost
            }
        })
    }

    /// Gives back every slot of a session at once, unless its leases now
    /// belong to another holder of the same session (another `fence`), and
    /// settles its batch budget reservation with `actual_micros`, its cost
    /// (`None`: unknown, the reservation is spent whole).
    pub async fn release(
        &self,
        session_id: &str,
        fence: u64,
        actual_micros: Option<u64>,
    ) -> Result<(), Error> {
        self.forget(session_id);
        let mut connection = self.connection.clone();
        let _: i64 = RELEASE
            .key(self.keys.leases())
            .key(self.keys.lease(session_id))
            .key(self.keys.done(session_id))
            .arg(session_id)
            .arg(fence)
            .arg(actual_micros.map(|m| m.to_string()).unwrap_or_default())
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }
}

impl LeaseClient {
    /// Notes that a session's leases were extended by a call sent at `asked`
    /// (its TTL counts from Redis's clock during the call, so no later).
    fn refreshed(&self, session_id: &str, asked: Instant) {
        let mut fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        fresh.insert(session_id.to_owned(), asked);
    }

    /// When a session's leases were last extended; `None` when unknown
    /// (then they must be treated as due at once).
    pub fn fresh_since(&self, session_id: &str) -> Option<Instant> {
        let fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        fresh.get(session_id).copied()
    }

    /// Drops what is known of a session whose leases this worker no longer holds.
    pub fn forget(&self, session_id: &str) {
        let mut fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        fresh.remove(session_id);
    }
}

fn parse_claim(answer: &[redis::Value]) -> Option<Claim> {
    use redis::Value;
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    let text = |v: Option<&Value>| match v {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    };
    match int(answer.first())? {
        1 => Some(Claim::Held {
            fence: int(answer.get(1))?.max(0) as u64,
            expiry_ms: int(answer.get(2))?,
        }),
        0 => Some(Claim::Busy {
            semaphore: text(answer.get(1)),
        }),
        -1 => Some(Claim::AlreadyHeld),
        -2 => Some(Claim::Cancelled),
        -3 => Some(Claim::UnknownBatch),
        -4 => Some(Claim::NotCurrent {
            reason: text(answer.get(1)),
        }),
        -5 => Some(Claim::OverBatchBudget {
            reason: text(answer.get(1)),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn answers_of_the_lease_script_are_read_and_garbage_is_not() {
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            parse_claim(&[Value::Int(1), Value::Int(9), Value::Int(1_000)]),
            Some(Claim::Held {
                fence: 9,
                expiry_ms: 1_000
            })
        );
        assert_eq!(
            parse_claim(&[Value::Int(-4), text("the unit is succeeded")]),
            Some(Claim::NotCurrent {
                reason: "the unit is succeeded".into()
            })
        );
        assert_eq!(
            parse_claim(&[Value::Int(-1), text("session already ran")]),
            Some(Claim::AlreadyHeld)
        );
        assert_eq!(parse_claim(&[Value::Int(7)]), None);
        assert_eq!(parse_claim(&[]), None);
    }
}
