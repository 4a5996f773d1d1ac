//! Fleet benchmarks against the real broker and Redis: each scenario prints
//! one summary line and writes a JSON result, and throughput is given as a
//! ratio to the broker's own ceiling measured in the same run, because
//! absolute figures drift on shared machines.
//!
//! - `ceiling`: raw lapin publish-with-confirms and consume-with-ack of
//!   persistent messages through a quorum queue, and raw Redis Lua calls;
//! - `throughput`: 10,000 no-op units, a coordinator and 2 workers, with
//!   the CPU each part of the fleet spent per unit;
//! - `chain`: a chain of 1,000 no-op units: the dependency hop, from the
//!   coordinator's records (ms) and from the sessions' own µs clock;
//! - `fan-in`: 5,000 units in 50 layers with fan-in 10 and a resource cap;
//! - `enqueue`: enqueuing a 100,000 and a 1,000,000-unit batch: time,
//!   coordinator memory, and whether the API and the coordinator's lock
//!   stayed responsive;
//! - `scale`: 1,000 sleeping sessions at once over 10 workers (see
//!   [`crate::fleet_scale`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use regatta_broker as broker;
use regatta_coordinator::api::EnqueueRequest;
use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::BatchState;
use regatta_tests::stall::Watch;
use regatta_tests::Fleet;
use serde::Serialize;

use crate::generate::{manifest_text, Format, Spec};
use crate::process_cpu;

/// What one scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub scenario: String,
    pub summary: String,
    pub values: serde_json::Value,
}

/// The settings of a run.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub scenarios: Vec<String>,
    pub throughput_units: usize,
    pub chain_units: usize,
    pub fan_in_units: usize,
    pub enqueue_units: Vec<usize>,
    pub worker_slots: usize,
    pub scale: crate::fleet_scale::ScalePlan,
    pub out_dir: PathBuf,
}

/// Runs the chosen scenarios in order; the ceiling always runs first when
/// throughput is asked for, so the ratio has its baseline.
pub async fn run(plan: &FleetPlan) -> anyhow::Result<Vec<Figures>> {
    std::fs::create_dir_all(&plan.out_dir)?;
    let wants = |name: &str| plan.scenarios.iter().any(|s| s == name || s == "all");
    let mut results = Vec::new();
    let mut ceiling_msgs = None;
    if wants("ceiling") || wants("throughput") {
        let (figures, msgs) = ceiling().await?;
        ceiling_msgs = Some(msgs);
        results.push(report(plan, figures)?);
    }
    if wants("throughput") {
        results.push(report(
            plan,
            throughput(plan, ceiling_msgs.unwrap_or(0.0)).await?,
        )?);
    }
    if wants("chain") {
        results.push(report(plan, chain(plan).await?)?);
    }
    if wants("fan-in") {
        results.push(report(plan, fan_in(plan).await?)?);
    }
    if wants("enqueue") {
        for units in &plan.enqueue_units {
            results.push(report(plan, enqueue(*units).await?)?);
        }
    }
    if wants("scale") {
        results.push(report(plan, crate::fleet_scale::run(&plan.scale).await?)?);
    }
    Ok(results)
}

fn report(plan: &FleetPlan, figures: Figures) -> anyhow::Result<Figures> {
    write_report(&plan.out_dir, figures)
}

/// Prints a scenario's summary line, with the machine's load average at its
/// end (other builders share it), and writes its JSON result to
/// `<out_dir>/<scenario>.json`.
pub fn write_report(out_dir: &Path, mut figures: Figures) -> anyhow::Result<Figures> {
    let [one, five, _] = process_cpu::load_average();
    println!(
        "{:<11} {} [load {one:.1}/{five:.1}]",
        figures.scenario, figures.summary
    );
    if let Some(values) = figures.values.as_object_mut() {
        values.insert("load_average_1m".into(), one.into());
    }
    let path = out_dir.join(format!("{}.json", figures.scenario));
    std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)?;
    Ok(figures)
}

/// Raw broker and Redis capacity on this machine, right now.
async fn ceiling() -> anyhow::Result<(Figures, f64)> {
    let connection = regatta_tests::rabbitmq().await;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let consumer_channel = connection.create_channel().await?;
    let queue = format!("bench-ceiling-{}", uuid::Uuid::new_v4().simple());
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    publisher
        .queue_declare(queue.as_str().into(), durable, arguments)
        .await?;
    let payload = vec![b'x'; 400];

    // One at a time: the latency of a confirmed publish.
    let single = 500;
    let started = Instant::now();
    for _ in 0..single {
        broker::publish_confirmed(&publisher, &queue, &payload, BasicProperties::default()).await?;
    }
    let single_ms = started.elapsed().as_secs_f64() * 1000.0 / single as f64;
    publisher
        .queue_purge(queue.as_str().into(), Default::default())
        .await?;

    // A window of confirms, consumed and acked one by one.
    let total = 20_000usize;
    consumer_channel
        .basic_qos(512, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut received = 0usize;
        while received < total {
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                    received += 1;
                }
                _ => break,
            }
        }
        received
    });
    let mut confirms = FuturesUnordered::new();
    for _ in 0..total {
        if confirms.len() >= 512 {
            confirms.next().await;
        }
        let confirm = publisher
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                Default::default(),
                &payload,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        confirms.push(confirm);
    }
    while confirms.next().await.is_some() {}
    let received = consume.await?;
    let elapsed = started.elapsed().as_secs_f64();
    let msgs = received as f64 / elapsed;
    publisher
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;

    // Redis: a trivial Lua script, 32 calls in flight on one connection.
    let redis = regatta_tests::redis().await;
    let key = format!("bench-ceiling-{}", uuid::Uuid::new_v4().simple());
    let script = redis::Script::new("return redis.call('INCR', KEYS[1])");
    let calls = 50_000usize;
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..calls {
        if inflight.len() >= 32 {
            inflight.next().await;
        }
        let mut con = redis.clone();
        let (script, key) = (script.clone(), key.clone());
        inflight.push(async move {
            let _: Result<i64, _> = script.key(&key).invoke_async(&mut con).await;
        });
    }
    while inflight.next().await.is_some() {}
    let lua = calls as f64 / started.elapsed().as_secs_f64();
    let mut con = redis.clone();
    let _: Result<(), _> = redis::cmd("DEL").arg(&key).query_async(&mut con).await;

    let figures = Figures {
        scenario: "ceiling".into(),
        summary: format!(
            "broker {msgs:.0} msg/s (quorum, persistent, confirms + acks); {single_ms:.2} ms per single confirmed publish; redis {lua:.0} Lua calls/s; units ceiling (msg/s / 2) {:.0}/s",
            msgs / 2.0
        ),
        values: serde_json::json!({
            "broker_msgs_per_s": msgs,
            "single_publish_ms": single_ms,
            "redis_lua_calls_per_s": lua,
            "unit_ceiling_per_s": msgs / 2.0,
        }),
    };
    Ok((figures, msgs))
}

/// A manifest of `units` no-op units written to a fresh folder.
pub fn no_op_manifest(dir: &Path, name: &str, body: &str) -> anyhow::Result<Manifest> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, body)?;
    Manifest::load(&path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Starts a fleet of a coordinator and two workers.
async fn fleet(name: &str, plan: &FleetPlan) -> Fleet {
    Fleet::start(name, 2, plan.worker_slots, "30s").await
}

/// Waits for the end of a batch, polling its summary.
pub async fn finish(fleet: &Fleet, batch: &str, limit: Duration) -> anyhow::Result<Duration> {
    let client = fleet.client();
    let started = Instant::now();
    loop {
        let summary = client.batch(batch).await?;
        if summary.state.is_terminal() {
            anyhow::ensure!(
                summary.state == BatchState::Succeeded,
                "batch {batch} ended {:?}",
                summary.state
            );
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "batch {batch} did not end within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn throughput(plan: &FleetPlan, ceiling_msgs: f64) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let n = plan.throughput_units;
    let units: String = (0..n).map(|i| format!("  - id: u{i}\n")).collect();
    let concurrency = 2 * plan.worker_slots;
    let manifest = no_op_manifest(
        dir.path(),
        "throughput",
        &format!("batch: throughput\nconcurrency: {concurrency}\nplaybook:\n  name: noop\n  run: 'true'\nunits:\n{units}"),
    )?;
    let sh_ms = sh_cpu_ms(300)?;
    let fleet = fleet("bench-throughput", plan).await;
    let usage = Usage::of(&fleet);
    let before = usage.sample();
    let started = Instant::now();
    let batch = fleet.client().enqueue(&manifest).await?;
    finish(&fleet, &batch, Duration::from_secs(1800)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = usage.sample().since(&before).per_unit_ms(n);
    let phases = phases(&fleet.client().units(&batch, None).await?);
    fleet.stop().await;
    let rate = n as f64 / elapsed;
    let ratio = if ceiling_msgs > 0.0 {
        rate / (ceiling_msgs / 2.0)
    } else {
        0.0
    };
    let leaders_ms = (cpu.sessions - sh_ms).max(0.0);
    let ours_ms = cpu.coordinator + cpu.workers + leaders_ms;
    Ok(Figures {
        scenario: "throughput".into(),
        summary: format!(
            "{n} no-op units in {elapsed:.1} s: {rate:.0} units/s end to end = {:.1}% of the broker ceiling / 2 (2 workers x {} slots); mean per unit: publish to start {:.1} ms, start to end {:.1} ms; CPU per unit: ours {ours_ms:.2} ms (coordinator {:.2}, workers {:.2}, leaders {leaders_ms:.2}; the session's own sh {sh_ms:.2} ms excluded), broker {:.2} ms, redis {:.2} ms",
            ratio * 100.0,
            plan.worker_slots,
            phases.queue_ms,
            phases.session_ms,
            cpu.coordinator,
            cpu.workers,
            cpu.broker,
            cpu.redis,
        ),
        values: serde_json::json!({
            "units": n,
            "seconds": elapsed,
            "units_per_s": rate,
            "ratio_to_ceiling_half": ratio,
            "mean_publish_to_start_ms": phases.queue_ms,
            "mean_start_to_end_ms": phases.session_ms,
            "cpu_ms_per_unit": {
                "ours": ours_ms,
                "coordinator": cpu.coordinator,
                "workers": cpu.workers,
                "leaders": leaders_ms,
                "leaders_and_sh": cpu.sessions,
                "sh_alone": sh_ms,
                "broker": cpu.broker,
                "redis": cpu.redis,
            },
        }),
    })
}

/// CPU of one `/bin/sh -c true`, in ms: the session's own process in a
/// no-op unit, which the fleet's overhead leaves out (median of `runs`
/// runs from this process, read as the children's CPU it reaped).
fn sh_cpu_ms(runs: usize) -> anyhow::Result<f64> {
    let before = process_cpu::reaped_children_of_self();
    for _ in 0..runs {
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", "true"])
            .status()?;
        anyhow::ensure!(status.success(), "/bin/sh -c true failed: {status}");
    }
    Ok((process_cpu::reaped_children_of_self() - before) * 1000.0 / runs as f64)
}

/// The processes a fleet scenario accounts for.
pub struct Usage {
    coordinator: u32,
    workers: Vec<u32>,
    /// RabbitMQ's `beam.smp` and `redis-server`, found once.
    broker: Option<u32>,
    redis: Option<u32>,
}

/// CPU seconds spent so far by each part (or, after [`Sample::since`],
/// over a window).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub coordinator: f64,
    /// The workers' own processes.
    pub workers: f64,
    /// The session leaders the workers reaped, with their sessions' processes.
    pub sessions: f64,
    pub broker: f64,
    pub redis: f64,
}

impl Usage {
    pub fn of(fleet: &Fleet) -> Usage {
        Usage {
            coordinator: fleet.coordinator_pid(),
            workers: fleet.workers.iter().map(std::process::Child::id).collect(),
            broker: process_cpu::oldest_named("beam.smp"),
            redis: process_cpu::oldest_named("redis-server"),
        }
    }

    pub fn sample(&self) -> Sample {
        let workers: f64 = self.workers.iter().map(|p| process_cpu::own(*p)).sum();
        // A worker's live children too: its session supervisor, which forks
        // the leaders and reaps them, lives as long as the worker.
        let with_children: f64 = self
            .workers
            .iter()
            .map(|p| {
                process_cpu::with_reaped_children(*p)
                    + process_cpu::children_of(*p)
                        .into_iter()
                        .map(process_cpu::with_reaped_children)
                        .sum::<f64>()
            })
            .sum();
        Sample {
            coordinator: process_cpu::with_reaped_children(self.coordinator),
            workers,
            sessions: with_children - workers,
            broker: self.broker.map_or(0.0, process_cpu::with_reaped_children),
            redis: self.redis.map_or(0.0, process_cpu::with_reaped_children),
        }
    }
}

impl Sample {
    pub fn since(&self, before: &Sample) -> Sample {
        Sample {
            coordinator: self.coordinator - before.coordinator,
            workers: self.workers - before.workers,
            sessions: self.sessions - before.sessions,
            broker: self.broker - before.broker,
            redis: self.redis - before.redis,
        }
    }

    /// Each figure in ms per unit, for `units` units.
    pub fn per_unit_ms(&self, units: usize) -> Sample {
        let per = |seconds: f64| seconds * 1000.0 / units.max(1) as f64;
        Sample {
            coordinator: per(self.coordinator),
            workers: per(self.workers),
            sessions: per(self.sessions),
            broker: per(self.broker),
            redis: per(self.redis),
        }
    }

    /// Each figure as a percentage of one core over `seconds`.
    pub fn percent_of_core(&self, seconds: f64) -> Sample {
        let per = |cpu: f64| cpu * 100.0 / seconds.max(f64::EPSILON);
        Sample {
            coordinator: per(self.coordinator),
            workers: per(self.workers),
            sessions: per(self.sessions),
            broker: per(self.broker),
            redis: per(self.redis),
        }
    }
}

/// Where a unit's time goes, on average, from the coordinator's records.
struct Phases {
    queue_ms: f64,
    session_ms: f64,
}

fn phases(units: &[regatta_coordinator::service::UnitView]) -> Phases {
    let (mut queue, mut session, mut n) = (0i64, 0i64, 0i64);
    for attempt in units.iter().filter_map(|u| u.history.last()) {
        if let (Some(start), Some(end)) = (attempt.started_at_ms, attempt.ended_at_ms) {
            queue += start - attempt.published_at_ms;
            session += end - start;
            n += 1;
        }
    }
    let n = n.max(1) as f64;
    Phases {
        queue_ms: queue as f64 / n,
        session_ms: session as f64 / n,
    }
}

/// The value at percentile `p` (0 to 100) of sorted values; NaN if none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn chain(plan: &FleetPlan) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let clock = dir.path().join("clock");
    std::fs::create_dir_all(&clock)?;
    let n = plan.chain_units;
    let mut units = String::from("  - id: c0\n");
    for i in 1..n {
        units.push_str(&format!("  - id: c{i}\n    depends_on: [c{}]\n", i - 1));
    }
    // Each session writes the µs clock as it starts and as it ends: the
    // coordinator's records have only ms.
    let run = format!(
        "date +%s%6N > {0}/$REGATTA_UNIT_ID.start; date +%s%6N > {0}/$REGATTA_UNIT_ID.end",
        clock.display()
    );
    let manifest = no_op_manifest(
        dir.path(),
        "chain",
        &format!("batch: chain\nplaybook:\n  name: clock\n  run: '{run}'\nunits:\n{units}"),
    )?;
    let date_start_us = date_start_us(100)?;
    let fleet = fleet("bench-chain", plan).await;
    let client = fleet.client();
    let batch = client.enqueue(&manifest).await?;
    let elapsed = finish(&fleet, &batch, Duration::from_secs(1800)).await?;
    let views = client.units(&batch, None).await?;
    fleet.stop().await;
    let mut by_id = std::collections::HashMap::new();
    for view in &views {
        if let Some(attempt) = view.history.last() {
            by_id.insert(
                view.id.clone(),
                (attempt.started_at_ms, attempt.ended_at_ms),
            );
        }
    }
    let mut hops: Vec<f64> = (1..n)
        .filter_map(|i| {
            let (_, parent_end) = by_id.get(&format!("c{}", i - 1))?;
            let (child_start, _) = by_id.get(&format!("c{i}"))?;
            Some((child_start.as_ref()? - parent_end.as_ref()?) as f64)
        })
        .collect();
    hops.sort_by(|a, b| a.total_cmp(b));
    let (median, p99) = (percentile(&hops, 50.0), percentile(&hops, 99.0));
    let read = |unit: usize, end: &str| -> Option<f64> {
        let text = std::fs::read_to_string(clock.join(format!("c{unit}.{end}"))).ok()?;
        text.trim().parse::<f64>().ok()
    };
    let mut hops_us: Vec<f64> = (1..n)
        .filter_map(|i| Some(read(i, "start")? - read(i - 1, "end")?))
        .collect();
    hops_us.sort_by(|a, b| a.total_cmp(b));
    let (median_us, p99_us) = (percentile(&hops_us, 50.0), percentile(&hops_us, 99.0));
    Ok(Figures {
        scenario: "chain".into(),
        summary: format!(
            "{n} units in {:.1} s: dependency hop (parent finished to child started) µs clock of the sessions median {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} hops (includes one `date` start, {:.2} ms here: median {:.2} ms without it); ms clock of the coordinator's records median {median:.1} ms, p99 {p99:.1} ms",
            elapsed.as_secs_f64(),
            median_us / 1000.0,
            p99_us / 1000.0,
            hops_us.last().copied().unwrap_or(f64::NAN) / 1000.0,
            hops_us.len(),
            date_start_us / 1000.0,
            (median_us - date_start_us) / 1000.0,
        ),
        values: serde_json::json!({
            "units": n,
            "seconds": elapsed.as_secs_f64(),
            "hop_median_ms": median,
            "hop_p99_ms": p99,
            "hops": hops.len(),
            "hop_us_median": median_us,
            "hop_us_p99": p99_us,
            "hop_us_max": hops_us.last().copied(),
            "hops_us": hops_us.len(),
            "date_start_us": date_start_us,
        }),
    })
}

/// How long `date` takes from its spawn to reading the clock, in µs
/// (median of `runs`): the µs hop includes one, in the child session.
fn date_start_us(runs: usize) -> anyhow::Result<f64> {
    let mut delays = Vec::with_capacity(runs);
    for _ in 0..runs {
        let spawned = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let output = std::process::Command::new("date").arg("+%s%6N").output()?;
        let printed: f64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;
        delays.push(printed - spawned.as_micros() as f64);
    }
    delays.sort_by(|a, b| a.total_cmp(b));
    Ok(percentile(&delays, 50.0))
}

async fn fan_in(plan: &FleetPlan) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let n = plan.fan_in_units;
    let layers = 50;
    let width = (n / layers).max(1);
    let mut units = String::new();
    for layer in 0..layers {
        for i in 0..width {
            units.push_str(&format!("  - id: l{layer}-{i}\n    uses: [db]\n"));
            if layer > 0 {
                let deps: Vec<String> = (0..10.min(width))
                    .map(|k| format!("l{}-{}", layer - 1, (i + k * 7) % width))
                    .collect();
                units.push_str(&format!("    depends_on: [{}]\n", deps.join(", ")));
            }
        }
    }
    let total = width * layers;
    let concurrency = 2 * plan.worker_slots;
    let manifest = no_op_manifest(
        dir.path(),
        "fan-in",
        &format!("batch: fan-in\nconcurrency: {concurrency}\nresources: {{db: {}}}\nplaybook:\n  name: noop\n  run: 'true'\nunits:\n{units}", concurrency / 2),
    )?;
    let fleet = fleet("bench-fan-in", plan).await;
    let pid = fleet.coordinator_pid();
    let cpu_before = process_cpu::own(pid);
    let started = Instant::now();
    let batch = fleet.client().enqueue(&manifest).await?;
    finish(&fleet, &batch, Duration::from_secs(1800)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu::own(pid) - cpu_before;
    fleet.stop().await;
    let rate = total as f64 / elapsed;
    let cpu_per_unit_ms = cpu * 1000.0 / total as f64;
    Ok(Figures {
        scenario: "fan-in".into(),
        summary: format!(
            "{total} units, {layers} layers, fan-in 10, db: {} of {concurrency}: {rate:.0} units/s; coordinator CPU {cpu_per_unit_ms:.2} ms per unit (scheduler, broker, Redis and API work together)",
            concurrency / 2
        ),
        values: serde_json::json!({"units": total, "seconds": elapsed, "units_per_s": rate, "coordinator_cpu_ms_per_unit": cpu_per_unit_ms}),
    })
}

/// A body cap well over a million-unit manifest (about 120 MB of JSON).
const ENQUEUE_MAX_BODY: &str = "1000000000";

/// Enqueues one huge batch while watching the coordinator: the enqueue's
/// time, the coordinator's peak memory, and whether it stayed responsive
/// (its worst `/healthz` answer, the lowest TTL its namespace lock fell to,
/// the slowest Redis answer meanwhile).
async fn enqueue(n: usize) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let spec = Spec {
        units: n,
        fan_in: 3,
        resources: 8,
        layers: 0,
        format: Format::Json,
        seed: 1,
    };
    let text = manifest_text(&spec);
    let started = Instant::now();
    let manifest =
        Manifest::parse(&text, "generated.json", dir.path()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let validated = started.elapsed().as_secs_f64();
    drop(text);
    // Serialised up front, so that the bench's own threads stay free to
    // watch the coordinator.
    let body = serde_json::to_vec(&EnqueueRequest { manifest })?;
    let body_mb = body.len() as f64 / 1e6;
    let env = [("REGATTA_MAX_MANIFEST_BYTES", ENQUEUE_MAX_BODY)];
    let fleet = Fleet::start_with_env("bench-enqueue", 0, 1, "30s", &env).await;
    let pid = fleet.coordinator_pid();
    let before = process_cpu::peak_mb(pid);
    let watch = Watch::coordinator(&fleet).await;
    let started = Instant::now();
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/batches", fleet.api))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let enqueued = started.elapsed().as_secs_f64();
    let status = answer.status();
    let created: serde_json::Value = answer.json().await.unwrap_or_default();
    // The batch's first dispatch and stores run on after the answer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stall = watch.stop().await;
    let peak = process_cpu::peak_mb(pid);
    let batch = created["batch_id"].as_str().map(str::to_owned);
    // What one status poll of so large a batch costs (`regatta watch` polls).
    let mut summary_ms = f64::NAN;
    if let Some(batch) = &batch {
        let asked = Instant::now();
        fleet.client().batch(batch).await?;
        summary_ms = asked.elapsed().as_secs_f64() * 1000.0;
        fleet.client().control(batch, "cancel").await?;
    }
    fleet.stop().await;
    anyhow::ensure!(batch.is_some(), "enqueue refused: {status} {created}");
    let worst_healthz_ms = stall.worst_healthz.as_secs_f64() * 1000.0;
    let worst_redis_ms = stall.worst_redis.as_secs_f64() * 1000.0;
    let lapsed = if stall.lock_lapsed() {
        "LAPSED"
    } else {
        "never lapsed"
    };
    Ok(Figures {
        scenario: format!("enqueue-{n}"),
        summary: format!(
            "{n} units ({body_mb:.0} MB JSON): validated in {validated:.2} s, enqueued (HTTP, re-validation, DAG, Redis) in {enqueued:.2} s; coordinator peak memory {peak:.0} MB (idle {before:.0} MB); worst /healthz {worst_healthz_ms:.0} ms over {} polls ({} failed); lock (TTL 15 s) lowest PTTL {} ms: {lapsed}; slowest Redis answer {worst_redis_ms:.0} ms; one batch summary {summary_ms:.0} ms",
            stall.healthz_samples, stall.healthz_failures, stall.min_lock_pttl_ms,
        ),
        values: serde_json::json!({
            "units": n,
            "body_mb": body_mb,
            "validate_s": validated,
            "enqueue_s": enqueued,
            "coordinator_peak_mb": peak,
            "coordinator_idle_peak_mb": before,
            "worst_healthz_ms": worst_healthz_ms,
            "healthz_polls": stall.healthz_samples,
            "healthz_failures": stall.healthz_failures,
            "min_lock_pttl_ms": stall.min_lock_pttl_ms,
            "lock_lapsed": stall.lock_lapsed(),
            "worst_redis_ms": worst_redis_ms,
            "batch_summary_ms": summary_ms,
        }),
    })
}
