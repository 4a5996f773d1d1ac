//! Git-mode benchmarks (docs/git-mode.md), each printing one summary line
//! and writing `<out_dir>/<scenario>.json` like the fleet scenarios:
//!
//! - `conflicts`: the conflict matrix of 100 unit branches (4,950 pairs
//!   plus 100 against the target) in one batched `merge-tree` process,
//!   against one process per merge measured in the same run;
//! - `train-overhead`: the merge train's own cost per candidate (build,
//!   push, compare-and-swap, plan), integration excluded;
//! - `git-batch`: a 200-unit git-mode batch end to end through a real
//!   coordinator and workers, against the same units without git.

mod batch;
mod conflicts;
mod repo;
mod train_overhead;

use std::path::PathBuf;

use crate::fleet::{write_report, Figures};

/// The settings of a run.
#[derive(Debug, Clone)]
pub struct GitPlan {
    pub scenarios: Vec<String>,
    /// Unit branches of the conflict matrix and of the train's repository.
    pub branches: usize,
    /// Merges run one process each, for the conflict matrix's baseline.
    pub sample: usize,
    /// Units per candidate.
    pub window: usize,
    /// Candidates timed by `train-overhead`.
    pub candidates: usize,
    /// Units of `git-batch`.
    pub batch_units: usize,
    /// Slots per worker (two workers run).
    pub worker_slots: usize,
    pub out_dir: PathBuf,
}

/// Runs the chosen scenarios in order.
pub async fn run(plan: &GitPlan) -> anyhow::Result<Vec<Figures>> {
    std::fs::create_dir_all(&plan.out_dir)?;
    let wants = |name: &str| plan.scenarios.iter().any(|s| s == name || s == "all");
    let mut results = Vec::new();
    if wants("conflicts") {
        let figures = conflicts::run(plan.branches, plan.sample).await?;
        results.push(write_report(&plan.out_dir, figures)?);
    }
    if wants("train-overhead") {
        let figures = train_overhead::run(plan.branches, plan.window, plan.candidates).await?;
        results.push(write_report(&plan.out_dir, figures)?);
    }
    if wants("git-batch") {
        let figures = batch::run(plan.batch_units, plan.worker_slots, plan.window).await?;
        results.push(write_report(&plan.out_dir, figures)?);
    }
    Ok(results)
}
