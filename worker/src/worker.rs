//! A worker's lifetime: it connects to RabbitMQ and Redis, starts one
//! [`intake`](crate::intake) slot per session it may run at once, and on
//! shutdown stops taking work, lets running sessions finish within the grace
//! period and interrupts the rest.

use std::sync::Arc;

use regatta_broker::BrokerLink;
use regatta_proto::{EventKind, SessionEvent, WorkOrder};
use regatta_telemetry::tasks::Tasks;
use tokio_util::sync::CancellationToken;

use crate::lease::LeaseClient;
use crate::reporter::Reporter;
use crate::{Error, WorkerConfig};

/// What every slot shares.
pub(crate) struct Shared {
    pub(crate) config: WorkerConfig,
    pub(crate) link: BrokerLink,
    pub(crate) reporter: Reporter,
    pub(crate) leases: LeaseClient,
    /// Releases finished sessions' leases that the coordinator did not.
    pub(crate) releases: crate::lease::Releases,
    /// Cancelled when the worker stops taking work.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when running sessions must be killed (grace period over).
    pub(crate) kill_sessions: CancellationToken,
    /// Whether this worker's disks work; slots take no work while not.
    pub(crate) health: Arc<crate::health::Health>,
    /// Cancels and revokes, heard at once from the coordinator.
    pub(crate) notices: crate::control::Notices,
    /// Git mode: this worker's mirrors, one per remote.
    pub(crate) repositories: crate::repository::Repositories,
}

impl Shared {
    /// Sends an event of `order`'s session to the coordinator, as this
    /// worker sees it now; `fencing` is the fence of its leases (0 before
    /// they were held).
    pub(crate) async fn report(
        &self,
        order: &WorkOrder,
        fencing: u64,
        kind: EventKind,
    ) -> Result<(), Error> {
        let event = SessionEvent {
            batch_id: order.batch_id.clone(),
            unit_id: order.unit_id.clone(),
            session_id: order.session_id.clone(),
            attempt: order.attempt,
            fencing,
            worker: self.config.name.clone(),
            at_ms: chrono::Utc::now().timestamp_millis(),
            kind,
        };
        self.reporter.event(&event, &self.shutdown).await
    }
}

/// How long the background tasks may take to stop once told to (the
/// health watcher removes its record from Redis).
const BACKGROUND_STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a worker until `shutdown` is cancelled, then stops taking work,
/// lets running sessions finish within the grace period, kills the rest
/// (reporting them as interrupted, so the coordinator re-runs them), and
/// returns.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let link = BrokerLink::connect(&config.amqp_url, &config.name, config.names.clone()).await?;
    let reporter = Reporter::new(link.clone(), config.names.clone(), config.signer.clone());
    let leases = LeaseClient::connect(&config.redis_url, config.keys.clone()).await?;
    tokio::fs::create_dir_all(&config.work_dir)
        .await
        .map_err(|source| Error::WorkDir {
            path: config.work_dir.display().to_string(),
            source,
        })?;
    // The worker's own background tasks: the health watcher stops with
    // `shutdown`; the control subscriber only once the sessions are over,
    // since a session finishing in the grace period still hears cancels.
    let mut background = Tasks::new();
    let sessions_over = CancellationToken::new();
    let health = crate::health::start(&config, &shutdown, &mut background).await;
    let notices = crate::control::Notices::start(
        &config.redis_url,
        &config.keys,
        &sessions_over,
        &mut background,
    );
    let repositories = crate::repository::Repositories::new(config.work_dir.join(".git-mirrors"));
    // Stopped with the control subscriber, once no session can finish any more.
    let releases = crate::lease::Releases::start(
        leases.clone(),
        &notices,
        config.lease_ttl,
        &sessions_over,
        &mut background,
    );
    let shared = Arc::new(Shared {
        notices,
        repositories,
        config,
        link,
        reporter,
        leases,
        releases,
        shutdown: shutdown.clone(),
        kill_sessions: CancellationToken::new(),
        health,
    });
    tracing::info!(worker = %shared.config.name, slots = shared.config.slots, queue = %shared.config.names.work_queue(), "worker ready");

    let mut slots = Tasks::new();
    for slot in 0..shared.config.slots {
        slots.spawn(
            format!("slot {slot}"),
            crate::intake::slot_loop(shared.clone(), slot),
        );
    }
    shutdown.cancelled().await;
    tracing::info!(grace = ?shared.config.grace, "shutting down: no new work; waiting for running sessions");
    let grace = tokio::time::sleep(shared.config.grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = slots.join_next() => if next.is_none() { break },
            _ = &mut grace, if !shared.kill_sessions.is_cancelled() => {
                tracing::warn!("grace period over: interrupting running sessions");
                shared.kill_sessions.cancel();
            }
        }
    }
    sessions_over.cancel();
    background.join_all(BACKGROUND_STOP_WITHIN).await;
    shared.link.close("worker shutdown").await;
    Ok(())
}
