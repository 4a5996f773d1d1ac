//! The merge train's plan, pure: which units form the next candidate, what a
//! pass, a failure, a conflict or a race means, and the bisection that finds
//! the unit breaking a candidate.
//!
//! Nothing here does I/O. The coordinator builds the candidate, runs the
//! integration command, moves the target by compare-and-swap and tells the
//! [`Train`] what happened; it stores the whole value after every call, so a
//! coordinator killed between two calls resumes from the stored value.
//!
//! What the plan guarantees, given truthful calls: a unit joins a candidate
//! only once its dependencies have landed (or were skipped) or are earlier in
//! the same candidate; a unit lands once; the target only ever moves to a
//! candidate whose integration passed; the unit that broke integration does
//! not land, its descendants wait, the innocent units land.
//!
//! The caller makes the calls about one candidate in order (`built`,
//! `testing`, `passed` or `failed`, then `landed` or `raced`) and makes no
//! other call between a successful compare-and-swap and `landed`. A call
//! naming a candidate that is not in flight (it was abandoned, or the call is
//! a replay) changes nothing.

use serde::{Deserialize, Serialize};

mod record;

pub use record::{CandidateRecord, CandidateState, Landing, Planned, Verdict};

/// A unit's position in the manifest.
pub type UnitIx = usize;

/// The merge train of one batch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Train {
    /// Units per candidate outside a bisection: one more after each landing,
    /// half (at least one) after each failure.
    window: u32,
    /// Every unit of the batch, in the topological order given to [`Train::new`].
    units: Vec<Unit>,
    /// Every candidate planned, and every landing of a unit that changed
    /// nothing, oldest first.
    history: Vec<CandidateRecord>,
    /// The units that landed, in landing order.
    landed: Vec<UnitIx>,
    /// The candidate being built, tested or pushed; at most one at a time so
    /// that every candidate is built on the tip its predecessor left.
    in_flight: Option<u64>,
    /// The failing range being bisected, if any.
    bisection: Option<Bisection>,
    /// The units of a candidate that lost its compare-and-swap race: the next
    /// candidate plans them again, whatever the window.
    replan: Vec<UnitIx>,
    /// The id of the next history record.
    next_id: u64,
}

/// One unit of the batch as the train sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Unit {
    ix: UnitIx,
    /// Direct dependencies inside the batch.
    deps: Vec<UnitIx>,
    state: UnitState,
}

/// Where a unit stands in the train.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum UnitState {
    /// Not on offer: still running, retried, re-run on a new tip, or waiting
    /// for review.
    Absent,
    /// Succeeded with this commit; `None` when it changed nothing.
    Offered {
        commit: Option<String>,
    },
    Landed,
    /// Skipped by a person: counts as landed for its descendants.
    Skipped,
    /// Broke integration: not eligible until it is offered again.
    Culprit,
}

/// A failing range being narrowed down.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Bisection {
    /// The units under suspicion, in candidate order; each candidate of the
    /// bisection is the first half of it.
    range: Vec<UnitIx>,
    /// The tip on which tip + range is known to fail. A landed prefix
    /// carries it forward only if it was built on this very tip: then the
    /// new tip + the rest has the tree of the failed candidate.
    failing_on: Option<String>,
}

impl Train {
    /// Starts a train. `units`: every unit of the batch in a topological
    /// order, each with its direct dependencies; dependencies outside the
    /// batch are taken as already on the target. A window of 0 counts as 1.
    pub fn new(window: u32, units: Vec<(UnitIx, Vec<UnitIx>)>) -> Train {
        let known: Vec<UnitIx> = units.iter().map(|(ix, _)| *ix).collect();
        let units = units
            .into_iter()
            .map(|(ix, deps)| Unit {
                ix,
                deps: deps.into_iter().filter(|d| known.contains(d)).collect(),
                state: UnitState::Absent,
            })
            .collect();
        Train {
            window: window.max(1),
            units,
            history: Vec::new(),
            landed: Vec::new(),
            in_flight: None,
            bisection: None,
            replan: Vec::new(),
            next_id: 1,
        }
    }

    /// Offers the unit with its commit (`None`: it changed nothing; it lands
    /// without a candidate as soon as its dependencies have). Replaces an
    /// earlier offer: a different commit abandons the candidate in flight
    /// that holds the old one. Offers of landed or skipped units are ignored.
    /// Returns the units that landed because of it (changed nothing).
    pub fn offer(&mut self, unit: UnitIx, commit: Option<String>) -> Vec<UnitIx> {
        let Some(pos) = self.position(unit) else {
            return Vec::new();
        };
        match &self.units[pos].state {
            UnitState::Landed | UnitState::Skipped => return Vec::new(),
            UnitState::Offered { commit: old } if *old == commit => return Vec::new(),
            _ => {}
        }
        self.disturb(unit);
        self.units[pos].state = UnitState::Offered { commit };
        self.land_unchanged()
    }

    /// Takes the unit off offer (retried, re-run on a new tip, needs review);
    /// the candidate in flight that holds it is abandoned. Landed and
    /// skipped units stay so.
    pub fn withdraw(&mut self, unit: UnitIx) {
        let Some(pos) = self.position(unit) else {
            return;
        };
        if matches!(
            self.units[pos].state,
            UnitState::Landed | UnitState::Skipped
        ) {
            return;
        }
        self.disturb(unit);
        self.units[pos].state = UnitState::Absent;
    }

    /// Records that a person skipped the unit: it counts as landed for its
    /// descendants, without a merge. Returns the units that landed because of
    /// it (changed nothing and were waiting for it).
    pub fn skip(&mut self, unit: UnitIx) -> Vec<UnitIx> {
        let Some(pos) = self.position(unit) else {
            return Vec::new();
        };
        if matches!(
            self.units[pos].state,
            UnitState::Landed | UnitState::Skipped
        ) {
            return Vec::new();
        }
        self.disturb(unit);
        self.units[pos].state = UnitState::Skipped;
        self.land_unchanged()
    }

    /// Plans the next candidate, to build on the caller's current tip, and
    /// marks it in flight. `None` while a candidate is in flight or when no
    /// unit is eligible. In order of precedence: the first half (rounded up)
    /// of a failing range; the units of a candidate that lost a race; the
    /// first `window` eligible units in topological order.
    pub fn next_candidate(&mut self) -> Option<Planned> {
        if self.in_flight.is_some() {
            return None;
        }
        let mut bisecting = false;
        let mut units = Vec::new();
        if let Some(bisection) = &self.bisection {
            let half = bisection.range.len().div_ceil(2);
            let prefix = bisection.range[..half].to_vec();
            units = self.eligible(&prefix, usize::MAX);
            if units.len() == half && half > 0 {
                bisecting = true;
            } else {
                // Cannot happen while `disturb` guards the range; fall back
                // to planning from the pool rather than stall.
                self.bisection = None;
                units.clear();
            }
        }
        if units.is_empty() {
            let replan = std::mem::take(&mut self.replan);
            units = self.eligible(&replan, usize::MAX);
        }
        if units.is_empty() {
            let order: Vec<UnitIx> = self.units.iter().map(|u| u.ix).collect();
            units = self.eligible(&order, self.window as usize);
        }
        if units.is_empty() {
            return None;
        }
        let id = self.take_id();
        self.history.push(CandidateRecord {
            id,
            units: units.clone(),
            tip: None,
            commit: None,
            state: CandidateState::Planned,
            integration_session: None,
            bisecting,
        });
        self.in_flight = Some(id);
        Some(Planned { id, units })
    }

    /// Records that the candidate was built on `tip` as `commit`; a second
    /// build (after [`Train::rebuild`] or a replay) replaces the first.
    pub fn built(&mut self, id: u64, tip: String, commit: String) {
        if let Some(record) = self.live_mut(id) {
            if record.state != CandidateState::Passed {
                record.tip = Some(tip);
                record.commit = Some(commit);
                record.state = CandidateState::Built;
                record.integration_session = None;
            }
        }
    }

    /// Records the integration session started on the built candidate, so
    /// that a restarted coordinator knows which result to wait for.
    pub fn testing(&mut self, id: u64, session: String) {
        if let Some(record) = self.live_mut(id) {
            if matches!(
                record.state,
                CandidateState::Built | CandidateState::Testing
            ) {
                record.state = CandidateState::Testing;
                record.integration_session = Some(session);
            }
        }
    }

    /// Records that building found `unit` does not merge onto the tip: the
    /// candidate is dropped and the unit withdrawn (the caller decides
    /// between a re-run on the new tip and review).
    pub fn conflicted(&mut self, id: u64, unit: UnitIx, files: Vec<String>) {
        let Some(record) = self.live_mut(id) else {
            return;
        };
        record.state = CandidateState::Conflicted { unit, files };
        self.in_flight = None;
        self.withdraw(unit);
    }

    /// Records that integration passed on the built candidate; the caller
    /// then tries the compare-and-swap.
    pub fn passed(&mut self, id: u64, session: String) {
        if let Some(record) = self.live_mut(id) {
            if matches!(
                record.state,
                CandidateState::Built | CandidateState::Testing
            ) {
                record.state = CandidateState::Passed;
                record.integration_session = Some(session);
            }
        }
    }

    /// Records that the compare-and-swap moved the target to the passed
    /// candidate's commit: its units have landed. Outside a bisection the
    /// window grows by one.
    pub fn landed(&mut self, id: u64) -> Landing {
        let Some(record) = self.live_mut(id) else {
            return Landing::default();
        };
        if record.state != CandidateState::Passed {
            return Landing::default();
        }
        record.state = CandidateState::Landed;
        let record = record.clone();
        self.in_flight = None;
        let mut landing = Landing::default();
        for (unit, _) in &record.units {
            self.set_state(*unit, UnitState::Landed);
            self.landed.push(*unit);
            landing.units.push(*unit);
        }
        if record.bisecting {
            landing.culprit = self.narrow_after_landing(&record);
        } else {
            self.window = self.window.saturating_add(1);
        }
        landing.units.extend(self.land_unchanged());
        landing
    }

    /// Records that the compare-and-swap found the target elsewhere: the
    /// same units are planned again on the new tip (a bisection in progress
    /// restarts from its whole range, as one candidate).
    pub fn raced(&mut self, id: u64, actual_tip: Option<String>) {
        let Some(record) = self.live_mut(id) else {
            return;
        };
        record.state = CandidateState::Raced { actual: actual_tip };
        let units: Vec<UnitIx> = record.units.iter().map(|(u, _)| *u).collect();
        self.in_flight = None;
        self.replan = match self.bisection.take() {
            Some(bisection) => bisection.range,
            None => units,
        };
    }

    /// Records that integration failed on the built candidate. A one-unit
    /// candidate names its culprit; a larger one becomes the failing range
    /// whose first half (rounded up) is the next candidate. The window
    /// halves (at least 1). The culprit and its descendants are not eligible
    /// until it is offered again.
    pub fn failed(&mut self, id: u64, session: String, reason: String) -> Verdict {
        let Some(record) = self.live_mut(id) else {
            return Verdict::Stale;
        };
        if !matches!(
            record.state,
            CandidateState::Built | CandidateState::Testing
        ) {
            return Verdict::Stale;
        }
        record.state = CandidateState::Failed { reason };
        record.integration_session = Some(session);
        let range: Vec<UnitIx> = record.units.iter().map(|(u, _)| *u).collect();
        let failing_on = record.tip.clone();
        self.in_flight = None;
        self.window = (self.window / 2).max(1);
        // A failing prefix of a range is itself a failing range: the same
        // rule serves a fresh failure and a bisection step.
        if let [culprit] = range[..] {
            self.convict(culprit);
            Verdict::Culprit(culprit)
        } else {
            self.bisection = Some(Bisection { range, failing_on });
            Verdict::Bisecting
        }
    }

    /// Forgets the build of the candidate in flight but keeps its plan: the
    /// integration session was lost or the candidate must be tested again.
    pub fn rebuild(&mut self, id: u64) {
        if let Some(record) = self.live_mut(id) {
            record.state = CandidateState::Planned;
            record.tip = None;
            record.commit = None;
            record.integration_session = None;
        }
    }

    /// The candidate being built, tested or pushed.
    pub fn in_flight(&self) -> Option<&CandidateRecord> {
        let id = self.in_flight?;
        self.history.iter().rev().find(|r| r.id == id)
    }

    /// Every candidate planned, and every landing without a merge, oldest first.
    pub fn history(&self) -> &[CandidateRecord] {
        &self.history
    }

    /// The units that landed, in landing order.
    pub fn landed_units(&self) -> &[UnitIx] {
        &self.landed
    }

    /// The units on offer that have not landed, in topological order.
    pub fn waiting(&self) -> Vec<UnitIx> {
        self.units
            .iter()
            .filter(|u| matches!(u.state, UnitState::Offered { .. }))
            .map(|u| u.ix)
            .collect()
    }

    /// The units found to break integration and not offered since.
    pub fn culprits(&self) -> Vec<UnitIx> {
        self.units
            .iter()
            .filter(|u| u.state == UnitState::Culprit)
            .map(|u| u.ix)
            .collect()
    }

    /// The failing range being bisected, in candidate order.
    pub fn suspects(&self) -> Option<&[UnitIx]> {
        self.bisection.as_ref().map(|b| b.range.as_slice())
    }

    /// Units per candidate outside a bisection.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Nothing is in flight or on offer, and at least `total` units landed
    /// or were skipped (pass the number of units expected to reach the
    /// train; the batch's size asks for all of them).
    pub fn is_done(&self, total: usize) -> bool {
        let settled = self
            .units
            .iter()
            .filter(|u| matches!(u.state, UnitState::Landed | UnitState::Skipped))
            .count();
        self.in_flight.is_none() && self.waiting().is_empty() && settled >= total
    }

    fn position(&self, unit: UnitIx) -> Option<usize> {
        self.units.iter().position(|u| u.ix == unit)
    }

    fn set_state(&mut self, unit: UnitIx, state: UnitState) {
        if let Some(pos) = self.position(unit) {
            self.units[pos].state = state;
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The in-flight record, if it is candidate `id`.
    fn live_mut(&mut self, id: u64) -> Option<&mut CandidateRecord> {
        if self.in_flight != Some(id) {
            return None;
        }
        self.history.iter_mut().rev().find(|r| r.id == id)
    }

    /// Dependencies satisfied: every one landed or skipped.
    fn settled(&self, unit: UnitIx) -> bool {
        self.position(unit).is_some_and(|pos| {
            matches!(
                self.units[pos].state,
                UnitState::Landed | UnitState::Skipped
            )
        })
    }

    /// Up to `limit` of `among`, in that order, that are on offer with a
    /// commit and whose dependencies are settled or picked before them.
    fn eligible(&self, among: &[UnitIx], limit: usize) -> Vec<(UnitIx, String)> {
        let mut picked: Vec<(UnitIx, String)> = Vec::new();
        for &ix in among {
            if picked.len() >= limit {
                break;
            }
            let Some(pos) = self.position(ix) else {
                continue;
            };
            let unit = &self.units[pos];
            let UnitState::Offered {
                commit: Some(commit),
            } = &unit.state
            else {
                continue;
            };
            let ready = unit
                .deps
                .iter()
                .all(|d| self.settled(*d) || picked.iter().any(|(p, _)| p == d));
            if ready && !picked.iter().any(|(p, _)| *p == ix) {
                picked.push((ix, commit.clone()));
            }
        }
        picked
    }

    /// A change to `unit`'s offer invalidates the candidate in flight that
    /// holds it and the bisection that suspects it.
    fn disturb(&mut self, unit: UnitIx) {
        if let Some(id) = self.in_flight {
            if let Some(record) = self.live_mut(id) {
                if record.units.iter().any(|(u, _)| *u == unit) {
                    record.state = CandidateState::Abandoned { unit };
                    self.in_flight = None;
                }
            }
        }
        if self
            .bisection
            .as_ref()
            .is_some_and(|b| b.range.contains(&unit))
        {
            self.bisection = None;
        }
    }

    /// Lands every offered unit that changed nothing and whose dependencies
    /// are settled, until none is left; returns them in landing order.
    fn land_unchanged(&mut self) -> Vec<UnitIx> {
        let mut landed = Vec::new();
        loop {
            let ready = self.units.iter().position(|u| {
                u.state == UnitState::Offered { commit: None }
                    && u.deps.iter().all(|d| self.settled(*d))
            });
            let Some(pos) = ready else {
                return landed;
            };
            let unit = self.units[pos].ix;
            self.units[pos].state = UnitState::Landed;
            self.landed.push(unit);
            landed.push(unit);
            let id = self.take_id();
            self.history.push(CandidateRecord {
                id,
                units: Vec::new(),
                tip: None,
                commit: None,
                state: CandidateState::Unchanged { unit },
                integration_session: None,
                bisecting: false,
            });
        }
    }

    /// After the landed prefix of a failing range: the rest is the range.
    /// Returns the culprit when one unit is left and the rest is known to
    /// fail on the new tip.
    fn narrow_after_landing(&mut self, record: &CandidateRecord) -> Option<UnitIx> {
        let mut bisection = self.bisection.take()?;
        bisection
            .range
            .retain(|u| !record.units.iter().any(|(l, _)| l == u));
        let known = bisection.failing_on.is_some() && bisection.failing_on == record.tip;
        if !known || bisection.range.is_empty() {
            // The prefix was built on another tip: the failure may have been
            // the old tip's. The rest goes back to the pool and is tested
            // afresh.
            return None;
        }
        if let [culprit] = bisection.range[..] {
            self.convict(culprit);
            return Some(culprit);
        }
        bisection.failing_on = record.commit.clone();
        self.bisection = Some(bisection);
        None
    }

    fn convict(&mut self, unit: UnitIx) {
        self.set_state(unit, UnitState::Culprit);
        self.bisection = None;
    }
}

#[cfg(test)]
mod tests;
