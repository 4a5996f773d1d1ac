//! A TCP proxy to one service that a test can cut and restore: a cut closes
//! every connection through it and refuses new ones until restored. Good for
//! taking one service away from one process only (the network namespace of
//! [`crate::netns`] takes them all).
//!
//! It can also stall: bytes are held, in both directions, neither dropped
//! nor refused, until released; as a congested or partitioned network
//! holds a request that lands much later. Bytes held when a client exits
//! are still delivered on release.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// Bumped at each cut: live connections watch it and close.
    cuts: watch::Sender<u64>,
    /// True while every byte through the proxy is held.
    stalled: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on a free loopback port and relays to `target`.
    pub async fn start(target: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let (stalled, _) = watch::channel(false);
        let (accept_cut, accept_cuts) = (cut.clone(), cuts.subscribe());
        let accept_stalled = stalled.subscribe();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if accept_cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cuts = accept_cuts.clone();
                // Only cuts from now on close this connection.
                cuts.borrow_and_update();
                let stalled = accept_stalled.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = relay(inbound, outbound, stalled) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            cut,
            cuts,
            stalled,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Holds every byte from now on, both ways, until [`Proxy::release`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Delivers what was held, and relays again.
    pub fn release(&self) {
        self.stalled.send_replace(false);
    }
}

/// Relays both ways until the server side closes. The client's requests
/// are delivered even after the client left (their replies have nowhere to
/// go), as they would be by a network that held them.
async fn relay(inbound: TcpStream, outbound: TcpStream, stalled: watch::Receiver<bool>) {
    let (client_read, client_write) = inbound.into_split();
    let (server_read, server_write) = outbound.into_split();
    let mut requests = AbortOnDrop(tokio::spawn(pump(
        client_read,
        server_write,
        stalled.clone(),
    )));
    let responses = pump(server_read, client_write, stalled);
    tokio::pin!(responses);
    tokio::select! {
        (ended, _) = &mut responses => {
            if ended == Ended::SourceClosed {
                return; // the server closed
            }
            // The client is gone: what it sent still goes out.
            let _ = (&mut requests.0).await;
        }
        // The client closed: all it sent went out.
        _ = &mut requests.0 => {}
    }
    // The server gets a moment to act on it before the connection closes.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
}

/// Why a pump stopped.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Its source closed (or failed).
    SourceClosed,
    /// Its destination would not take more.
    WriteFailed,
}

/// Copies `from` into `to`, holding each chunk while stalled, until `from`
/// closes or `to` fails; `to` is handed back open.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) -> (Ended, OwnedWriteHalf) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return (Ended::SourceClosed, to),
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            return (Ended::SourceClosed, to);
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return (Ended::WriteFailed, to);
        }
    }
}

/// A task aborted when its handle is dropped (a cut drops the relay).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
