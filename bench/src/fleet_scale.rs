//! `scale`: many long sessions at once. 1,000 sessions that each sleep (60 s
//! by default) over 10 workers of 100 slots, leases and heartbeats on (every
//! session holds a lease that its worker renews every third of the TTL):
//! while they all run, what the coordinator costs (% of a core) and how
//! many commands Redis serves per second; and how long after the enqueue
//! the last of them started.

use std::time::{Duration, Instant};

use regatta_coordinator::scheduler::UnitState;
use regatta_tests::Fleet;

use crate::fleet::{finish, no_op_manifest, percentile, Figures, Usage};

/// The settings of the scale scenario.
#[derive(Debug, Clone)]
pub struct ScalePlan {
    pub sessions: usize,
    pub workers: usize,
    pub slots: usize,
    /// How long each session sleeps.
    pub sleep: Duration,
    /// The lease TTL of the workers (heartbeats renew every third of it).
    pub lease_ttl: String,
}

/// Redis's `total_commands_processed` (INFO stats), every client's.
async fn redis_commands(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(con).await?;
    info.lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no total_commands_processed in INFO stats"))
}

/// Redis commands per second over `window`, every client's.
async fn redis_rate(
    con: &mut redis::aio::MultiplexedConnection,
    window: Duration,
) -> anyhow::Result<f64> {
    let before = redis_commands(con).await?;
    tokio::time::sleep(window).await;
    Ok((redis_commands(con).await? - before) / window.as_secs_f64())
}

pub async fn run(plan: &ScalePlan) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let n = plan.sessions;
    let sleep_s = plan.sleep.as_secs_f64();
    let units: String = (0..n).map(|i| format!("  - id: s{i}\n")).collect();
    let manifest = no_op_manifest(
        dir.path(),
        "scale",
        &format!(
            "batch: scale\nconcurrency: {n}\nplaybook:\n  name: sleep\n  run: 'sleep {sleep_s}'\nunits:\n{units}"
        ),
    )?;
    let fleet = Fleet::start("bench-scale", plan.workers, plan.slots, &plan.lease_ttl).await;
    let mut redis = regatta_tests::redis().await;
    // What Redis serves without this batch (other users of the machine,
    // the idle fleet), to set the figure in context.
    let idle_redis = redis_rate(&mut redis, Duration::from_secs(3)).await?;
    let usage = Usage::of(&fleet);
    let client = fleet.client();

    let enqueued = Instant::now();
    let batch = client.enqueue(&manifest).await?;
    // Poll until every session runs (or the first could already be ending).
    let mut all_running = None;
    while enqueued.elapsed() < plan.sleep {
        let summary = client.batch(&batch).await?;
        let running = summary
            .counts
            .get(&UnitState::Running)
            .copied()
            .unwrap_or(0);
        if running >= n {
            all_running = Some(enqueued.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The window: from then until a second before the first could end,
    // with nothing of ours polling the coordinator.
    let window_end = plan.sleep.saturating_sub(Duration::from_secs(1));
    let window = window_end
        .saturating_sub(enqueued.elapsed())
        .max(Duration::from_secs(1));
    let before = usage.sample();
    let redis_before = redis_commands(&mut redis).await?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let seconds = started.elapsed().as_secs_f64();
    let redis_per_s = (redis_commands(&mut redis).await? - redis_before) / seconds;
    let cpu = usage.sample().since(&before).percent_of_core(seconds);

    finish(&fleet, &batch, plan.sleep + Duration::from_secs(600)).await?;
    let summary = client.batch(&batch).await?;
    let views = client.units(&batch, None).await?;
    fleet.stop().await;
    let mut starts: Vec<f64> = views
        .iter()
        .filter_map(|v| v.history.last()?.started_at_ms)
        .map(|ms| (ms - summary.created_ms) as f64 / 1000.0)
        .collect();
    starts.sort_by(|a, b| a.total_cmp(b));
    let last_start = starts.last().copied().unwrap_or(f64::NAN);
    let median_start = percentile(&starts, 50.0);
    let all_running_s = all_running.map_or(f64::NAN, |d| d.as_secs_f64());
    Ok(Figures {
        scenario: "scale".into(),
        summary: format!(
            "{n} sessions sleeping {sleep_s:.0} s, {} workers x {} slots, lease TTL {}: all started {last_start:.2} s after the enqueue (median {median_start:.2} s; seen running by polling at {all_running_s:.1} s); over {seconds:.1} s while all ran: coordinator {:.1}% of a core, redis {redis_per_s:.0} commands/s (idle before: {idle_redis:.0}/s), workers {:.1}%, broker {:.1}%, redis {:.1}% of a core",
            plan.workers,
            plan.slots,
            plan.lease_ttl,
            cpu.coordinator,
            cpu.workers,
            cpu.broker,
            cpu.redis,
        ),
        values: serde_json::json!({
            "sessions": n,
            "sleep_s": sleep_s,
            "workers": plan.workers,
            "slots": plan.slots,
            "started": starts.len(),
            "last_start_s": last_start,
            "median_start_s": median_start,
            "all_running_seen_s": all_running_s,
            "window_s": seconds,
            "coordinator_core_percent": cpu.coordinator,
            "workers_core_percent": cpu.workers,
            "broker_core_percent": cpu.broker,
            "redis_core_percent": cpu.redis,
            "redis_commands_per_s": redis_per_s,
            "redis_idle_commands_per_s": idle_redis,
        }),
    })
}
