//! `regatta-worker`: runs sessions of regatta batches.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use regatta_proto::{Keys, Names, Signer};
use regatta_worker::cgroup::CgroupParent;
use regatta_worker::containment::{Containment, SessionUser};
use regatta_worker::supervisor::client::Supervisor;
use regatta_worker::{command, leader, WorkerConfig};
use tokio_util::sync::CancellationToken;

/// Takes work orders off RabbitMQ and runs their sessions.
///
/// Each of the N slots runs one session at a time: it claims the unit's
/// leases in Redis (batch concurrency cap, shared resources, touched files),
/// runs the command in its own process group with a deadline, runs the
/// verification gates, and reports the result to the coordinator. Orders are
/// executed only when signed with the fleet's REGATTA_SECRET. On SIGTERM
/// the worker stops taking work and lets running sessions finish within the
/// grace period; the rest are killed and re-run elsewhere.
#[derive(Debug, Parser)]
#[command(name = "regatta-worker", version)]
struct Args {
    /// Where the broker and Redis are, the fleet's secret, the namespace.
    #[command(flatten)]
    fleet: regatta_telemetry::fleet_args::FleetArgs,
    /// Run sessions as this user (UID or UID:GID, e.g. 65534:65534), not as
    /// the worker's: then they cannot read the worker's files, such as the
    /// secret file. Needs a worker running as root.
    #[arg(long, value_name = "UID[:GID]", env = "REGATTA_SESSION_USER")]
    session_user: Option<String>,
    /// Whether each session gets a cgroup v2 of its own, killed whole at its
    /// end: `auto` where the machine lets the worker make them, `required`
    /// to refuse to start otherwise, `off` to rely on the session leader
    /// alone (it kills every process its command left, as their subreaper).
    #[arg(long, env = "REGATTA_SESSION_CGROUPS", value_enum, default_value_t = CgroupMode::Auto)]
    session_cgroups: CgroupMode,
    /// Exec a leader binary for every command instead of forking it from
    /// one long-lived supervisor process (slower; the same guarantees).
    #[arg(long, env = "REGATTA_NO_SESSION_SUPERVISOR")]
    no_session_supervisor: bool,
    /// How many sessions this worker runs at once.
    #[arg(long, env = "REGATTA_SLOTS", default_value_t = 4)]
    slots: usize,
    /// Where session logs and artifact folders are kept.
    #[arg(long, env = "REGATTA_WORK_DIR", default_value = ".regatta/worker")]
    work_dir: PathBuf,
    /// Where each session's outputs, artifacts, log and evidence pack are
    /// stored once it ends; `regatta evidence` reads them from there.
    #[arg(
        long = "artifact-dir",
        value_name = "DIR",
        env = "REGATTA_ARTIFACT_STORE",
        default_value = ".regatta/artifacts"
    )]
    artifact_store: PathBuf,
    /// How long a lease lives without renewal (renewed every third of it).
    #[arg(long, env = "REGATTA_LEASE_TTL", default_value = "30s", value_parser = regatta_proto::duration::parse)]
    lease_ttl: Duration,
    /// On shutdown, how long running sessions may take to finish; also the
    /// pause between SIGTERM and SIGKILL of a session past its deadline.
    #[arg(long, env = "REGATTA_GRACE", default_value = "10s", value_parser = regatta_proto::duration::parse)]
    grace: Duration,
    /// The name this worker gives in events and leases (default: host:pid).
    #[arg(long, env = "REGATTA_WORKER_NAME")]
    name: Option<String>,
    /// A session tells the coordinator it started only once it has run
    /// this long (0s: at once); a shorter one reports its start with its
    /// end, saving a confirmed message per unit. Long enough that a small
    /// unit never sends `started`, short enough that `regatta status` shows
    /// a real session as running almost at once.
    #[arg(long, env = "REGATTA_STARTED_AFTER", default_value = "1s", value_parser = regatta_proto::duration::parse)]
    started_after: Duration,
    /// The largest session log kept, in bytes.
    #[arg(long, env = "REGATTA_MAX_LOG_BYTES", default_value_t = 10 * 1024 * 1024)]
    max_log_bytes: u64,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "REGATTA_LOG_JSON")]
    log_json: bool,
}

/// See `--session-cgroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CgroupMode {
    Auto,
    Required,
    Off,
}

fn main() -> ExitCode {
    // The hidden session-leader mode: see `leader`.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(leader::SUBCOMMAND) {
        let worker_pid = argv.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
        let deadline_ms = argv.get(3).and_then(|d| d.parse().ok()).unwrap_or(0);
        let command = argv.get(4).cloned().unwrap_or_default();
        return leader::main(
            worker_pid,
            deadline_ms,
            &command,
            argv.get(5).map(String::as_str),
        );
    }
    // Sessions run as this user by default: they must not read this
    // process's memory or its environment in /proc. First thing, before
    // any thread exists.
    if let Err(e) = regatta_secret::keep_memory_private() {
        eprintln!(
            "regatta-worker: cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {e}"
        );
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    let loaded = regatta_secret::load(
        args.fleet.secret.as_deref(),
        args.fleet.secret_file.as_deref(),
        args.fleet.secret_on_command_line(),
    );
    // SAFETY: no thread exists yet (neither the runtime nor telemetry).
    unsafe { regatta_secret::scrub_environment(regatta_secret::FLEET_VARIABLES) };
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("regatta-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = regatta_telemetry::init("regatta-worker", args.name.as_deref(), args.log_json);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("regatta-worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, loaded.secret)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regatta-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, secret: regatta_secret::FleetSecret) -> anyhow::Result<()> {
    anyhow::ensure!(args.slots > 0, "--slots must be at least 1");
    if let Some(name) = &args.name {
        anyhow::ensure!(
            !name.is_empty() && !name.chars().any(char::is_control),
            "--name must be non-empty text without control characters (it is stored in lease records)"
        );
    }
    anyhow::ensure!(
        args.lease_ttl >= Duration::from_secs(1),
        "--lease-ttl must be at least 1s"
    );
    let session_user = args.session_user.clone();
    let config = WorkerConfig {
        names: Names::new(&args.fleet.namespace)?,
        keys: Keys::new(&args.fleet.namespace)?,
        signer: Signer::new(secret.as_bytes()),
        amqp_url: args.fleet.amqp_url,
        redis_url: args.fleet.redis_url,
        slots: args.slots,
        work_dir: std::path::absolute(&args.work_dir).context("--work-dir")?,
        artifact_store: std::path::absolute(&args.artifact_store).context("--artifact-dir")?,
        lease_ttl: args.lease_ttl,
        grace: args.grace,
        name: args.name.unwrap_or_else(WorkerConfig::default_name),
        max_log_bytes: args.max_log_bytes,
        started_after: args.started_after,
        containment: containment(
            session_user.as_deref(),
            args.session_cgroups,
            !args.no_session_supervisor,
        )?,
    };
    tracing::info!("{}", config.containment.describe());
    let shutdown = CancellationToken::new();
    regatta_telemetry::shutdown::on_signals(shutdown.clone());
    regatta_worker::run(config, shutdown).await?;
    Ok(())
}

/// The leader beside this binary, the session user, and a cgroup per
/// session where this machine lets the worker make them.
fn containment(
    session_user: Option<&str>,
    mode: CgroupMode,
    supervise: bool,
) -> anyhow::Result<Containment> {
    let leader_exe = leader::executable(
        &std::env::current_exe().context("cannot find the worker's own executable")?,
    );
    let session_user = session_user.map(SessionUser::parse).transpose()?;
    let cgroups = match (mode, CgroupParent::probe()) {
        (CgroupMode::Off, _) => None,
        (_, Ok(parent)) => Some(parent),
        (CgroupMode::Required, Err(reason)) => {
            anyhow::bail!("--session-cgroups required, but sessions cannot get a cgroup of their own: {reason}")
        }
        (CgroupMode::Auto, Err(reason)) => {
            tracing::info!("sessions get no cgroup of their own: {reason}");
            None
        }
    };
    // One process forks every leader, cheaper than an exec per command; it
    // needs the dedicated leader binary (see `supervisor`). Started from the
    // main thread (this runs inside `block_on`): its death signal follows
    // the thread that forked it, and only the main thread lives as long as
    // the worker.
    let supervisor = match supervise
        && leader_exe.file_name() == Some(std::ffi::OsStr::new(leader::BINARY))
    {
        true => {
            match Supervisor::start(&leader_exe, &command::WITHHELD) {
                Ok(supervisor) => Some(supervisor),
                Err(e) => {
                    tracing::warn!("cannot start the session supervisor ({e}); each command exec's its own leader");
                    None
                }
            }
        }
        false => None,
    };
    Ok(Containment {
        leader_exe,
        session_user,
        cgroups,
        supervisor,
    })
}
