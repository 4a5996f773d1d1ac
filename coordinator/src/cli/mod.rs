//! The `regatta` command line: flags, environment, and one module per group
//! of commands.

mod batch;
mod evidence;
mod path_map;
mod report;
mod serve;
mod train;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// regatta runs large migrations as a fleet of parallel sessions.
///
/// A batch manifest splits a migration into units with dependencies; the
/// coordinator (`regatta serve`) publishes each unit onto RabbitMQ as soon as
/// its dependencies have succeeded; workers (`regatta-worker`) run each
/// unit's session under Redis leases that cap concurrency and protect shared
/// resources. The other commands validate manifests and steer batches through
/// the coordinator's HTTP API (REGATTA_API).
#[derive(Debug, Parser)]
#[command(name = "regatta", version)]
pub struct Args {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the fleet is; every setting also reads an environment variable.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The coordinator's HTTP API, for the commands that steer batches.
    #[arg(
        long,
        global = true,
        env = "REGATTA_API",
        default_value = "http://127.0.0.1:7700"
    )]
    pub api: String,
    /// Bearer token of the HTTP API; `serve` requires it from clients when set.
    #[arg(long, global = true, env = "REGATTA_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Where the broker and Redis are, the fleet's secret, the namespace
    /// (used by `serve` and the evidence commands).
    #[command(flatten)]
    pub fleet: regatta_telemetry::fleet_args::FleetArgs,
    /// Whether `secret` came from the command line rather than the
    /// environment (then `serve` warns); set by [`Connection::note_secret_source`].
    #[arg(skip)]
    pub secret_on_command_line: bool,
}

impl Connection {
    /// Records whether `--secret` was given on the command line; call it
    /// before the environment is scrubbed.
    pub fn note_secret_source(&mut self) {
        self.secret_on_command_line = self.fleet.secret_on_command_line();
    }

    /// The fleet's secret from `--secret-file` or `--secret`, checked.
    pub fn load_secret(&self) -> Result<regatta_secret::Loaded, regatta_secret::Error> {
        regatta_secret::load(
            self.fleet.secret.as_deref(),
            self.fleet.secret_file.as_deref(),
            self.secret_on_command_line,
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the coordinator daemon and its HTTP API.
    Serve(serve::ServeArgs),
    /// Checks a manifest; exit 0 with a summary, or exit 2 with every error.
    Validate {
        manifest: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows how a manifest would run: levels, critical path, resource demand.
    Plan {
        manifest: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validates a manifest and submits it; prints the batch id alone on the first line.
    Enqueue {
        manifest: PathBuf,
        /// Block until the batch ends; exit 0 when it succeeded, 1 when not.
        #[arg(long)]
        wait: bool,
        /// Show a live progress bar until the batch ends (implies --wait).
        #[arg(long)]
        watch: bool,
        /// The fleet sees this machine's folder HOST at FLEET (`docker
        /// compose` mounts REGATTA_PROJECT_DIR at /srv/regatta/project): the
        /// manifest's paths are sent as the fleet sees them, and a manifest
        /// outside HOST is refused.
        #[arg(long, env = "REGATTA_PATH_MAP", value_name = "HOST=FLEET")]
        path_map: Option<path_map::PathMap>,
    },
    /// Shows one batch (counts by state, resources, what ready units wait for) or all batches.
    Status {
        batch: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Follows a batch with a live progress bar until it ends.
    Watch { batch: String },
    /// Lists a batch's sessions, optionally in one state (running, failed, needs_review, ...).
    Sessions {
        batch: String,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Runs a needs_review unit again (or every one with --needs-review); the units it blocked run too.
    Retry {
        batch: String,
        unit: Option<String>,
        #[arg(long, conflicts_with = "unit")]
        needs_review: bool,
    },
    /// Marks a needs_review unit as done by hand; the units it blocked run.
    Skip { batch: String, unit: String },
    /// Stops a batch: nothing new starts and running sessions are killed.
    Cancel { batch: String },
    /// Holds new starts; running sessions finish.
    Pause { batch: String },
    /// Lets a paused batch go on.
    Resume { batch: String },
    /// Releases the rest of a batch after its calibration units.
    Approve { batch: String },
    /// Writes a batch's report (report.html, report.md, report.json): the
    /// outcome funnel, failure clusters, the timeline, distributions and a
    /// tuned playbook.
    Report {
        batch: String,
        /// The folder to write into (default: ./regatta-report-BATCH).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "all")]
        format: report::Format,
        /// The manifest the batch was enqueued from: the playbook's name and
        /// timeout, and the critical path `regatta plan` predicted.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Git mode: starts (or resumes) the merge train of a batch whose
    /// manifest says `merge: manual`.
    Merge { batch: String },
    /// Git mode: the merge train's history: candidates, their units,
    /// integration results and the commits landed.
    Train {
        batch: String,
        #[arg(long)]
        json: bool,
    },
    /// Git mode: the pairs of succeeded, unlanded unit branches (and each
    /// against the target's tip) that do not merge, with their files.
    Conflicts {
        batch: String,
        #[arg(long)]
        json: bool,
    },
    /// Lists live leases: owner worker, session, fencing number, expiry, semaphores.
    Leases {
        #[arg(long)]
        json: bool,
    },
    /// Prints the log of a unit's latest session.
    Logs { batch: String, unit: String },
    /// Gathers a batch's evidence into one folder: batch-pack.json (every
    /// unit's state, its latest session pack and the pack's sha256, the
    /// manifest's sha256), the session packs and the files they list.
    Evidence {
        batch: String,
        /// The folder to write (new or empty).
        #[arg(long)]
        out: PathBuf,
        /// The workers' artifact store (this machine's view of it).
        #[arg(
            long = "artifact-dir",
            value_name = "DIR",
            env = "REGATTA_ARTIFACT_STORE",
            default_value = ".regatta/artifacts"
        )]
        artifact_store: PathBuf,
        /// The manifest the batch was enqueued from, to hash when the
        /// coordinator does not report the manifest's sha256.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Re-checks every sha256 of a folder written by `regatta evidence`;
    /// exit 0 with a summary, or exit 2 naming each missing or altered file.
    VerifyEvidence { dir: PathBuf },
}

/// Runs one command; the exit code follows each command's contract.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let connection = args.connection;
    match args.command {
        Command::Serve(serve_args) => serve::run(&connection, serve_args).await,
        Command::Validate { manifest, json } => validate::validate(&manifest, json),
        Command::Plan { manifest, json } => validate::plan(&manifest, json),
        Command::Enqueue {
            manifest,
            wait,
            watch,
            path_map,
        } => batch::enqueue(&connection, &manifest, path_map.as_ref(), wait, watch).await,
        Command::Status { batch, json } => batch::status(&connection, batch.as_deref(), json).await,
        Command::Watch { batch } => batch::watch(&connection, &batch).await,
        Command::Sessions { batch, state, json } => {
            batch::sessions(&connection, &batch, state.as_deref(), json).await
        }
        Command::Retry {
            batch,
            unit,
            needs_review,
        } => batch::retry(&connection, &batch, unit.as_deref(), needs_review).await,
        Command::Skip { batch, unit } => batch::skip(&connection, &batch, &unit).await,
        Command::Cancel { batch } => batch::control(&connection, &batch, "cancel").await,
        Command::Pause { batch } => batch::control(&connection, &batch, "pause").await,
        Command::Resume { batch } => batch::control(&connection, &batch, "resume").await,
        Command::Approve { batch } => batch::control(&connection, &batch, "approve").await,
        Command::Report {
            batch,
            out,
            format,
            manifest,
        } => {
            report::report(
                &connection,
                &batch,
                out.as_deref(),
                format,
                manifest.as_deref(),
            )
            .await
        }
        Command::Merge { batch } => train::merge(&connection, &batch).await,
        Command::Train { batch, json } => train::show(&connection, &batch, json).await,
        Command::Conflicts { batch, json } => train::conflicts(&connection, &batch, json).await,
        Command::Leases { json } => batch::leases(&connection, json).await,
        Command::Logs { batch, unit } => batch::logs(&connection, &batch, &unit).await,
        Command::Evidence {
            batch,
            out,
            artifact_store,
            manifest,
        } => {
            evidence::evidence(
                &connection,
                &batch,
                &out,
                &artifact_store,
                manifest.as_deref(),
            )
            .await
        }
        Command::VerifyEvidence { dir } => evidence::verify(&connection, &dir).await,
    }
}
