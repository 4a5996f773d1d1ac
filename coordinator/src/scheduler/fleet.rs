//! The fleet: every live batch and the one resource ledger they share.
//!
//! A resource name means the same thing in every batch, so admission is a
//! fleet-wide question: each batch's units in flight hold shares of one
//! ledger. Only the fleet's operations take or give back shares
//! ([`Fleet::dispatch`], [`Fleet::report`], [`Fleet::cancel`]), so the ledger
//! always adds up to the units in flight. Pure, like the rest of the
//! scheduler: the service owns one `Fleet<Entry>` behind its lock and keeps
//! its I/O-side fields (timings, the merge train) in the payload `T`.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::ops::{Index, IndexMut};

use super::{Batch, Effects, Report};

/// Every live batch, each with its owner's payload, and the resource
/// shares their units in flight hold.
#[derive(Debug)]
pub struct Fleet<T = ()> {
    members: HashMap<String, Member<T>>,
    /// Resource shares published or running, over all batches.
    usage: BTreeMap<String, u32>,
}

/// A batch of the fleet, with what its owner keeps beside it.
#[derive(Debug)]
pub struct Member<T> {
    pub batch: Batch,
    pub extra: T,
}

/// A human's decision about a batch.
#[derive(Debug, Clone)]
pub enum Control {
    Cancel,
    Pause,
    Resume,
    Retry(String),
    RetryNeedsReview,
    Skip(String),
    Approve,
}

/// Why the fleet refused a control action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The batch or unit named does not exist: what was named.
    NotFound(String),
    /// The action does not fit the batch's or the unit's state.
    Conflict(String),
}

impl<T> Default for Fleet<T> {
    fn default() -> Self {
        Fleet {
            members: HashMap::new(),
            usage: BTreeMap::new(),
        }
    }
}

impl<T> Fleet<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch, new or restored from storage: its units in flight (a
    /// restored batch's published or running sessions) take their shares.
    /// Returns the batch's id, which must be new to the fleet (ids carry a
    /// random suffix): a batch replaced here would keep its shares.
    pub fn insert(&mut self, batch: Batch, extra: T) -> String {
        for unit in batch.in_flight_units() {
            for (resource, weight) in batch.demand(unit) {
                *self.usage.entry(resource.clone()).or_insert(0) += weight;
            }
        }
        let id = batch.id.clone();
        self.members.insert(id.clone(), Member { batch, extra });
        id
    }

    pub fn get(&self, batch_id: &str) -> Option<&Member<T>> {
        self.members.get(batch_id)
    }

    /// A batch and its payload, to change. The batch's own operations
    /// (review, landing, pause) never touch the ledger; those that do are
    /// the fleet's.
    pub fn get_mut(&mut self, batch_id: &str) -> Option<&mut Member<T>> {
        self.members.get_mut(batch_id)
    }

    pub fn batch(&self, batch_id: &str) -> Option<&Batch> {
        self.members.get(batch_id).map(|m| &m.batch)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Member<T>)> {
        self.members.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Resource shares published or running, over all batches.
    pub fn usage(&self) -> &BTreeMap<String, u32> {
        &self.usage
    }

    /// The shares of `resource` in use over the whole fleet.
    pub fn used(&self, resource: &str) -> u32 {
        self.usage.get(resource).copied().unwrap_or(0)
    }

    /// Picks the batch's ready units that fit under its cap and the fleet's
    /// free shares, in start order, and records a new attempt for each
    /// (see [`Batch::dispatch`]). Nothing for an unknown batch.
    pub fn dispatch(
        &mut self,
        batch_id: &str,
        now_ms: i64,
        new_session: &mut dyn FnMut() -> String,
    ) -> Effects {
        match self.members.get_mut(batch_id) {
            Some(member) => member.batch.dispatch(now_ms, &mut self.usage, new_session),
            None => Effects::default(),
        }
    }

    /// Applies a report about a unit's session (see [`Batch::report`]); a
    /// session that ends gives its shares back. Nothing for an unknown batch.
    pub fn report(
        &mut self,
        batch_id: &str,
        unit: usize,
        session_id: &str,
        report: Report,
    ) -> Effects {
        match self.members.get_mut(batch_id) {
            Some(member) => member
                .batch
                .report(unit, session_id, report, &mut self.usage),
            None => Effects::default(),
        }
    }

    /// Cancels a batch (see [`Batch::cancel`]): its shares are free at once.
    pub fn cancel(&mut self, batch_id: &str) -> Effects {
        match self.members.get_mut(batch_id) {
            Some(member) => member.batch.cancel(&mut self.usage),
            None => Effects::default(),
        }
    }

    /// Applies a human's decision to a batch. A refused action changes
    /// nothing.
    pub fn control(&mut self, batch_id: &str, action: &Control) -> Result<Effects, Refusal> {
        let member = self
            .members
            .get_mut(batch_id)
            .ok_or_else(|| Refusal::NotFound(format!("batch '{batch_id}'")))?;
        let batch = &mut member.batch;
        let unit_index = |batch: &Batch, unit: &str| {
            batch
                .index_of(unit)
                .ok_or_else(|| Refusal::NotFound(format!("unit '{unit}' in batch '{batch_id}'")))
        };
        let refused = |batch: &Batch, expected: &str| {
            Refusal::Conflict(format!(
                "batch '{batch_id}' is {}, not {expected}",
                batch.state.as_str()
            ))
        };
        match action {
            Control::Cancel => Ok(batch.cancel(&mut self.usage)),
            Control::Pause if batch.pause() => Ok(Effects::default()),
            Control::Pause => Err(refused(batch, "running")),
            Control::Resume if batch.resume() => Ok(Effects::default()),
            Control::Resume => Err(refused(batch, "paused")),
            Control::Approve if batch.approve() => Ok(Effects::default()),
            Control::Approve => Err(refused(batch, "calibrating or awaiting approval")),
            Control::Retry(unit) => {
                let unit = unit_index(batch, unit)?;
                batch.retry(unit).map_err(Refusal::Conflict)
            }
            Control::RetryNeedsReview => {
                let units = batch.needs_review();
                if units.is_empty() {
                    return Err(Refusal::Conflict(format!(
                        "batch '{batch_id}' has no unit in needs_review"
                    )));
                }
                let mut all = Effects::default();
                for unit in units {
                    if let Ok(effects) = batch.retry(unit) {
                        all.changed.extend(effects.changed);
                    }
                }
                Ok(all)
            }
            Control::Skip(unit) => {
                let unit = unit_index(batch, unit)?;
                batch.skip(unit).map_err(Refusal::Conflict)
            }
        }
    }

    /// Says what a ready unit waits for, for status displays; `None` for an
    /// unknown batch or a unit that waits for nothing.
    pub fn waiting_for(&self, batch_id: &str, unit: usize) -> Option<String> {
        self.members
            .get(batch_id)?
            .batch
            .waiting_for(unit, &self.usage)
    }
}

/// The batch of that id; panics if the fleet has none, like a map's index.
impl<T, Q> Index<&Q> for Fleet<T>
where
    String: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    type Output = Batch;

    fn index(&self, batch_id: &Q) -> &Batch {
        match self.members.get(batch_id) {
            Some(member) => &member.batch,
            None => panic!("the fleet has no such batch"),
        }
    }
}

impl<T, Q> IndexMut<&Q> for Fleet<T>
where
    String: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    fn index_mut(&mut self, batch_id: &Q) -> &mut Batch {
        match self.members.get_mut(batch_id) {
            Some(member) => &mut member.batch,
            None => panic!("the fleet has no such batch"),
        }
    }
}
