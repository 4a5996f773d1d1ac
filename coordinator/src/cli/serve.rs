//! `regatta serve`: the coordinator daemon.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use regatta_coordinator::api;
use regatta_coordinator::lock::{default_instance, CoordinatorLock, Loss};
use regatta_coordinator::service::{Service, ServiceConfig};
use regatta_proto::{Keys, Names, Signer};
use tokio_util::sync::CancellationToken;

use super::Connection;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "REGATTA_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// How often expired leases (dead workers) are looked for.
    #[arg(long, env = "REGATTA_REAP_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub reap_interval: Duration,
    /// The workers' lease TTL (the longest, if they differ): after Redis
    /// loses its data, no lease is granted for this long.
    #[arg(long, env = "REGATTA_LEASE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// This coordinator's name in the namespace's lock (default: host and
    /// API port, so a restart in place takes its lock back at once).
    #[arg(long, env = "REGATTA_INSTANCE")]
    pub instance: Option<String>,
    /// How long the namespace's lock outlives a coordinator that stopped
    /// renewing it: another coordinator waits this long after a crash.
    #[arg(long, env = "REGATTA_LOCK_TTL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lock_ttl: Duration,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "REGATTA_LOG_JSON")]
    pub log_json: bool,
}

pub async fn run(connection: &Connection, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let _telemetry = regatta_telemetry::init("regatta-coordinator", args.log_json);
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
        amqp_url: connection.amqp_url.clone(),
        redis_url: connection.redis_url.clone(),
        names: Names::new(&connection.namespace)?,
        keys: Keys::new(&connection.namespace)?,
        signer: Signer::new(secret.as_bytes()),
        reap_interval: args.reap_interval,
        lease_ttl: args.lease_ttl,
        tenure: None,
    };
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        signals.cancel();
    });
    // Bound first: the default instance name is this host and this port, so
    // two coordinators on one host never share a name.
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
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
                connection.namespace
            ),
            Ok(None) => anyhow::anyhow!("stopped while starting"),
            Err(e) => anyhow::anyhow!("the lock's renewal failed ({e}): this coordinator stops"),
        }
    };
    let service = tokio::select! {
        started = Service::start(config, shutdown.clone()) => started?,
        ended = &mut held => return Err(lost(ended)),
    };
    // Tests and scripts read this line to find a port chosen by the system.
    println!("listening on http://{address}");
    tracing::info!(%address, namespace = %connection.namespace, "coordinator ready");
    let serving = api::serve(
        listener,
        api::router(service, connection.api_token.clone()),
        shutdown.clone(),
    );
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => {
            // Let the lock go, so a successor does not wait out its TTL.
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut held).await;
            served?
        }
        ended = &mut held => {
            if shutdown.is_cancelled() && matches!(ended, Ok(None)) {
                serving.await?;
            } else {
                return Err(lost(ended));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
