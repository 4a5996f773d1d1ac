//! `regatta report`: what a wave of sessions says, for the person who
//! improves the playbook before the next wave (README, "Report").
//!
//! Built from what the API already serves (the batch, its units with every
//! attempt, the merge train), so a report can be made of any batch the
//! coordinator holds, finished or not:
//!
//! - [`funnel`]: how each unit got where it is (first pass, retry, repair,
//!   rebase, review...);
//! - [`cluster`]: failed sessions grouped by a masked signature;
//! - [`timeline`]: every session over the workers, split into its phases,
//!   and the critical path as run beside the one planned;
//! - [`stats`]: distributions per phase, the slowest units, repairs per gate;
//! - [`tune`]: suggestions for the playbook, computed from the figures;
//! - [`cost`]: what the sessions cost, per unit and per cluster, and the
//!   batch's projected total;
//! - [`render`]: one self-contained HTML file, Markdown and JSON.

use serde::Serialize;

use crate::manifest::Manifest;
use crate::service::{BatchSummary, ConflictsView, TrainView, UnitView};

pub mod cluster;
pub mod cost;
pub mod funnel;
pub mod render;
pub mod stats;
pub mod timeline;
pub mod tune;

/// What a report is made of.
pub struct Input {
    pub summary: BatchSummary,
    pub units: Vec<UnitView>,
    /// Git mode: the merge train.
    pub train: Option<TrainView>,
    /// The manifest the batch was enqueued from, when given: its playbook's
    /// name, its timeout, and the critical path `regatta plan` predicted.
    pub manifest: Option<Manifest>,
    /// Git mode: the branches that do not merge, when units wait to land.
    pub conflicts: Option<ConflictsView>,
}

/// A batch's report: every figure the three formats show.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub batch_id: String,
    pub batch_name: String,
    pub state: String,
    pub units: usize,
    pub sessions: usize,
    /// When the report was made (ISO 8601, UTC).
    pub generated_at: String,
    pub funnel: Vec<funnel::Stage>,
    pub clusters: Vec<cluster::Cluster>,
    pub timeline: timeline::Timeline,
    pub stats: stats::Stats,
    pub suggestions: tune::Suggestions,
    /// What the agent sessions cost, from their usage records.
    pub cost: cost::Cost,
    /// Git mode: the conflict matrix of the branches waiting to land.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<ConflictsView>,
}

impl Report {
    pub fn build(input: &Input) -> Report {
        let playbook = input
            .manifest
            .as_ref()
            .map(|m| m.playbook.name.clone())
            .unwrap_or_default();
        let prices = input
            .manifest
            .as_ref()
            .and_then(|m| m.playbook.prices.as_ref());
        let failures = failures(&input.units, &playbook, prices);
        let clusters = cluster::clusters(&failures);
        let timeline = timeline::Timeline::build(input);
        let stats = stats::Stats::build(&input.units);
        let suggestions = tune::Suggestions::build(input, &stats, &clusters);
        Report {
            batch_id: input.summary.id.clone(),
            batch_name: input.summary.name.clone(),
            state: input.summary.state.as_str().to_owned(),
            units: input.units.len(),
            sessions: input.units.iter().map(|u| u.history.len()).sum(),
            generated_at: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            funnel: funnel::funnel(&input.units),
            clusters,
            timeline,
            stats,
            suggestions,
            cost: cost::Cost::build(input),
            conflicts: input.conflicts.clone(),
        }
    }
}

/// Every session that ended badly, as the clustering sees it.
fn failures(
    units: &[UnitView],
    playbook: &str,
    prices: Option<&regatta_proto::Prices>,
) -> Vec<cluster::Failure> {
    let mut out = Vec::new();
    for unit in units {
        for attempt in &unit.history {
            let Some(outcome) = attempt.outcome else {
                continue;
            };
            if !outcome.counts_as_attempt() {
                continue;
            }
            out.push(cluster::Failure {
                unit: unit.id.clone(),
                session_id: attempt.session_id.clone(),
                outcome: outcome.as_str().to_owned(),
                gate: attempt
                    .gates
                    .iter()
                    .find(|g| g.required && !g.passed)
                    .map(|g| g.name.clone()),
                playbook: playbook.to_owned(),
                reason: attempt.reason.clone().unwrap_or_default(),
                log_tail: attempt.log_tail.clone(),
                evidence: attempt.evidence.as_ref().map(|e| e.path.clone()),
                cost_usd: attempt
                    .usage
                    .as_ref()
                    .and_then(|u| cost::session_cost(u, prices))
                    .map(|(usd, _)| usd),
            });
        }
    }
    out
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}
