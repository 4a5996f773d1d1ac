//! `regatta serve`: the coordinator daemon.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use regatta_coordinator::api;
use regatta_coordinator::lock::{default_instance, CoordinatorLock, Loss};
use regatta_coordinator::service::{Service, ServiceConfig};
use regatta_proto::{Keys, Names, Signer};
use regatta_telemetry::tasks::Tasks;
use tokio_util::sync::CancellationToken;

use super::Connection;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "REGATTA_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// How often expired leases (dead workers) are looked for.
    #[arg(long, env = "REGATTA_REAP_INTERVAL", default_value = "1s", value_parser = regatta_proto::duration::parse)]
    pub reap_interval: Duration,
    /// The workers' lease TTL (the longest, if they differ): after Redis
    /// loses its data, no lease is granted for this long.
    #[arg(long, env = "REGATTA_LEASE_TTL", default_value = "30s", value_parser = regatta_proto::duration::parse)]
    pub lease_ttl: Duration,
    /// This coordinator's name in the namespace's lock (default: host and
    /// API port, so a restart in place takes its lock back at once).
    #[arg(long, env = "REGATTA_INSTANCE")]
    pub instance: Option<String>,
    /// How long the namespace's lock outlives a coordinator that stopped
    /// renewing it: another coordinator waits this long after a crash.
    #[arg(long, env = "REGATTA_LOCK_TTL", default_value = "15s", value_parser = regatta_proto::duration::parse)]
    pub lock_ttl: Duration,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "REGATTA_LOG_JSON")]
    pub log_json: bool,
    /// Listen on a non-loopback address without REGATTA_API_TOKEN: anyone
    /// who reaches the port may then enqueue commands that workers run.
    #[arg(long, env = "REGATTA_INSECURE")]
    pub insecure: bool,
    /// The workers' artifact store (this machine's view of it), where
    /// session logs are read from; never a path a worker's event names.
    #[arg(
        long = "artifact-dir",
        value_name = "DIR",
        env = "REGATTA_ARTIFACT_STORE",
        default_value = ".regatta/artifacts"
    )]
    pub artifact_store: std::path::PathBuf,
    /// Git mode: where the coordinator keeps its mirrors of the batches'
    /// repositories, to pin bases and build merge candidates.
    #[arg(
        long = "git-dir",
        value_name = "DIR",
        env = "REGATTA_GIT_DIR",
        default_value = ".regatta/git"
    )]
    pub git_dir: std::path::PathBuf,
    /// Serve `/metrics` without the API token (it names batch ids), for a
    /// Prometheus that cannot send one.
    #[arg(long, env = "REGATTA_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// The largest request body (a manifest), in bytes; larger ones get 413.
    #[arg(long, env = "REGATTA_MAX_MANIFEST_BYTES", default_value_t = api::DEFAULT_MAX_MANIFEST_BYTES)]
    pub max_manifest_bytes: usize,
    /// How long a request's headers may take to arrive.
    #[arg(long, env = "REGATTA_HEADER_TIMEOUT", default_value = "10s", value_parser = regatta_proto::duration::parse)]
    pub header_timeout: Duration,
    /// How long a request's whole body may take to arrive.
    #[arg(long, env = "REGATTA_BODY_TIMEOUT", default_value = "60s", value_parser = regatta_proto::duration::parse)]
    pub body_timeout: Duration,
    /// Open API connections at most (lowered to fit the open-file limit);
    /// past it, the oldest idle connection is closed for the newcomer.
    #[arg(long, env = "REGATTA_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// The tracing UI's address of one trace, with `{trace_id}` where the
    /// id goes (e.g. Jaeger's `http://localhost:16686/trace/{trace_id}`):
    /// the dashboard links each session to its trace.
    #[arg(long, env = "REGATTA_TRACE_URL")]
    pub trace_url: Option<String>,
}

pub async fn run(connection: &Connection, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let _telemetry = regatta_telemetry::init(
        "regatta-coordinator",
        args.instance.as_deref(),
        args.log_json,
    );
    let loaded = connection.load_secret()?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let secret = loaded.secret;
    anyhow::ensure!(
        args.lock_ttl >= Duration::from_secs(1),
        "--lock-ttl must be at least 1s (it was {:?}): the lock is renewed every third of it",
        args.lock_ttl
    );
    anyhow::ensure!(
        !args.reap_interval.is_zero(),
        "--reap-interval must be more than 0s"
    );
    let mut config = ServiceConfig {
        amqp_url: connection.fleet.amqp_url.clone(),
        redis_url: connection.fleet.redis_url.clone(),
        names: Names::new(&connection.fleet.namespace)?,
        keys: Keys::new(&connection.fleet.namespace)?,
        signer: Signer::new(secret.as_bytes()),
        reap_interval: args.reap_interval,
        lease_ttl: args.lease_ttl,
        tenure: None,
        git_dir: args.git_dir.clone(),
    };
    let shutdown = CancellationToken::new();
    regatta_telemetry::shutdown::on_signals(shutdown.clone());
    // Bound first: the default instance name is this host and this port, so
    // two coordinators on one host never share a name.
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let token = connection.api_token.clone().filter(|t| !t.is_empty());
    refuse_open_listen(address, token.is_some(), args.insecure)?;
    let limits = server_limits(&args)?;
    let trace_url = args.trace_url.clone().filter(|t| !t.is_empty());
    if let Some(template) = &trace_url {
        api::ui::check_trace_url(template).map_err(anyhow::Error::msg)?;
    }
    // One coordinator per namespace: a second one waits here.
    let instance = args
        .instance
        .clone()
        .unwrap_or_else(|| default_instance(&address.to_string()));
    let Some(lock) = CoordinatorLock::acquire(
        &config.redis_url,
        &config.keys,
        &instance,
        args.lock_ttl,
        &shutdown,
    )
    .await?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    tracing::info!(%instance, "coordinator lock held");
    config.tenure = Some(lock.tenure());
    // Renewed from now on, while the service starts too.
    let mut held = tokio::spawn(lock.hold(shutdown.clone()));
    let lost = |ended: Result<Option<Loss>, tokio::task::JoinError>| -> anyhow::Error {
        shutdown.cancel();
        match ended {
            Ok(Some(loss)) => anyhow::anyhow!(
                "lost the lock of namespace '{}' ({loss}): this coordinator stops so that only one publishes",
                connection.fleet.namespace
            ),
            Ok(None) => anyhow::anyhow!("stopped while starting"),
            Err(e) => anyhow::anyhow!("the lock's renewal failed ({e}): this coordinator stops"),
        }
    };
    let mut tasks = Tasks::new();
    let service = tokio::select! {
        started = Service::start(config, shutdown.clone(), &mut tasks) => started?,
        ended = &mut held => {
            let lost = lost(ended);
            stop(tasks, &shutdown).await;
            return Err(lost);
        }
    };
    // Tests and scripts read this line to find a port chosen by the system.
    println!("listening on http://{address}");
    tracing::info!(%address, namespace = %connection.fleet.namespace, "coordinator ready");
    let api_config = api::ApiConfig {
        token,
        metrics_public: args.metrics_public,
        artifact_store: args.artifact_store.clone(),
        body: api::BodyLimits {
            max_bytes: args.max_manifest_bytes,
            timeout: args.body_timeout,
        },
        ui: api::ui::UiConfig { trace_url },
    };
    let serving = api::serve(
        listener,
        api::router(service, api_config),
        limits,
        shutdown.clone(),
    );
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => {
            // Let the lock go, so a successor does not wait out its TTL.
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut held).await;
            stop(tasks, &shutdown).await;
            served?
        }
        ended = &mut held => {
            if shutdown.is_cancelled() && matches!(ended, Ok(None)) {
                let served = serving.await;
                stop(tasks, &shutdown).await;
                served?;
            } else {
                let lost = lost(ended);
                stop(tasks, &shutdown).await;
                return Err(lost);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long the service's tasks may take to stop once told to.
const TASKS_STOP_WITHIN: Duration = Duration::from_secs(5);

/// Tells the service's tasks to stop (the root token) and waits for them,
/// within [`TASKS_STOP_WITHIN`]; the log names any that had to be aborted.
async fn stop(tasks: Tasks, shutdown: &CancellationToken) {
    shutdown.cancel();
    tasks.join_all(TASKS_STOP_WITHIN).await;
}

/// Refuses to serve the API on a non-loopback address without a token,
/// unless `--insecure` says so: the API enqueues commands that workers run.
fn refuse_open_listen(
    address: std::net::SocketAddr,
    has_token: bool,
    insecure: bool,
) -> anyhow::Result<()> {
    if address.ip().is_loopback() || has_token {
        return Ok(());
    }
    if insecure {
        tracing::warn!(%address, "serving the API without a token on a non-loopback address (--insecure)");
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve the API on {address} without a token: anyone who reaches it could \
         enqueue commands for the workers to run. Set REGATTA_API_TOKEN (or --api-token), listen \
         on 127.0.0.1, or pass --insecure"
    )
}

/// The server's bounds, the connection cap lowered to fit the open-file
/// limit (raised to its hard limit first).
fn server_limits(args: &ServeArgs) -> anyhow::Result<api::ServerLimits> {
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections must be at least 1"
    );
    anyhow::ensure!(
        !args.header_timeout.is_zero() && !args.body_timeout.is_zero(),
        "--header-timeout and --body-timeout must be more than 0s"
    );
    let fd_limit = api::server::raise_fd_limit();
    let max_connections = api::server::connection_cap(args.max_connections, fd_limit);
    if max_connections < args.max_connections {
        tracing::warn!(
            wanted = args.max_connections,
            max_connections,
            fd_limit,
            "--max-connections lowered to fit the open-file limit (ulimit -n)"
        );
    }
    Ok(api::ServerLimits {
        max_connections,
        header_timeout: args.header_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_address_needs_a_token_or_insecure() {
        let open: std::net::SocketAddr = "0.0.0.0:7700".parse().unwrap();
        let public: std::net::SocketAddr = "192.0.2.1:7700".parse().unwrap();
        let loopback: std::net::SocketAddr = "127.0.0.1:7700".parse().unwrap();
        let loopback6: std::net::SocketAddr = "[::1]:7700".parse().unwrap();
        for address in [open, public] {
            let refused = refuse_open_listen(address, false, false).unwrap_err();
            assert!(refused.to_string().contains("--insecure"), "{refused}");
            assert!(refuse_open_listen(address, true, false).is_ok());
            assert!(refuse_open_listen(address, false, true).is_ok());
        }
        for address in [loopback, loopback6] {
            assert!(refuse_open_listen(address, false, false).is_ok());
        }
    }
}
