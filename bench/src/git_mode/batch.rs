//! `git-batch`: a git-mode batch end to end against the local RabbitMQ and
//! Redis, a real coordinator and two workers: every unit edits its own
//! file in a worktree, commits and pushes its branch, and the merge train
//! lands it after a trivial integration command (`true`). The same units
//! run first as a plain batch in the same fleet, so the cost of git mode
//! is a ratio measured in one run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regatta_tests::Fleet;

use super::repo::{unit_file, unit_name, Layout, UnitRepo};
use crate::fleet::{finish, no_op_manifest, percentile, Figures};

/// Retries per unit: a worker's `git worktree add` can lose a race with
/// another session's `git worktree prune` in the same mirror (3 units
/// of 800 over four runs at 32 sessions); a retry makes the worktree again.
const RETRIES: u32 = 2;

/// How often the bench asks which units landed.
const POLL: Duration = Duration::from_millis(50);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The manifest's units: each edits its own file.
fn units_yaml(units: usize) -> String {
    (0..units)
        .map(|i| {
            format!(
                "  - {{id: {}, touches: [{file}], env: {{FILE: {file}}}}}\n",
                unit_name(i),
                file = unit_file(i)
            )
        })
        .collect()
}

fn manifest_text(name: &str, concurrency: usize, units: usize, git: &str) -> String {
    format!(
        "batch: {name}\nconcurrency: {concurrency}\nretries: {RETRIES}\nplaybook:\n  name: edit\n  run: 'printf \"migrated\\n\" > \"$FILE\"'\n{git}units:\n{}",
        units_yaml(units)
    )
}

/// Runs `units` units as a plain batch, then as a git batch with this
/// window, on 2 workers of `slots` slots.
pub async fn run(units: usize, slots: usize, window: usize) -> anyhow::Result<Figures> {
    let repo = UnitRepo::make(Layout {
        units,
        conflicting_pairs: 0,
        target_conflict: false,
        branches: false,
    })?;
    let dir = tempfile::tempdir()?;
    let concurrency = 2 * slots;
    // The plain batch edits the same files in a folder of its own.
    let plain_dir = dir.path().join("plain");
    std::fs::create_dir_all(plain_dir.join("src"))?;
    let plain = no_op_manifest(
        &plain_dir,
        "plain",
        &manifest_text("plain", concurrency, units, ""),
    )?;
    let git_block = format!(
        "git:\n  repo: {}\n  base: main\n  integration: 'true'\n  integration_timeout: 5m\n  window: {window}\n",
        repo.url()
    );
    let git = no_op_manifest(
        dir.path(),
        "git-batch",
        &manifest_text("git-batch", concurrency, units, &git_block),
    )?;
    let mirrors = dir.path().join("coordinator-mirrors");
    let mirrors = mirrors.display().to_string();
    let fleet = Fleet::start_with_env(
        "bench-git-batch",
        2,
        slots,
        "30s",
        &[("REGATTA_GIT_DIR", mirrors.as_str())],
    )
    .await;
    let result = measure(&fleet, &repo, &plain, &git, units, slots, window).await;
    fleet.stop().await;
    result
}

async fn measure(
    fleet: &Fleet,
    repo: &UnitRepo,
    plain: &regatta_coordinator::manifest::Manifest,
    git: &regatta_coordinator::manifest::Manifest,
    units: usize,
    slots: usize,
    window: usize,
) -> anyhow::Result<Figures> {
    let client = fleet.client();
    let limit = Duration::from_secs(1800);

    let started = Instant::now();
    let batch = client.enqueue(plain).await?;
    finish(fleet, &batch, limit).await?;
    let plain_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let enqueued_ms = now_ms();
    let batch = client.enqueue(git).await?;
    let landed_at = watch_landings(fleet, &batch, limit).await?;
    let git_s = started.elapsed().as_secs_f64();

    let views = client.units(&batch, None).await?;
    let train = client.train(&batch).await?;
    anyhow::ensure!(
        train.landed.len() == units,
        "{} of {units} units landed",
        train.landed.len()
    );
    let merged = repo.merges_on("main", &batch)?;
    anyhow::ensure!(
        merged == units,
        "{merged} unit merges on the target, {units} expected"
    );
    // Units that needed more than one attempt, and why the first failed.
    let retried: Vec<String> = views
        .iter()
        .filter(|view| view.history.len() > 1)
        .map(|view| {
            let reason = view.history[0].reason.clone().unwrap_or_default();
            format!(
                "{}: {}",
                view.id,
                reason.chars().take(160).collect::<String>()
            )
        })
        .collect();
    let tested = train
        .candidates
        .iter()
        .filter(|c| c.integration_session.is_some())
        .count();
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for candidate in &train.candidates {
        *by_state.entry(candidate.state.as_str()).or_default() += 1;
    }
    // A unit's success (its session's end) to the first poll that saw it
    // landed.
    let mut waits: Vec<f64> = views
        .iter()
        .filter_map(|view| {
            let succeeded = view.history.last()?.ended_at_ms?;
            let landed = landed_at.get(&view.id)?;
            Some((landed - succeeded) as f64)
        })
        .collect();
    waits.sort_by(|a, b| a.total_cmp(b));
    let (wait_median, wait_p95) = (percentile(&waits, 50.0), percentile(&waits, 95.0));
    // When the last session ended: the rest of the wall time is the train
    // catching up.
    let sessions_s = views
        .iter()
        .filter_map(|view| view.history.last()?.ended_at_ms)
        .max()
        .map_or(f64::NAN, |last| (last - enqueued_ms) as f64 / 1000.0);
    // The train's cycle: the time between two landings seen (one candidate
    // each: its units land together).
    let mut landings: Vec<i64> = landed_at.values().copied().collect();
    landings.sort_unstable();
    landings.dedup();
    let mut cycles: Vec<f64> = landings
        .windows(2)
        .map(|pair| (pair[1] - pair[0]) as f64)
        .collect();
    cycles.sort_by(|a, b| a.total_cmp(b));
    let cycle_median = percentile(&cycles, 50.0);

    let plain_rate = units as f64 / plain_s;
    let git_rate = units as f64 / git_s;
    let ratio = git_s / plain_s;
    Ok(Figures {
        scenario: "git-batch".into(),
        summary: format!(
            "{units} units, each editing its own file (2 workers x {slots} slots, integration 'true', window {window}): git mode {git_s:.1} s to the batch's end ({git_rate:.1} units/s), {tested} candidates tested ({}), the last session ended {sessions_s:.1} s after the enqueue, a landing every {cycle_median:.0} ms (median), {} units retried, a unit's success to its landing median {wait_median:.0} ms, p95 {wait_p95:.0} ms (seen by polling every {} ms); the same units without git {plain_s:.1} s ({plain_rate:.1} units/s): git mode takes {ratio:.1}x as long",
            by_state
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect::<Vec<_>>()
                .join(", "),
            retried.len(),
            POLL.as_millis(),
        ),
        values: serde_json::json!({
            "units": units,
            "worker_slots": slots,
            "git_seconds": git_s,
            "git_units_per_s": git_rate,
            "candidates_tested": tested,
            "candidates_by_state": by_state,
            "success_to_landing_median_ms": wait_median,
            "success_to_landing_p95_ms": wait_p95,
            "landings_seen": waits.len(),
            "retried": retried,
            "last_session_end_s": sessions_s,
            "landing_cycle_median_ms": cycle_median,
            "plain_seconds": plain_s,
            "plain_units_per_s": plain_rate,
            "git_to_plain_ratio": ratio,
        }),
    })
}

/// Waits for the batch's end (it must succeed), noting when each unit was
/// first seen landed (ms since the epoch, this machine's clock).
async fn watch_landings(
    fleet: &Fleet,
    batch: &str,
    limit: Duration,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let client = fleet.client();
    let started = Instant::now();
    let mut landed_at = BTreeMap::new();
    loop {
        let summary = client.batch(batch).await?;
        let seen = now_ms();
        for view in client.units(batch, Some("landed")).await? {
            landed_at.entry(view.id).or_insert(seen);
        }
        if summary.state.is_terminal() {
            if summary.state != regatta_coordinator::scheduler::BatchState::Succeeded {
                let stuck: Vec<String> = client
                    .units(batch, None)
                    .await?
                    .into_iter()
                    .filter(|view| !landed_at.contains_key(&view.id))
                    .take(5)
                    .map(|view| format!("{} {:?}: {:?}", view.id, view.state, view.reason))
                    .collect();
                anyhow::bail!(
                    "git batch {batch} ended {:?}; units that did not land: {stuck:?}",
                    summary.state
                );
            }
            return Ok(landed_at);
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "git batch {batch} did not end within {limit:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}
