//! What can go wrong in git mode, each naming the command or the files.

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
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
