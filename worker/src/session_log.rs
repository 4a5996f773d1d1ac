//! The session's log: its processes' stdout and stderr (command, gates,
//! repairs) and the worker's notes about it, bounded, and the tail of it
//! that goes into the session's result.
//!
//! Most sessions say little, so the log is kept in memory up to
//! [`MEMORY_BOUND`] and written once, into the artifact store, with the
//! evidence ([`crate::evidence`]); only a log past that bound spills into
//! the store's `session.log` while the session runs. A session that wrote
//! nothing leaves no log file at all. No log file is made in the work dir.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::AsyncReadExt;

use crate::artifact::ArtifactStore;

/// How much of a log is kept in memory before it spills into the store.
pub const MEMORY_BOUND: usize = 256 * 1024;

/// The note written once when the log reaches its limit.
const LIMIT_NOTE: &[u8] = b"\n[regatta: log limit reached, further output dropped]\n";

/// A session's log, shared by every command of the session. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionLog {
    state: Arc<Mutex<State>>,
}

/// Where a log goes once it outgrows memory: the session's folder of the
/// store, the same file the evidence lists.
#[derive(Debug, Clone)]
pub struct Spill {
    pub store: ArtifactStore,
    pub batch_id: String,
    pub unit_id: String,
    pub session_id: String,
}

#[derive(Debug)]
struct State {
    memory: Vec<u8>,
    memory_bound: usize,
    /// The store's `session.log`, once the log spilled.
    spilled: Option<(PathBuf, std::fs::File)>,
    spill: Option<Spill>,
    /// Bytes kept so far, in memory or in the file.
    kept: u64,
    limit: u64,
    truncated: bool,
    /// The first write that failed: the log is incomplete, the worker's fault.
    failed: Option<String>,
}

/// What a finished session's log left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeptLog {
    /// The session wrote nothing.
    Empty,
    /// The whole log, still in memory.
    Memory(Vec<u8>),
    /// The log is in the store's `session.log`, at this path.
    Spilled(PathBuf),
}

impl SessionLog {
    /// A log of at most `limit` bytes that spills into `spill` past
    /// [`MEMORY_BOUND`] (or fails there, when `spill` is `None`).
    pub fn new(limit: u64, spill: Option<Spill>) -> SessionLog {
        SessionLog::with_memory_bound(limit, MEMORY_BOUND, spill)
    }

    /// [`SessionLog::new`] with another memory bound (tests spill small logs).
    pub fn with_memory_bound(limit: u64, memory_bound: usize, spill: Option<Spill>) -> SessionLog {
        SessionLog {
            state: Arc::new(Mutex::new(State {
                memory: Vec::new(),
                memory_bound,
                spilled: None,
                spill,
                kept: 0,
                limit,
                truncated: false,
                failed: None,
            })),
        }
    }

    /// Appends output, up to the log's limit; past it, notes once that
    /// output was dropped. A write that fails is remembered (see
    /// [`SessionLog::failure`]), and what follows is dropped.
    ///
    /// Spilled writes go to the page cache under a lock, at most one pipe
    /// read (16 KiB) at a time.
    pub fn append(&self, bytes: &[u8]) {
        let mut state = self.lock();
        if state.failed.is_some() || state.truncated {
            return;
        }
        if state.kept >= state.limit {
            state.truncated = true;
            state.write(LIMIT_NOTE);
            return;
        }
        let keep = (bytes.len() as u64).min(state.limit - state.kept) as usize;
        if state.write(&bytes[..keep]) {
            state.kept += keep as u64;
        }
    }

    /// Appends a note of the worker's, past the limit too (notes are few
    /// and short).
    pub fn note(&self, line: &str) {
        let mut state = self.lock();
        if state.failed.is_none() {
            state.write(line.as_bytes());
        }
    }

    /// The most the log keeps, in bytes (`--max-log-bytes`).
    pub fn limit(&self) -> u64 {
        self.lock().limit
    }

    /// Why the log is incomplete, when a write failed.
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Where the log is or will be in the store, for the session's result.
    pub fn store_path(&self) -> Option<PathBuf> {
        let state = self.lock();
        if let Some((path, _)) = &state.spilled {
            return Some(path.clone());
        }
        let spill = state.spill.as_ref()?;
        let dir = spill
            .store
            .session_dir(&spill.batch_id, &spill.unit_id, &spill.session_id)
            .ok()?;
        Some(dir.join(crate::artifact::LOG_FILE))
    }

    /// The last `lines` lines of the log.
    pub fn tail(&self, lines: usize) -> String {
        const WINDOW: usize = 8 * 1024;
        let state = self.lock();
        let bytes = match &state.spilled {
            None => state.memory[state.memory.len().saturating_sub(WINDOW)..].to_vec(),
            Some((path, _)) => read_end(path, WINDOW as u64).unwrap_or_default(),
        };
        drop(state);
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Hands over what the log kept, for the evidence; the log is empty
    /// afterwards.
    pub fn take(&self) -> KeptLog {
        let mut state = self.lock();
        match state.spilled.take() {
            Some((path, _file)) => KeptLog::Spilled(path),
            None if state.memory.is_empty() => KeptLog::Empty,
            None => KeptLog::Memory(std::mem::take(&mut state.memory)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves bytes and counters: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Writes to memory, or to the spill file once memory is full; says
    /// whether it worked.
    fn write(&mut self, bytes: &[u8]) -> bool {
        if self.spilled.is_none() && self.memory.len() + bytes.len() <= self.memory_bound {
            self.memory.extend_from_slice(bytes);
            return true;
        }
        if self.spilled.is_none() {
            let opened = match &self.spill {
                Some(spill) => spill
                    .store
                    .open_log(&spill.batch_id, &spill.unit_id, &spill.session_id)
                    .map_err(|e| e.to_string()),
                None => Err("the log outgrew memory and has no file to spill to".to_owned()),
            };
            match opened {
                Ok((path, mut file)) => {
                    let memory = std::mem::take(&mut self.memory);
                    if let Err(e) = file.write_all(&memory) {
                        self.failed = Some(format!("{}: {e}", path.display()));
                        return false;
                    }
                    self.spilled = Some((path, file));
                }
                Err(e) => {
                    self.failed = Some(e);
                    return false;
                }
            }
        }
        let Some((path, file)) = self.spilled.as_mut() else {
            return false;
        };
        match file.write_all(bytes) {
            Ok(()) => true,
            Err(e) => {
                let failed = format!("{}: {e}", path.display());
                // Noted in the log if there is room left for it.
                let _ = file.write_all(
                    format!(
                        "\n[regatta: the log could not be written ({e}); output was dropped]\n"
                    )
                    .as_bytes(),
                );
                self.failed = Some(failed);
                false
            }
        }
    }
}

/// The last `window` bytes of a file.
fn read_end(path: &std::path::Path, window: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(window)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Copies one command's output into the session's log. The pipe is drained
/// to its end whatever happens to the log (a full disk), so the session is
/// not killed by SIGPIPE for the worker's fault; a log that could not be
/// written is returned as the error.
pub(crate) async fn capture(
    reader: std::io::PipeReader,
    log: SessionLog,
) -> Result<(), std::io::Error> {
    let fd = std::os::fd::OwnedFd::from(reader);
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => log.append(&buffer[..n]),
        }
    }
    match log.failure() {
        Some(failed) => Err(std::io::Error::other(failed)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill(root: &std::path::Path) -> Spill {
        Spill {
            store: ArtifactStore::new(root),
            batch_id: "b".into(),
            unit_id: "u".into(),
            session_id: "s".into(),
        }
    }

    #[test]
    fn a_quiet_session_leaves_nothing_and_a_short_log_stays_in_memory() {
        let temp = tempfile::tempdir().unwrap();
        let log = SessionLog::new(1024, Some(spill(temp.path())));
        assert_eq!(log.take(), KeptLog::Empty);
        log.append(b"one\ntwo\n");
        log.note("[regatta: a note]\n");
        assert_eq!(log.tail(2), "two\n[regatta: a note]");
        assert_eq!(
            log.take(),
            KeptLog::Memory(b"one\ntwo\n[regatta: a note]\n".to_vec())
        );
        assert!(
            !temp.path().join("b").exists(),
            "nothing is written to the store before the evidence"
        );
    }

    #[test]
    fn a_long_log_spills_into_the_store_and_stops_at_its_limit() {
        let temp = tempfile::tempdir().unwrap();
        let log = SessionLog::with_memory_bound(40, 16, Some(spill(temp.path())));
        log.append(b"0123456789\n");
        log.append(b"abcdefghij\n");
        log.append(b"ABCDEFGHIJ\n");
        log.append(b"dropped\n");
        log.append(b"dropped too\n");
        let path = temp.path().join("b/u/s/session.log");
        assert_eq!(log.store_path(), Some(path.clone()));
        assert!(log.tail(1).contains("log limit reached"), "{}", log.tail(3));
        assert_eq!(log.take(), KeptLog::Spilled(path.clone()));
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            written,
            "0123456789\nabcdefghij\nABCDEFGHIJ\ndropped\n[regatta: log limit reached, further output dropped]\n"
        );
        assert!(log.failure().is_none());
    }

    #[test]
    fn a_store_that_cannot_take_the_spill_fails_the_log() {
        let temp = tempfile::tempdir().unwrap();
        // A file where the batch's folder must go.
        std::fs::write(temp.path().join("b"), "in the way").unwrap();
        let log = SessionLog::with_memory_bound(1024, 4, Some(spill(temp.path())));
        log.append(b"more than four bytes");
        assert!(log.failure().is_some());
    }
}
