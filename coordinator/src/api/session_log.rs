//! Session logs read back from the workers' artifact store.
//!
//! The path is derived from ids the coordinator issued (batch, unit,
//! session), never taken from a worker's event: a forged `finished` event
//! naming `/etc/passwd` as its log must not make the API serve that file.
//! Every folder on the way is opened without following symlinks, and the log
//! itself only if it is a regular file, so a link planted in the store
//! cannot lead outside it either. The layout is the one the worker writes,
//! [`regatta_proto::evidence::layout`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::Mode;
use regatta_proto::evidence::{session_dir, LOG_FILE};

/// How much of a log's end the API serves.
const TAIL_BYTES: u64 = 64 * 1024;
/// How many of the last lines the API serves.
const TAIL_LINES: usize = 200;

/// What the store holds for one session's log.
#[derive(Debug, PartialEq, Eq)]
pub enum StoredLog {
    /// The log's last lines, and where it is.
    Found { path: PathBuf, tail: String },
    /// No log there (the session is still running, or the store is not shared).
    Missing,
    /// Something is there that must not be read: a symlink, a folder, a
    /// device, or an id that is not one plain path segment. The reason says which.
    Refused(String),
}

/// Reads the tail of `<store>/<batch>/<unit>/<session>/session.log`.
/// Blocking: run it off the async threads.
pub fn read_tail(store: &Path, batch: &str, unit: &str, session: &str) -> StoredLog {
    let path = match session_dir(store, batch, unit, session) {
        Ok(dir) => dir.join(LOG_FILE),
        Err(unsafe_id) => {
            return StoredLog::Refused(format!(
                "'{}' is not one plain path segment, so it names no folder of the store",
                unsafe_id.0
            ))
        }
    };
    let refused = |what: &str| StoredLog::Refused(format!("{}: {what}", path.display()));
    // The store's root is the operator's choice and may itself be a link.
    let directory = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut folder: OwnedFd = match open(store, directory, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return StoredLog::Missing,
        Err(e) => return refused(&format!("cannot open the artifact store: {e}")),
    };
    // `session_dir` checked that each id is one plain segment.
    for segment in [batch, unit, session] {
        folder = match openat(
            &folder,
            segment,
            directory | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => return StoredLog::Missing,
            Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                return refused(&format!("'{segment}' is a symlink or not a folder"))
            }
            Err(e) => return refused(&format!("cannot open '{segment}': {e}")),
        };
    }
    // O_NONBLOCK: a FIFO planted there must not hang the request.
    let log = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let mut file = match openat(&folder, LOG_FILE, log, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(nix::errno::Errno::ENOENT) => return StoredLog::Missing,
        Err(nix::errno::Errno::ELOOP) => return refused("the log is a symlink"),
        Err(e) => return refused(&format!("cannot open the log: {e}")),
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return refused("the log is not a regular file"),
        Err(e) => return refused(&format!("cannot stat the log: {e}")),
    }
    match tail(&mut file) {
        Ok(tail) => StoredLog::Found { path, tail },
        Err(e) => refused(&format!("cannot read the log: {e}")),
    }
}

/// The last [`TAIL_LINES`] lines within the last [`TAIL_BYTES`] bytes.
fn tail(file: &mut File) -> std::io::Result<String> {
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(TAIL_BYTES)))?;
    let mut bytes = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_dir(store: &Path) -> PathBuf {
        let dir = store.join("b-1").join("u").join("s-1");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_log_in_the_store_is_served() {
        let store = tempfile::tempdir().unwrap();
        let dir = session_dir(store.path());
        std::fs::write(dir.join(LOG_FILE), "one\ntwo\n").unwrap();
        assert_eq!(
            read_tail(store.path(), "b-1", "u", "s-1"),
            StoredLog::Found {
                path: dir.join(LOG_FILE),
                tail: "one\ntwo".into()
            }
        );
    }

    #[test]
    fn only_the_end_of_a_long_log_is_read() {
        let store = tempfile::tempdir().unwrap();
        let dir = session_dir(store.path());
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.join(LOG_FILE), text).unwrap();
        let StoredLog::Found { tail, .. } = read_tail(store.path(), "b-1", "u", "s-1") else {
            panic!("the log is there");
        };
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.ends_with("line 999"), "{tail}");
    }

    #[test]
    fn a_symlinked_log_is_refused() {
        let store = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "do not serve").unwrap();
        let dir = session_dir(store.path());
        std::os::unix::fs::symlink(&secret, dir.join(LOG_FILE)).unwrap();
        let found = read_tail(store.path(), "b-1", "u", "s-1");
        assert!(matches!(found, StoredLog::Refused(_)), "{found:?}");
    }

    #[test]
    fn a_symlinked_folder_is_refused() {
        let store = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("s-1")).unwrap();
        std::fs::write(outside.path().join("s-1").join(LOG_FILE), "do not serve").unwrap();
        std::fs::create_dir_all(store.path().join("b-1")).unwrap();
        std::os::unix::fs::symlink(outside.path(), store.path().join("b-1").join("u")).unwrap();
        let found = read_tail(store.path(), "b-1", "u", "s-1");
        assert!(matches!(found, StoredLog::Refused(_)), "{found:?}");
    }

    #[test]
    fn ids_that_climb_out_are_refused() {
        let store = tempfile::tempdir().unwrap();
        for (batch, unit, session) in [("..", "u", "s"), ("b", "../..", "s"), ("b", "u", "/etc")] {
            let found = read_tail(store.path(), batch, unit, session);
            assert!(matches!(found, StoredLog::Refused(_)), "{found:?}");
        }
    }

    #[test]
    fn a_fifo_is_refused_without_hanging() {
        let store = tempfile::tempdir().unwrap();
        let dir = session_dir(store.path());
        nix::unistd::mkfifo(&dir.join(LOG_FILE), Mode::S_IRWXU).unwrap();
        let found = read_tail(store.path(), "b-1", "u", "s-1");
        assert!(matches!(found, StoredLog::Refused(_)), "{found:?}");
    }

    #[test]
    fn no_store_or_no_log_is_missing() {
        let store = tempfile::tempdir().unwrap();
        let absent = store.path().join("absent");
        assert_eq!(read_tail(&absent, "b", "u", "s"), StoredLog::Missing);
        assert_eq!(read_tail(store.path(), "b", "u", "s"), StoredLog::Missing);
    }
}
