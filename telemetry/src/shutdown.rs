//! How a binary learns it must stop: SIGTERM or SIGINT cancels its root
//! cancellation token, and everything it runs watches that token.

use tokio_util::sync::CancellationToken;

/// Cancels `root` on the first SIGTERM or SIGINT, from a task of its own.
/// Where the signals cannot be hooked (no signal driver), `root` is
/// cancelled at once: a process that could never be stopped cleanly should
/// not start working.
pub fn on_signals(root: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                // Cancelled by the process itself: nothing left to hear.
                _ = root.cancelled() => return,
            }
        }
        root.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sigterm_cancels_the_root_token() {
        let root = CancellationToken::new();
        on_signals(root.clone());
        // Let the task hook the signals before one is sent.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!root.is_cancelled());
        let pid = std::process::id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        tokio::time::timeout(std::time::Duration::from_secs(10), root.cancelled())
            .await
            .expect("SIGTERM cancels the root token");
    }
}
