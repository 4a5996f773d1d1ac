//! Admission: which ready units start now, under the batch's cap, the
//! calibration's size, a worker's hand-back, the fleet's free shares of
//! every resource they need, and the batch budget. Written once for dispatch and for "what does it
//! wait for" ([`Batch::waiting_for`]).

use std::collections::BTreeMap;

use crate::manifest::FILE_RESOURCE_PREFIX;

use super::{Attempt, Batch, BatchState, Effects, UnitState};

impl Batch {
    /// The admission rule, written once for dispatch and for "what does it
    /// wait for": the first resource the unit needs that has no room for its
    /// weight now, with its use and capacity; `None` when every one fits.
    pub(super) fn full_resource(
        &self,
        unit: usize,
        fleet_usage: &BTreeMap<String, u32>,
    ) -> Option<(&str, u32, u32)> {
        self.demands[unit].iter().find_map(|(resource, weight)| {
            let used = fleet_usage.get(resource).copied().unwrap_or(0);
            let capacity = self.capacity(resource);
            (used + weight > capacity).then_some((resource.as_str(), used, capacity))
        })
    }

    /// The capacity of a resource: declared, or 1 for a touched file.
    pub fn capacity(&self, resource: &str) -> u32 {
        if resource.starts_with(FILE_RESOURCE_PREFIX) {
            1
        } else {
            self.manifest.resources.get(resource).copied().unwrap_or(1)
        }
    }

    /// Picks the ready units that fit under the batch cap and the resources'
    /// capacities, in start order, and records a new attempt for each.
    ///
    /// `fleet_usage` is the resource usage of every batch of the fleet (a
    /// resource name means the same thing in every batch), updated here.
    pub(super) fn dispatch(
        &mut self,
        now_ms: i64,
        fleet_usage: &mut BTreeMap<String, u32>,
        new_session: &mut dyn FnMut() -> String,
    ) -> Effects {
        let mut effects = Effects::default();
        let calibrating = self.state == BatchState::Calibrating;
        if self.state != BatchState::Running && !calibrating {
            return effects;
        }
        let cap = self.manifest.concurrency;
        let mut chosen = Vec::new();
        let calibration_p90 = self.calibration_p90();
        // Reservations of the units chosen so far, not yet in the ledger.
        let mut reserving = 0;
        let mut free = cap.saturating_sub(self.in_flight);
        let mut calibration_room = self
            .calibration_size()
            .unwrap_or(0)
            .saturating_sub(self.calibration_units.len());
        for &(_, unit) in &self.ready {
            if free == 0 {
                break;
            }
            // While calibrating, only the calibration units (and their
            // retries) may start.
            let new_calibration_unit = calibrating && !self.calibration_units.contains(&unit);
            if new_calibration_unit && calibration_room == 0 {
                continue;
            }
            if self
                .deferred_until
                .get(&unit)
                .is_some_and(|until| *until > now_ms)
            {
                continue;
            }
            if self.full_resource(unit, fleet_usage).is_some() {
                continue;
            }
            let reserve = self.reservation_with(unit, calibration_p90);
            if self.budget_shortfall(reserve, reserving).is_some() {
                continue;
            }
            if self.manifest.budget.is_some() {
                reserving += reserve;
            }
            for (resource, weight) in &self.demands[unit] {
                *fleet_usage.entry(resource.clone()).or_insert(0) += weight;
            }
            free -= 1;
            if new_calibration_unit {
                calibration_room -= 1;
            }
            chosen.push((unit, reserve));
        }
        if calibrating {
            for &(unit, _) in &chosen {
                if !self.calibration_units.contains(&unit) {
                    self.calibration_units.push(unit);
                }
            }
        }
        for (unit, reserve) in chosen {
            self.deferred_until.remove(&unit);
            self.set_state(unit, UnitState::Queued);
            let record = &mut self.units[unit];
            record.attempt += 1;
            record.reason = None;
            record
                .history
                .push(Attempt::published(record.attempt, new_session(), now_ms));
            self.reserve_budget(unit, reserve);
            effects.publish.push(unit);
            effects.changed.insert(unit);
        }
        effects
    }
}
