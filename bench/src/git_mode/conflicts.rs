//! `conflicts`: the conflict matrix of `regatta conflicts` for a batch of
//! unit branches, every pair plus each against the target, as one batched
//! `git merge-tree --stdin` process; and, measured in the same run, what
//! one `git merge-tree --write-tree` process per merge would cost (a
//! sample of the merges, extrapolated).

use std::time::Instant;

use regatta_git::conflicts::{conflict_matrix, TARGET};
use regatta_git::merge::merge_tree;
use regatta_git::repo::Git;

use super::repo::{Layout, UnitRepo};
use crate::fleet::{percentile, Figures};

/// Runs of the batched matrix; the median is reported.
const MATRIX_RUNS: usize = 3;

/// Times the matrix of `units` branches, and `sample` of its merges one
/// process each.
pub async fn run(units: usize, sample: usize) -> anyhow::Result<Figures> {
    let layout = Layout {
        units,
        conflicting_pairs: 5,
        target_conflict: true,
        branches: true,
    };
    let repo = UnitRepo::make(layout)?;
    let git = Git::at(&repo.seed);
    let expected = repo.planted_pairs + repo.planted_against_target;

    // Every merge the matrix makes, in its order: each branch against the
    // target, then every pair.
    let mut merges: Vec<(String, String, String, String)> = Vec::new();
    for (unit, commit) in &repo.branches {
        merges.push((
            TARGET.to_owned(),
            repo.target.clone(),
            unit.clone(),
            commit.clone(),
        ));
    }
    for (index, (a, a_commit)) in repo.branches.iter().enumerate() {
        for (b, b_commit) in &repo.branches[index + 1..] {
            merges.push((a.clone(), a_commit.clone(), b.clone(), b_commit.clone()));
        }
    }
    let total = merges.len();

    let mut runs = Vec::with_capacity(MATRIX_RUNS);
    let mut found = Vec::new();
    for _ in 0..MATRIX_RUNS {
        let started = Instant::now();
        found = conflict_matrix(&git, &repo.target, &repo.branches).await?;
        runs.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    anyhow::ensure!(
        found.len() == expected,
        "the matrix found {} conflicts, {expected} were planted: {found:?}",
        found.len()
    );
    runs.sort_by(|a, b| a.total_cmp(b));
    let matrix_ms = percentile(&runs, 50.0);

    // The baseline: one process per merge, over evenly spaced merges.
    let sample = sample.clamp(1, total);
    let stride = total as f64 / sample as f64;
    let sampled: Vec<usize> = (0..sample)
        .map(|k| ((k as f64 * stride) as usize).min(total - 1))
        .collect();
    let started = Instant::now();
    let mut sampled_conflicts = 0;
    for &index in &sampled {
        let (_, ours, _, theirs) = &merges[index];
        if merge_tree(&git, ours, theirs).await?.is_err() {
            sampled_conflicts += 1;
        }
    }
    let sample_ms = started.elapsed().as_secs_f64() * 1000.0;
    // The two ways agree on the merges both made.
    let in_matrix = sampled
        .iter()
        .filter(|&&index| {
            let (a, _, b, _) = &merges[index];
            // Unit names sort in unit order, as the matrix orders a pair.
            found.iter().any(|c| c.a == *a && c.b == *b)
        })
        .count();
    anyhow::ensure!(
        in_matrix == sampled_conflicts,
        "per-process merges found {sampled_conflicts} conflicts in the sample, the matrix {in_matrix}"
    );
    let per_process_ms = sample_ms * total as f64 / sample as f64;
    let matrix_rate = total as f64 / (matrix_ms / 1000.0);
    let per_process_rate = total as f64 / (per_process_ms / 1000.0);
    let ratio = per_process_ms / matrix_ms;
    let pairs = total - units;
    Ok(Figures {
        scenario: "conflicts".into(),
        summary: format!(
            "{units} unit branches: {total} merges ({pairs} pairs + {units} against the target), {} conflicts found ({} planted pairs, {} against the target): one merge-tree --stdin process {matrix_ms:.0} ms ({matrix_rate:.0} merges/s, median of {MATRIX_RUNS} runs); one merge-tree process per merge {per_process_ms:.0} ms ({per_process_rate:.0} merges/s, extrapolated from {sample} sampled merges that took {sample_ms:.0} ms); batched is {ratio:.1}x faster",
            found.len(),
            repo.planted_pairs,
            repo.planted_against_target,
        ),
        values: serde_json::json!({
            "units": units,
            "merges": total,
            "conflicts": found.len(),
            "matrix_ms": matrix_ms,
            "matrix_runs_ms": runs,
            "matrix_merges_per_s": matrix_rate,
            "sampled_merges": sample,
            "sample_ms": sample_ms,
            "per_process_ms_extrapolated": per_process_ms,
            "per_process_merges_per_s": per_process_rate,
            "ratio": ratio,
        }),
    })
}
