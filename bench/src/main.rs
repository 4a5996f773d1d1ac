//! `regatta-bench`: generates manifests of any size and measures how manifest handling
//! scales.
//!
//! - `gen` writes a valid manifest with a layered dependency graph (see [`generate`]).
//! - `manifest-scale` times parse+validate, DAG build and plan at 100,000 and 1,000,000
//!   units and reports peak memory per size (see [`scale`]). Build with `--release`.
//! - `fleet` runs a coordinator and workers against the real broker and Redis:
//!   ceiling, throughput, chain, fan-in and enqueue (see [`fleet`]).
//! - `git` measures git mode: the conflict matrix, the merge train's own
//!   cost per candidate, and a git-mode batch end to end (see [`git_mode`]).

mod fleet;
mod generate;
mod git_mode;
mod scale;

use std::path::PathBuf;

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
    /// Scenarios: ceiling, throughput, chain, fan-in, enqueue, or all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    scenarios: Vec<String>,
    #[arg(long, default_value_t = 10_000)]
    throughput_units: usize,
    #[arg(long, default_value_t = 1_000)]
    chain_units: usize,
    #[arg(long, default_value_t = 5_000)]
    fan_in_units: usize,
    #[arg(long, default_value_t = 1_000_000)]
    enqueue_units: usize,
    /// Slots per worker (two workers run).
    #[arg(long, default_value_t = 16)]
    slots: usize,
    /// Where each scenario's JSON result goes.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
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
