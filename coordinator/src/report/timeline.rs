//! The timeline: every session over the workers' slots, split into the
//! time it waited and the time it ran (command, then gates), the merge
//! train's integration sessions, and the critical path as it ran beside the
//! one `regatta plan` predicted.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Input;
use crate::dag::Dag;
use crate::plan::Plan;
use crate::scheduler::Attempt;

/// Every session, laid out for a Gantt chart.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Timeline {
    /// The first publish and the last end, in ms since the epoch.
    pub start_ms: i64,
    pub end_ms: i64,
    /// Lanes: a worker's sessions that overlapped take one lane each.
    pub lanes: Vec<Lane>,
    pub bars: Vec<Bar>,
    pub critical_path: CriticalPaths,
}

/// One row of the chart: a worker's slot.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Lane {
    pub worker: String,
    pub slot: usize,
}

/// One session.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bar {
    /// Index into [`Timeline::lanes`].
    pub lane: usize,
    /// The unit, or `@integration` for a merge candidate's test.
    pub unit: String,
    pub session_id: String,
    pub attempt: u32,
    pub outcome: String,
    pub published_ms: i64,
    pub started_ms: i64,
    pub ended_ms: i64,
    /// Of the run, the time its gates (and their repairs) took.
    pub gates_ms: u64,
    pub repairs: u32,
}

impl Bar {
    /// From publish to start: the queue and the leases.
    pub fn wait_ms(&self) -> u64 {
        (self.started_ms - self.published_ms).max(0) as u64
    }

    /// From start to end, gates included.
    pub fn run_ms(&self) -> u64 {
        (self.ended_ms - self.started_ms).max(0) as u64
    }
}

/// The critical path predicted (by timeouts) and as it ran (by ends).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct CriticalPaths {
    /// `regatta plan`'s: the chain with the largest summed timeout.
    pub planned: Vec<String>,
    /// The chain that ended last: the last unit to end, then its dependency
    /// that ended last, and so on.
    pub actual: Vec<String>,
    /// From the first publish of the actual path's first unit to the end of
    /// its last, in ms.
    pub actual_ms: u64,
}

impl Timeline {
    pub fn build(input: &Input) -> Timeline {
        let mut sessions: Vec<(&str, &Attempt)> = Vec::new();
        for unit in &input.units {
            sessions.extend(unit.history.iter().map(|a| (unit.id.as_str(), a)));
        }
        if let Some(train) = &input.train {
            sessions.extend(
                train
                    .integration_sessions
                    .iter()
                    .map(|a| (regatta_proto::INTEGRATION_UNIT, a)),
            );
        }
        // Only sessions that ran have a place on the chart.
        let mut ran: Vec<(&str, &Attempt, i64, i64)> = sessions
            .into_iter()
            .filter_map(|(unit, a)| Some((unit, a, a.started_at_ms?, a.ended_at_ms?)))
            .collect();
        ran.sort_by_key(|(_, _, start, _)| *start);
        let mut lanes: Vec<Lane> = Vec::new();
        // Per worker: the end of each of its lanes so far.
        let mut ends: BTreeMap<String, Vec<(usize, i64)>> = BTreeMap::new();
        let mut bars = Vec::with_capacity(ran.len());
        for (unit, attempt, start, end) in ran {
            let worker = attempt.worker.clone().unwrap_or_else(|| "?".into());
            let worker_lanes = ends.entry(worker.clone()).or_default();
            let lane = match worker_lanes.iter_mut().find(|(_, until)| *until <= start) {
                Some((lane, until)) => {
                    *until = end;
                    *lane
                }
                None => {
                    lanes.push(Lane {
                        worker: worker.clone(),
                        slot: worker_lanes.len(),
                    });
                    worker_lanes.push((lanes.len() - 1, end));
                    lanes.len() - 1
                }
            };
            bars.push(Bar {
                lane,
                unit: unit.to_owned(),
                session_id: attempt.session_id.clone(),
                attempt: attempt.attempt,
                outcome: attempt
                    .outcome
                    .map(|o| o.as_str().to_owned())
                    .unwrap_or_else(|| "running".into()),
                published_ms: attempt.published_at_ms.min(start),
                started_ms: start,
                ended_ms: end.max(start),
                gates_ms: attempt.gates.iter().map(|g| g.duration_ms).sum(),
                repairs: attempt.gates.iter().map(|g| g.repairs).sum(),
            });
        }
        Timeline {
            start_ms: bars.iter().map(|b| b.published_ms).min().unwrap_or(0),
            end_ms: bars.iter().map(|b| b.ended_ms).max().unwrap_or(0),
            lanes,
            bars,
            critical_path: critical_paths(input),
        }
    }
}

fn critical_paths(input: &Input) -> CriticalPaths {
    let Some(manifest) = &input.manifest else {
        return CriticalPaths::default();
    };
    let Ok(dag) = Dag::build(manifest) else {
        return CriticalPaths::default();
    };
    let planned = Plan::of(manifest, &dag).critical_path.units;
    // Each unit's span, by the manifest's order (the DAG's node index).
    let spans: Vec<Option<(i64, i64)>> = manifest
        .units
        .iter()
        .map(|spec| {
            let unit = input.units.iter().find(|u| u.id == spec.id)?;
            let first = unit.history.first()?.published_at_ms;
            let last = unit.history.iter().filter_map(|a| a.ended_at_ms).max()?;
            Some((first, last))
        })
        .collect();
    let end_of = |u: usize| spans[u].map(|(_, end)| end);
    let Some(mut at) = (0..spans.len())
        .filter(|&u| end_of(u).is_some())
        .max_by_key(|&u| end_of(u))
    else {
        return CriticalPaths {
            planned,
            ..CriticalPaths::default()
        };
    };
    let mut actual = vec![at];
    while let Some(previous) = dag
        .dependencies(at)
        .filter(|&d| end_of(d).is_some())
        .max_by_key(|&d| end_of(d))
    {
        actual.push(previous);
        at = previous;
    }
    actual.reverse();
    let actual_ms = match (
        actual.first().and_then(|&u| spans[u]),
        actual.last().and_then(|&u| spans[u]),
    ) {
        (Some((start, _)), Some((_, end))) => (end - start).max(0) as u64,
        _ => 0,
    };
    CriticalPaths {
        planned,
        actual: actual
            .into_iter()
            .map(|u| manifest.units[u].id.clone())
            .collect(),
        actual_ms,
    }
}
