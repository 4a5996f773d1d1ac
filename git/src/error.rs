//! What can go wrong in git mode, each naming the command or the files.

use std::path::PathBuf;

/// An error of git mode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `git` could not be started at all.
    #[error("cannot run git ({0}); git mode needs git 2.38 or later on PATH")]
    Spawn(#[source] std::io::Error),
    /// A git command exited non-zero.
    #[error("`git {command}` failed (exit {code:?}): {stderr}")]
    Command {
        command: String,
        code: Option<i32>,
        stderr: String,
    },
    /// Git printed something this crate does not understand.
    #[error("unexpected output of `git {command}`: {detail}")]
    Output { command: String, detail: String },
    /// Merging the named commits conflicts in these files.
    #[error("{what} conflicts in {}", files.join(", "))]
    Conflict { what: String, files: Vec<String> },
    /// The remote has no such branch, tag or commit: fix the manifest's
    /// `git:` block or push the rev.
    #[error("{rev} is not on the remote {remote}")]
    NotOnRemote { rev: String, remote: String },
    /// The mirror has no such commit: fetch it first.
    #[error("{rev} is not a commit in the mirror (fetch it first)")]
    NotInMirror { rev: String },
    /// The mirror's folder already mirrors another remote: give each remote
    /// its own folder.
    #[error("the mirror {dir} mirrors {found:?}, not {wanted:?}")]
    MirrorOfAnotherRemote {
        dir: PathBuf,
        found: String,
        wanted: String,
    },
    /// A git command ran past [`crate::repo::COMMAND_TIMEOUT`] and was killed.
    #[error("`git {command}` did not finish within {after:?} and was killed (a remote that does not answer?)")]
    TimedOut {
        command: String,
        after: std::time::Duration,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
