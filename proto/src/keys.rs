//! The Redis key schema, all under the fleet's namespace.
//!
//! ```text
//! {ns}:batches                      zset  batch id -> creation time (ms)
//! {ns}:batch:{b}                    hash  batch record: manifest, state, times
//! {ns}:batch:{b}:units              hash  unit id -> unit record (JSON); the lease script
//!                                         admits only the current session of a queued unit
//! {ns}:batch:{b}:sessions           hash  session id -> session record (JSON)
//! {ns}:sem:{b}                      zset  the batch's concurrency cap: holder -> expiry (ms)
//! {ns}:sem:res:{r}                  zset  a shared resource's slots: holder#k -> expiry
//! {ns}:sem:file:{path}              zset  a touched file's mutex: holder -> expiry
//! {ns}:leases                       zset  session id -> lease expiry (ms), for the reaper
//! {ns}:lease:{s}                    hash  the lease record of session s: owner, claim, fence,
//!                                         expiry, semaphores
//! {ns}:budget:{b}                   hash  the batch budget: reserved, spent, cap (micro-dollars)
//! {ns}:fence                        counter of fencing numbers
//! {ns}:done:{s}                     tombstone of a finished session (a day): 1 released, reaped, deferred
//! {ns}:capacities                   hash  resource -> capacity, shared by every batch
//! {ns}:epoch                        set by the coordinator; missing = Redis lost its data
//! {ns}:quiet                        while it lives (one lease TTL), no new lease is granted
//! {ns}:coordinator                  the instance that coordinates the namespace (renewed, with a TTL)
//! {ns}:worker:{w}                   a worker's health record (JSON, with a TTL)
//! ```

use crate::names::validate_namespace;
use crate::Error;

/// The Redis keys of one fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    ns: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Result<Self, Error> {
        validate_namespace(namespace)?;
        Ok(Keys {
            ns: namespace.to_owned(),
        })
    }

    pub fn batches(&self) -> String {
        format!("{}:batches", self.ns)
    }

    pub fn batch(&self, batch: &str) -> String {
        format!("{}:batch:{batch}", self.ns)
    }

    pub fn units(&self, batch: &str) -> String {
        format!("{}:batch:{batch}:units", self.ns)
    }

    pub fn sessions(&self, batch: &str) -> String {
        format!("{}:batch:{batch}:sessions", self.ns)
    }

    /// The semaphore of the batch's concurrency cap.
    pub fn batch_semaphore(&self, batch: &str) -> String {
        format!("{}:sem:{batch}", self.ns)
    }

    /// The semaphore of a resource; `file:` resources map to per-file mutexes,
    /// shared by every batch of the fleet, since a file is a file.
    pub fn resource_semaphore(&self, resource: &str) -> String {
        match resource.strip_prefix("file:") {
            Some(path) => format!("{}:sem:file:{path}", self.ns),
            None => format!("{}:sem:res:{resource}", self.ns),
        }
    }

    /// The batch budget's ledger: reservations in flight and settled spend
    /// (contract 9, docs/contracts.md).
    pub fn batch_budget(&self, batch: &str) -> String {
        format!("{}:budget:{batch}", self.ns)
    }

    pub fn leases(&self) -> String {
        format!("{}:leases", self.ns)
    }

    pub fn lease(&self, session: &str) -> String {
        format!("{}:lease:{session}", self.ns)
    }

    /// Held by the one coordinator of the namespace.
    pub fn coordinator(&self) -> String {
        format!("{}:coordinator", self.ns)
    }

    pub fn fence(&self) -> String {
        format!("{}:fence", self.ns)
    }

    /// Set by the coordinator: when it is missing, Redis lost its data
    /// (a restart without persistence) and no lease is granted.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.ns)
    }

    /// While it exists, no new lease is granted: holders of leases that a
    /// Redis restart forgot must notice and stop first.
    pub fn quiet(&self) -> String {
        format!("{}:quiet", self.ns)
    }

    /// The capacity of each shared resource, one for the whole fleet.
    pub fn capacities(&self) -> String {
        format!("{}:capacities", self.ns)
    }

    /// Marks a session that ran, so a duplicated order of it never runs again.
    pub fn done(&self, session: &str) -> String {
        format!("{}:done:{session}", self.ns)
    }

    /// A worker's health record, written by the worker with a TTL.
    pub fn worker(&self, worker: &str) -> String {
        format!("{}:worker:{worker}", self.ns)
    }

    /// The pattern that matches every worker's health record.
    pub fn workers(&self) -> String {
        format!("{}:worker:*", self.ns)
    }

    /// The pattern that matches every key of this namespace (for cleanup in tests).
    pub fn everything(&self) -> String {
        format!("{}:*", self.ns)
    }
}

/// Keys of the coordinator's tenure and of the fleet's control channel.
///
/// ```text
/// {ns}:coordinator:tenure           the tenure that last took the coordinator lock (no TTL)
/// {ns}:control                      pub/sub channel: `cancel {batch}`, `revoke {session}`
/// ```
impl Keys {
    /// Names the tenure (one run of one coordinator) that last took the
    /// lock; it outlives the lock, so store writes of any older tenure are
    /// refused (see `scripts::FENCED_WRITE`).
    pub fn coordinator_tenure(&self) -> String {
        format!("{}:coordinator:tenure", self.ns)
    }

    /// The pub/sub channel on which the coordinator tells workers at once
    /// what their next lease renewal would tell them later.
    pub fn control_channel(&self) -> String {
        format!("{}:control", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_namespace_and_do_not_collide() {
        let keys = Keys::new("t1").expect("valid");
        let all = [
            keys.batches(),
            keys.batch("b"),
            keys.units("b"),
            keys.sessions("b"),
            keys.batch_semaphore("b"),
            keys.resource_semaphore("orders-db"),
            keys.resource_semaphore("file:schema/a.sql"),
            keys.leases(),
            keys.lease("s"),
            keys.fence(),
            keys.batch_budget("b"),
            keys.done("s"),
            keys.capacities(),
            keys.epoch(),
            keys.quiet(),
        ];
        assert!(all.iter().all(|k| k.starts_with("t1:")));
        let unique: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        assert_eq!(
            keys.resource_semaphore("file:schema/a.sql"),
            "t1:sem:file:schema/a.sql"
        );
    }
}
