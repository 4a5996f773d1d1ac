//! `train-overhead`: what the merge train itself costs per candidate,
//! without the integration command: the coordinator's steps for one
//! candidate (fetch the target and the units' branches, build the
//! candidate with one merge-tree and one commit-tree per unit, push its
//! ref, compare-and-swap the target) and the pure plan's calls, done the
//! way `coordinator/src/service/train.rs` does them, against a bare
//! remote on this disk.

use std::time::Instant;

use regatta_git::candidate;
use regatta_git::mirror::Mirror;
use regatta_git::remote::{self, Swap};
use regatta_git::repo::Identity;
use regatta_git::train::Train;

use super::repo::{unit_branch, Layout, UnitRepo};
use crate::fleet::{percentile, Figures};

/// One candidate's steps, in ms.
#[derive(Debug, Default, Clone, Copy)]
struct Steps {
    fetch: f64,
    build: f64,
    push: f64,
    swap: f64,
    plan: f64,
}

impl Steps {
    /// What the brief counts: build, push, swap and the plan.
    fn core(&self) -> f64 {
        self.build + self.push + self.swap + self.plan
    }

    fn with_fetch(&self) -> f64 {
        self.core() + self.fetch
    }
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// Lands `candidates` candidates of `window` units each, one after
/// another, on a repository of `units` branches.
pub async fn run(units: usize, window: usize, candidates: usize) -> anyhow::Result<Figures> {
    let window = window.max(1);
    let candidates = candidates.min(units / window).max(1);
    let repo = UnitRepo::make(Layout {
        units,
        conflicting_pairs: 0,
        target_conflict: false,
        branches: true,
    })?;
    let mirror_dir = tempfile::tempdir()?;
    let mirror = Mirror::open(&mirror_dir.path().join("mirror.git"), &repo.url()).await?;
    let mut tip = remote::pin(&mirror, "main").await?;
    let identity = Identity {
        name: "regatta merge train".into(),
        email: "bench@regatta.invalid".into(),
    };
    let order = (0..units).map(|unit| (unit, Vec::new())).collect();
    let mut train = Train::new(u32::try_from(window)?, order);

    let mut steps = Vec::with_capacity(candidates);
    for c in 0..candidates {
        let mut step = Steps::default();
        // The units succeed window by window, so each candidate holds
        // exactly `window` units whatever the train's own window grew to.
        let started = Instant::now();
        for unit in c * window..(c + 1) * window {
            train.offer(unit, Some(repo.branches[unit].1.clone()));
        }
        let planned = train
            .next_candidate()
            .ok_or_else(|| anyhow::anyhow!("the train planned no candidate"))?;
        step.plan += ms(started);
        anyhow::ensure!(
            planned.units.len() == window,
            "candidate of {} units",
            planned.units.len()
        );

        let started = Instant::now();
        let mut wants = vec!["refs/heads/main".to_owned()];
        wants.extend(
            planned
                .units
                .iter()
                .map(|(unit, _)| format!("refs/heads/{}", unit_branch(*unit))),
        );
        let wants: Vec<&str> = wants.iter().map(String::as_str).collect();
        mirror.fetch(&wants).await?;
        let remote_tip = remote::tip(&mirror, "main")
            .await?
            .ok_or_else(|| anyhow::anyhow!("main is gone"))?;
        mirror.fetch(&[remote_tip.as_str()]).await?;
        step.fetch = ms(started);
        anyhow::ensure!(remote_tip == tip, "the target moved behind the bench");

        let started = Instant::now();
        let named: Vec<(String, String)> = planned
            .units
            .iter()
            .map(|(unit, commit)| (repo.branches[*unit].0.clone(), commit.clone()))
            .collect();
        let built = candidate::build(
            mirror.git(),
            &tip,
            &named,
            |unit| format!("Merge regatta/bench/{unit}"),
            &identity,
        )
        .await?
        .map_err(|conflict| anyhow::anyhow!("{} does not merge", conflict.unit))?;
        step.build = ms(started);

        let started = Instant::now();
        let candidate_ref = format!("refs/regatta/bench/candidates/{}", planned.id);
        remote::push(&mirror, &built.commit, &candidate_ref).await?;
        step.push = ms(started);

        let started = Instant::now();
        train.built(planned.id, tip.clone(), built.commit.clone());
        train.testing(planned.id, format!("integration-{}", planned.id));
        train.passed(planned.id, format!("integration-{}", planned.id));
        step.plan += ms(started);

        let started = Instant::now();
        let swap = remote::compare_and_swap(&mirror, "main", &tip, &built.commit).await?;
        step.swap = ms(started);
        anyhow::ensure!(swap == Swap::Moved, "the swap raced: {swap:?}");

        let started = Instant::now();
        let landing = train.landed(planned.id);
        step.plan += ms(started);
        anyhow::ensure!(landing.units.len() == window, "landed {landing:?}");
        tip = built.commit;
        steps.push(step);
    }
    let landed = repo.merges_on("main", "bench")?;
    anyhow::ensure!(
        landed == candidates * window,
        "{landed} merges on the target, {} expected",
        candidates * window
    );

    let stat = |pick: fn(&Steps) -> f64| {
        let mut values: Vec<f64> = steps.iter().map(pick).collect();
        values.sort_by(|a, b| a.total_cmp(b));
        (percentile(&values, 50.0), percentile(&values, 95.0))
    };
    let core = stat(Steps::core);
    let with_fetch = stat(Steps::with_fetch);
    let build = stat(|s| s.build);
    let push = stat(|s| s.push);
    let swap = stat(|s| s.swap);
    let plan = stat(|s| s.plan);
    let fetch = stat(|s| s.fetch);
    let per_unit = core.0 / window as f64;
    Ok(Figures {
        scenario: "train-overhead".into(),
        summary: format!(
            "{candidates} candidates of {window} units on a {units}-branch repository, integration excluded: build + push + swap + plan median {:.1} ms, p95 {:.1} ms per candidate ({per_unit:.1} ms per unit); build (merge-tree + commit-tree per unit) {:.1}/{:.1} ms, push of the candidate ref {:.1}/{:.1} ms, compare-and-swap {:.1}/{:.1} ms, Train plan calls {:.3}/{:.3} ms (median/p95); with the coordinator's fetch of the target and the branches ({:.1}/{:.1} ms) {:.1}/{:.1} ms",
            core.0, core.1, build.0, build.1, push.0, push.1, swap.0, swap.1, plan.0, plan.1, fetch.0, fetch.1, with_fetch.0, with_fetch.1,
        ),
        values: serde_json::json!({
            "units": units,
            "window": window,
            "candidates": candidates,
            "per_candidate_median_ms": core.0,
            "per_candidate_p95_ms": core.1,
            "build_median_ms": build.0,
            "build_p95_ms": build.1,
            "push_median_ms": push.0,
            "push_p95_ms": push.1,
            "swap_median_ms": swap.0,
            "swap_p95_ms": swap.1,
            "plan_median_ms": plan.0,
            "plan_p95_ms": plan.1,
            "fetch_median_ms": fetch.0,
            "fetch_p95_ms": fetch.1,
            "with_fetch_median_ms": with_fetch.0,
            "with_fetch_p95_ms": with_fetch.1,
        }),
    })
}
