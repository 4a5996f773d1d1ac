//! An agent session's transcript: its stdout, as the agent wrote it, copied
//! to `transcript.jsonl` in the session folder (bounded like the log) and
//! handed to the session's [`Meter`] chunk by chunk, so that usage is read
//! as it is produced. The evidence pack stores it with stage `transcript`.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::meter::Meter;

/// Copies the agent's stdout into its transcript, keeping at most `limit`
/// bytes, while the meter reads every byte (also those past the limit).
/// The pipe is drained to its end whatever happens to the file.
pub(crate) async fn capture(
    reader: std::io::PipeReader,
    mut file: tokio::fs::File,
    limit: u64,
    meter: Arc<Meter>,
) -> Result<(), std::io::Error> {
    let fd = std::os::fd::OwnedFd::from(reader);
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut written = 0u64;
    let mut failed: Option<std::io::Error> = None;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        meter.feed_stdout(&buffer[..n]);
        if failed.is_some() || written >= limit {
            continue;
        }
        let keep = (n as u64).min(limit - written) as usize;
        match file.write_all(&buffer[..keep]).await {
            Ok(()) => written += keep as u64,
            Err(e) => failed = Some(e),
        }
    }
    meter.end_stdout();
    let flushed = file.flush().await;
    match failed {
        Some(e) => Err(e),
        None => flushed,
    }
}
