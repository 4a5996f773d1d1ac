//! The session's log: its processes' stdout and stderr, captured to a file
//! of bounded size, and the tail of it that goes into the session's result.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Copies the session's output into its log, keeping at most `limit` bytes
/// and noting where output was dropped. When the log cannot be written (a
/// full disk), the pipe is still drained to its end, so the session is not
/// killed by SIGPIPE for the worker's fault; the first write error is
/// returned, and noted in the log if there is room left for it.
pub(crate) async fn capture(
    reader: std::io::PipeReader,
    mut log: tokio::fs::File,
    limit: u64,
) -> Result<(), std::io::Error> {
    let fd = std::os::fd::OwnedFd::from(reader);
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut written = log.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mut truncated = false;
    let mut failed: Option<std::io::Error> = None;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if failed.is_some() {
            continue;
        }
        if written >= limit {
            if !truncated {
                let _ = log
                    .write_all(b"\n[regatta: log limit reached, further output dropped]\n")
                    .await;
                truncated = true;
            }
            continue;
        }
        let keep = (n as u64).min(limit - written) as usize;
        match log.write_all(&buffer[..keep]).await {
            Ok(()) => written += keep as u64,
            Err(e) => failed = Some(e),
        }
    }
    let flushed = log.flush().await;
    match failed {
        Some(e) => {
            let _ = log
                .write_all(
                    format!(
                        "\n[regatta: the log could not be written ({e}); output was dropped]\n"
                    )
                    .as_bytes(),
                )
                .await;
            let _ = log.flush().await;
            Err(e)
        }
        None => flushed,
    }
}

/// The last `lines` lines of a log, read from its end.
pub async fn log_tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 8 * 1024;
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return String::new();
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes).await;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
