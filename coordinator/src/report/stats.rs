//! Distributions: how long each phase took (p50, p90, p99), the slowest
//! units, how busy the fleet was over time, and what each gate cost.

use std::collections::BTreeMap;

use serde::Serialize;

use super::quantile;
use crate::service::UnitView;

/// How many buckets the utilisation over time has.
const UTILISATION_BUCKETS: usize = 60;

/// The figures of a batch's sessions.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Stats {
    /// `wait` (publish to start), `command`, `gates`, `session` (start to end).
    pub phases: Vec<Phase>,
    /// The ten units whose sessions ran longest, summed over attempts.
    pub slowest: Vec<(String, u64)>,
    /// Sessions running at once, over the batch's span in equal buckets.
    pub utilisation: Vec<u32>,
    /// Per gate: sessions it ran in, repairs, failures.
    pub gates: Vec<GateFigures>,
    /// Attempts that used up a retry, and the units that needed one.
    pub retries: usize,
    pub retried_units: usize,
    /// Sessions that succeeded, and their run times sorted (for tuning).
    #[serde(skip)]
    pub succeeded_runs_ms: Vec<u64>,
    /// Sessions that ran out of time.
    pub timed_out: usize,
}

/// One phase's distribution, in ms.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Phase {
    pub phase: String,
    pub count: usize,
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
    /// A histogram: counts in ten buckets from 0 to `max`.
    pub histogram: Vec<u32>,
}

/// What one gate cost.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GateFigures {
    pub gate: String,
    pub sessions: usize,
    pub repairs: u32,
    pub failures: usize,
    /// Sessions it passed only after a repair.
    pub repaired: usize,
}

impl Stats {
    pub fn build(units: &[UnitView]) -> Stats {
        let mut wait = Vec::new();
        let mut command = Vec::new();
        let mut gates_ms = Vec::new();
        let mut session = Vec::new();
        let mut succeeded = Vec::new();
        let mut per_unit: Vec<(String, u64)> = Vec::new();
        let mut gates: BTreeMap<String, GateFigures> = BTreeMap::new();
        let mut spans = Vec::new();
        let mut stats = Stats::default();
        for unit in units {
            let mut unit_total = 0;
            let mut unit_retries = 0;
            for attempt in &unit.history {
                if attempt.outcome.is_some_and(|o| o.counts_as_attempt()) {
                    unit_retries += 1;
                }
                if attempt.outcome == Some(regatta_proto::Outcome::TimedOut) {
                    stats.timed_out += 1;
                }
                let (Some(start), Some(end)) = (attempt.started_at_ms, attempt.ended_at_ms) else {
                    continue;
                };
                let run = (end - start).max(0) as u64;
                let in_gates: u64 = attempt.gates.iter().map(|g| g.duration_ms).sum();
                wait.push((start - attempt.published_at_ms).max(0) as u64);
                session.push(run);
                gates_ms.push(in_gates);
                command.push(run.saturating_sub(in_gates));
                spans.push((start, end));
                unit_total += run;
                if attempt.outcome == Some(regatta_proto::Outcome::Succeeded) {
                    succeeded.push(run);
                }
                for gate in &attempt.gates {
                    let figures = gates.entry(gate.name.clone()).or_insert(GateFigures {
                        gate: gate.name.clone(),
                        sessions: 0,
                        repairs: 0,
                        failures: 0,
                        repaired: 0,
                    });
                    figures.sessions += 1;
                    figures.repairs += gate.repairs;
                    if !gate.passed {
                        figures.failures += 1;
                    } else if gate.repairs > 0 {
                        figures.repaired += 1;
                    }
                }
            }
            stats.retries += unit_retries;
            if unit_retries > 0 {
                stats.retried_units += 1;
            }
            per_unit.push((unit.id.clone(), unit_total));
        }
        per_unit.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        per_unit.truncate(10);
        succeeded.sort_unstable();
        stats.phases = vec![
            phase("wait", wait),
            phase("command", command),
            phase("gates", gates_ms),
            phase("session", session),
        ];
        stats.slowest = per_unit;
        stats.utilisation = utilisation(&spans);
        stats.gates = gates.into_values().collect();
        stats.succeeded_runs_ms = succeeded;
        stats
    }
}

fn phase(name: &str, mut values: Vec<u64>) -> Phase {
    values.sort_unstable();
    let max = values.last().copied();
    let mut histogram = vec![0u32; 10];
    if let Some(max) = max.filter(|&m| m > 0) {
        for &v in &values {
            let bucket = ((v as u128 * 10) / (max as u128 + 1)) as usize;
            histogram[bucket.min(9)] += 1;
        }
    } else if !values.is_empty() {
        histogram[0] = values.len() as u32;
    }
    Phase {
        phase: name.to_owned(),
        count: values.len(),
        p50: quantile(&values, 0.5),
        p90: quantile(&values, 0.9),
        p99: quantile(&values, 0.99),
        max,
        histogram,
    }
}

/// Sessions running at once, sampled at the middle of equal buckets.
fn utilisation(spans: &[(i64, i64)]) -> Vec<u32> {
    let (Some(first), Some(last)) = (
        spans.iter().map(|s| s.0).min(),
        spans.iter().map(|s| s.1).max(),
    ) else {
        return Vec::new();
    };
    let width = ((last - first).max(1) as f64) / UTILISATION_BUCKETS as f64;
    // A sweep over starts and ends: one pass, whatever the number of sessions.
    let mut events: Vec<(i64, i32)> = spans
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    events.sort_unstable();
    let mut out = Vec::with_capacity(UTILISATION_BUCKETS);
    let (mut running, mut next) = (0i32, 0usize);
    for bucket in 0..UTILISATION_BUCKETS {
        let at = first + (width * (bucket as f64 + 0.5)) as i64;
        while next < events.len() && events[next].0 <= at {
            running += events[next].1;
            next += 1;
        }
        out.push(running.max(0) as u32);
    }
    out
}
