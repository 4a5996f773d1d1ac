//! A TCP proxy to one service that a test can cut and restore: a cut closes
//! every connection through it and refuses new ones until restored. Good for
//! taking one service away from one process only (the network namespace of
//! [`crate::netns`] takes them all).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// Bumped at each cut: live connections watch it and close.
    cuts: watch::Sender<u64>,
}

impl Proxy {
    /// Listens on a free loopback port and relays to `target`.
    pub async fn start(target: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let (accept_cut, accept_cuts) = (cut.clone(), cuts.subscribe());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if accept_cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cuts = accept_cuts.clone();
                // Only cuts from now on close this connection.
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { port, cut, cuts }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
