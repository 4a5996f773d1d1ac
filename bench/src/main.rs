//! `regatta-bench`: generates manifests of any size and measures how manifest handling
//! scales.
//!
//! - `gen` writes a valid manifest with a layered dependency graph (see [`generate`]).
//! - `manifest-scale` times parse+validate, DAG build and plan at 100,000 and 1,000,000
//!   units and reports peak memory per size (see [`scale`]). Build with `--release`.
//! - `fleet` runs a coordinator and workers against the real broker and Redis:
//!   ceiling, throughput, chain, fan-in, enqueue and scale (see [`fleet`] and
//!   [`fleet_scale`]).
//! - `git` measures git mode: the conflict matrix, the merge train's own
//!   cost per candidate, and a git-mode batch end to end (see [`git_mode`]).

mod fleet;
mod fleet_scale;
mod generate;
mod git_mode;
mod process_cpu;
mod scale;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use generate::{Format, Spec};

#[derive(Debug, Parser)]
#[command(
    name = "regatta-bench",
    about = "Manifest generator and benchmarks for regatta"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a valid manifest with a layered dependency graph.
    Gen(GenArgs),
    /// Times parse+validate, DAG build and plan at growing sizes, with peak memory.
    ManifestScale(ScaleArgs),
    /// Runs fleet scenarios against the local RabbitMQ and Redis.
    Fleet(FleetArgs),
    /// Runs the git-mode scenarios (the fleet one against the local RabbitMQ and Redis).
    Git(GitArgs),
    /// Measures one size in this process and prints JSON (used by manifest-scale).
    #[command(hide = true)]
    Measure(GenArgs),
}

#[derive(Debug, Args)]
struct GenArgs {
    /// Number of units.
    #[arg(long)]
    units: usize,
    /// Most dependencies per unit (each unit past the first layer gets 1 to K).
    #[arg(long, default_value_t = 3)]
    fan_in: usize,
    /// Declared shared resources; about a third of the units use one.
    #[arg(long, default_value_t = 8)]
    resources: usize,
    /// Dependency layers (0: about 20).
    #[arg(long, default_value_t = 0)]
    layers: usize,
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    format: Format,
    /// Seed of the generator; the same seed gives the same manifest.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the manifest (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl GenArgs {
    fn spec(&self) -> Spec {
        Spec {
            units: self.units,
            fan_in: self.fan_in,
            resources: self.resources,
            layers: self.layers,
            format: self.format,
            seed: self.seed,
        }
    }
}

#[derive(Debug, Args)]
struct ScaleArgs {
    /// Manifest sizes to measure, in units.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000, 1_000_000])]
    sizes: Vec<usize>,
    /// Formats to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Format::Yaml, Format::Json])]
    formats: Vec<Format>,
    #[arg(long, default_value_t = 3)]
    fan_in: usize,
    #[arg(long, default_value_t = 8)]
    resources: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the measurements as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct FleetArgs {
    /// Scenarios: ceiling, throughput, chain, fan-in, enqueue, scale, or all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    scenarios: Vec<String>,
    #[arg(long, default_value_t = 10_000)]
    throughput_units: usize,
    #[arg(long, default_value_t = 1_000)]
    chain_units: usize,
    #[arg(long, default_value_t = 5_000)]
    fan_in_units: usize,
    /// Sizes of the enqueue scenario's batches, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000, 1_000_000])]
    enqueue_units: Vec<usize>,
    /// Slots per worker (two workers run).
    #[arg(long, default_value_t = 16)]
    slots: usize,
    /// Sessions of the scale scenario, all running at once.
    #[arg(long, default_value_t = 1_000)]
    scale_sessions: usize,
    /// Workers of the scale scenario.
    #[arg(long, default_value_t = 10)]
    scale_workers: usize,
    /// Slots per worker in the scale scenario.
    #[arg(long, default_value_t = 100)]
    scale_slots: usize,
    /// How long each session of the scale scenario sleeps (`60s`, `2m`, or seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    sleep: Duration,
    /// Where each scenario's JSON result goes.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
}

/// A duration as `90s`, `2m`, `500ms` or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 60s, 2m or 500ms"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[derive(Debug, Args)]
struct GitArgs {
    /// Scenarios: conflicts, train-overhead, git-batch, or all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    scenarios: Vec<String>,
    /// Unit branches of the conflict matrix and of the train's repository.
    #[arg(long, default_value_t = 100)]
    branches: usize,
    /// Merges run one `git merge-tree` process each, for the matrix's baseline.
    #[arg(long, default_value_t = 300)]
    sample: usize,
    /// Units per merge candidate.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Candidates timed by train-overhead.
    #[arg(long, default_value_t = 25)]
    candidates: usize,
    /// Units of the git-batch scenario.
    #[arg(long, default_value_t = 200)]
    batch_units: usize,
    /// Slots per worker (two workers run).
    #[arg(long, default_value_t = 16)]
    slots: usize,
    /// Where each scenario's JSON result goes.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fleet(args) => {
            let plan = fleet::FleetPlan {
                scenarios: args.scenarios,
                throughput_units: args.throughput_units,
                chain_units: args.chain_units,
                fan_in_units: args.fan_in_units,
                enqueue_units: args.enqueue_units,
                worker_slots: args.slots,
                scale: fleet_scale::ScalePlan {
                    sessions: args.scale_sessions,
                    workers: args.scale_workers,
                    slots: args.scale_slots,
                    sleep: args.sleep,
                    lease_ttl: "30s".to_owned(),
                },
                out_dir: args.out_dir,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(fleet::run(&plan))?;
            Ok(())
        }
        Command::Git(args) => {
            let plan = git_mode::GitPlan {
                scenarios: args.scenarios,
                branches: args.branches,
                sample: args.sample,
                window: args.window,
                candidates: args.candidates,
                batch_units: args.batch_units,
                worker_slots: args.slots,
                out_dir: args.out_dir,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(git_mode::run(&plan))?;
            Ok(())
        }
        Command::Gen(args) => scale::write_generated(&args.spec(), args.out.as_deref()),
        Command::Measure(args) => {
            let measurement = scale::measure(&args.spec())?;
            println!("{}", serde_json::to_string(&measurement)?);
            Ok(())
        }
        Command::ManifestScale(args) => {
            let plan = scale::ScalePlan {
                sizes: args.sizes,
                formats: args.formats,
                fan_in: args.fan_in,
                resources: args.resources,
                seed: args.seed,
            };
            let measurements = scale::run(&plan)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&measurements)?);
            } else {
                print!(
                    "{}",
                    scale::render(&measurements, plan.fan_in, plan.resources)
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_the_scale_scenario_takes_them() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
    }
}
