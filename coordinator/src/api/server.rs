//! The API's HTTP/1.1 server, bounded so that idle or slow clients cannot
//! take it down without a token: a request's headers must arrive within
//! `header_timeout`, at most `max_connections` are open at once, and when
//! that many are open the oldest one that is not serving a request (idle,
//! or still sending its headers) is closed to make room for the newcomer.
//! A flood of idle sockets therefore costs its sender its oldest sockets,
//! never `/healthz` or an operator's request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How the server bounds its clients.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Open connections at most; see [`connection_cap`] for the file limit.
    pub max_connections: usize,
    /// From a connection's start (or its previous response) to a request's
    /// complete headers.
    pub header_timeout: Duration,
}

/// File descriptors kept for Redis, RabbitMQ, logs and the listener itself.
const RESERVED_FDS: u64 = 128;

/// Raises the soft limit of open files to the hard limit (the default soft
/// limit is often 1024), and returns the soft limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// The connection cap that fits the open-file limit: a cap above it would
/// let accepted sockets use up the descriptors Redis and RabbitMQ need.
pub fn connection_cap(wanted: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(limit) => {
            let room = limit.saturating_sub(RESERVED_FDS).max(1);
            wanted
                .min(usize::try_from(room).unwrap_or(usize::MAX))
                .max(1)
        }
        None => wanted.max(1),
    }
}

/// One open connection, as the accept loop sees it.
struct Tracked {
    /// Requests being served on it: a connection at 0 may be closed for room.
    in_flight: Arc<AtomicUsize>,
    evict: CancellationToken,
}

/// Every open connection, oldest first (ids grow).
#[derive(Default)]
struct Connections {
    open: Mutex<BTreeMap<u64, Tracked>>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Tracked>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for one more connection under `cap`: closes the oldest
    /// idle connection if needed. False when every connection is busy.
    fn make_room(&self, cap: usize) -> bool {
        let mut open = self.lock();
        if open.len() < cap {
            return true;
        }
        let idle = open
            .iter()
            .find(|(_, c)| c.in_flight.load(Ordering::SeqCst) == 0)
            .map(|(&id, _)| id);
        match idle.and_then(|id| open.remove(&id)) {
            Some(evicted) => {
                evicted.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// Counts a request as in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests
/// finish (for up to ten seconds).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = Arc::new(Connections::default());
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut refused = 0u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        // Reap finished connection tasks as we go.
        while tasks.try_join_next().is_some() {}
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, or a connection reset before accept:
                // wait a moment rather than spin.
                tracing::warn!(error = %e, "accepting an API connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !connections.make_room(limits.max_connections) {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused,
                    "every API connection is busy; refusing new ones (raise --max-connections)"
                );
            }
            drop(stream);
            continue;
        }
        let id = next_id;
        next_id += 1;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let evict = shutdown.child_token();
        let stopping = shutdown.clone();
        connections.lock().insert(
            id,
            Tracked {
                in_flight: in_flight.clone(),
                evict: evict.clone(),
            },
        );
        let router = router.clone();
        let connections = connections.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let guard = InFlight::start(&in_flight);
                let router = router.clone();
                async move {
                    let response = router.oneshot(request.map(Body::new)).await;
                    drop(guard);
                    response
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(%remote, error = %e, "API connection ended");
                    }
                }
                // Evicted for room: closed at once (it was serving nothing).
                // Shutdown: the request in progress finishes.
                _ = evict.cancelled() => if stopping.is_cancelled() {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            connections.lock().remove(&id);
            Ok::<(), Infallible>(())
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_file_limit() {
        assert_eq!(connection_cap(512, Some(20_000)), 512);
        assert_eq!(connection_cap(512, Some(600)), 600 - RESERVED_FDS as usize);
        assert_eq!(connection_cap(512, Some(10)), 1);
        assert_eq!(connection_cap(512, None), 512);
    }

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        let connections = Connections::default();
        let busy = Arc::new(AtomicUsize::new(1));
        let mut tokens = Vec::new();
        for id in 0..3 {
            let token = CancellationToken::new();
            tokens.push(token.clone());
            let in_flight = if id == 0 {
                busy.clone()
            } else {
                Arc::new(AtomicUsize::new(0))
            };
            connections.lock().insert(
                id,
                Tracked {
                    in_flight,
                    evict: token,
                },
            );
        }
        assert!(connections.make_room(3));
        // 0 is busy: 1, the oldest idle one, goes.
        assert!(!tokens[0].is_cancelled());
        assert!(tokens[1].is_cancelled());
        assert!(!tokens[2].is_cancelled());
        assert!(connections.make_room(3), "a slot was free");
        assert!(connections.make_room(2));
        assert!(tokens[2].is_cancelled());
        assert!(!connections.make_room(1), "only a busy connection is left");
    }
}
