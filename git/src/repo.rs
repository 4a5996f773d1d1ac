//! One place that runs `git`: a clean, reproducible environment, no hook or
//! fsmonitor of the repository ever runs, and failures become [`Error`]s that
//! name the command.
//!
//! A worktree is handed to untrusted session code, which may plant hooks,
//! `core.fsmonitor` or `core.hooksPath` in any config it can reach; the
//! `-c` flags given on every command line win over all of them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::Error;

/// A full hex commit or tree id, as git prints it.
pub type Oid = String;

/// Tells whether `s` is a full object id: 40 (SHA-1) or 64 (SHA-256)
/// lowercase hex digits.
pub fn is_oid(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The author and committer of the commits regatta makes; passed by the
/// caller on every commit so that nothing depends on a user's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub email: String,
}

impl Identity {
    /// The environment that makes this identity both author and committer.
    pub(crate) fn env(&self) -> [(&'static str, &str); 4] {
        [
            ("GIT_AUTHOR_NAME", self.name.as_str()),
            ("GIT_AUTHOR_EMAIL", self.email.as_str()),
            ("GIT_COMMITTER_NAME", self.name.as_str()),
            ("GIT_COMMITTER_EMAIL", self.email.as_str()),
        ]
    }
}

/// What a git command printed and how it exited, for the commands whose
/// non-zero exit is an answer rather than a failure (merge-tree, push).
#[derive(Debug)]
pub struct Output {
    /// The exit code; None when git was killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// Tells whether git exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Options set on every command line: they override any config of the
/// repository, so a session cannot make the worker run its code.
const HARDENING: &[&str] = &[
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "protocol.file.allow=always",
    "-c",
    "protocol.ext.allow=never",
];

/// How much of git's stderr an error keeps: the end, where git says why.
const STDERR_TAIL: usize = 2000;

/// A repository (bare mirror or worktree) that commands run in.
#[derive(Clone, Debug)]
pub struct Git {
    /// Absolute, so that the discovery ceiling below is exact.
    dir: PathBuf,
    /// The repository of a worktree given explicitly, so that a `.git` file
    /// rewritten by a session cannot point git at a repository of its own.
    git_dir: Option<PathBuf>,
}

impl Git {
    /// Runs commands in `dir` (made absolute against the current directory).
    pub fn at(dir: impl Into<PathBuf>) -> Git {
        let dir = dir.into();
        let dir = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir()
                .map(|cwd| cwd.join(&dir))
                .unwrap_or(dir)
        };
        Git { dir, git_dir: None }
    }

    /// Runs commands in the worktree `work_tree` of the repository
    /// `git_dir` (`--git-dir`, `--work-tree`), ignoring its `.git` file.
    pub fn worktree(git_dir: impl Into<PathBuf>, work_tree: impl Into<PathBuf>) -> Git {
        Git {
            git_dir: Some(git_dir.into()),
            ..Git::at(work_tree)
        }
    }

    /// The repository's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs git in this repository; Ok(stdout) on exit 0, else
    /// [`Error::Command`] naming the args and the tail of stderr.
    pub async fn run(&self, args: &[&str]) -> Result<String, Error> {
        self.run_env(args, &[]).await
    }

    /// The same with extra environment variables (a commit's identity).
    pub async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String, Error> {
        let output = self.spawn(args, env, None).await?;
        let output = check(args, output)?;
        String::from_utf8(output.stdout).map_err(|_| Error::Output {
            command: args.join(" "),
            detail: "not UTF-8".to_owned(),
        })
    }

    /// Runs git with `input` on stdin and returns how it exited without
    /// failing on a non-zero exit (merge-tree exits 1 on conflicts).
    pub async fn run_with_input(&self, args: &[&str], input: &[u8]) -> Result<Output, Error> {
        self.spawn(args, &[], Some(input)).await
    }

    /// Runs git and returns how it exited, whatever the exit code.
    pub async fn output(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Output, Error> {
        self.spawn(args, env, None).await
    }

    async fn spawn(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        input: Option<&[u8]>,
    ) -> Result<Output, Error> {
        let mut command = Command::new("git");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("GIT_") {
                command.env_remove(&name);
            }
        }
        // Stop discovery at the repository's own folder, so a folder that
        // is not (yet) a repository never falls through to an enclosing one.
        let ceiling: OsString = self
            .dir
            .parent()
            .map(|parent| parent.as_os_str().to_owned())
            .unwrap_or_default();
        command
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CEILING_DIRECTORIES", ceiling)
            .env("LC_ALL", "C")
            .envs(env.iter().copied())
            .current_dir(&self.dir)
            .args(HARDENING);
        if let Some(git_dir) = &self.git_dir {
            let mut git_dir_arg = OsString::from("--git-dir=");
            git_dir_arg.push(git_dir);
            let mut work_tree_arg = OsString::from("--work-tree=");
            work_tree_arg.push(&self.dir);
            command.arg(git_dir_arg).arg(work_tree_arg);
        }
        command
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(Error::Spawn)?;
        // Feed stdin from its own task so a large input and a large output
        // cannot block each other.
        let feeder = match (input, child.stdin.take()) {
            (Some(input), Some(mut stdin)) => {
                let input = input.to_vec();
                Some(tokio::spawn(async move {
                    let written = stdin.write_all(&input).await;
                    drop(stdin);
                    written
                }))
            }
            _ => None,
        };
        // A black-holed remote must not hold a train or a worker's slot
        // for ever: the child is killed when the wait is dropped.
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| Error::TimedOut {
                command: args.join(" "),
                after: COMMAND_TIMEOUT,
            })??;
        if let Some(feeder) = feeder {
            // A broken pipe means git stopped reading early; its exit says why.
            match feeder.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
                Ok(Err(error)) => return Err(Error::Io(error)),
                Err(join) => return Err(Error::Io(std::io::Error::other(join))),
            }
        }
        Ok(Output {
            code: output.status.code(),
            stdout: output.stdout,
            stderr: output.stderr,
        })
    }
}

/// The longest any one git command may run: a fetch of a large
/// repository takes minutes, a hung remote for ever.
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Turns a non-zero exit into [`Error::Command`].
pub(crate) fn check(args: &[&str], output: Output) -> Result<Output, Error> {
    if output.success() {
        Ok(output)
    } else {
        Err(command_error(args, &output))
    }
}

/// The error for a command that failed, with the tail of its stderr.
pub(crate) fn command_error(args: &[&str], output: &Output) -> Error {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    let start = (start..=stderr.len())
        .find(|&index| stderr.is_char_boundary(index))
        .unwrap_or(stderr.len());
    Error::Command {
        command: redact(&args.join(" ")),
        code: output.code,
        stderr: stderr[start..].to_owned(),
    }
}

/// The command line with the credentials of any `scheme://user:secret@`
/// URL masked, so that an error or a log never carries a token.
pub(crate) fn redact(command: &str) -> String {
    command
        .split(' ')
        .map(|word| match word.find("://") {
            Some(scheme_end) => {
                let rest = &word[scheme_end + 3..];
                let authority_end = rest.find('/').unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => format!("{}://***{}", &word[..scheme_end], &rest[at..]),
                    None => word.to_owned(),
                }
            }
            None => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits NUL-terminated output (`-z`) into its fields.
pub(crate) fn nul_fields(bytes: &[u8]) -> Vec<String> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let mut fields: Vec<String> = bytes
        .split(|&b| b == 0)
        .map(|field| String::from_utf8_lossy(field).into_owned())
        .collect();
    // The output ends with a NUL, which leaves one empty field behind.
    if bytes.last() == Some(&0) {
        fields.pop();
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_are_full_lowercase_hex() {
        assert!(is_oid(&"a".repeat(40)));
        assert!(is_oid(&"0123456789abcdef".repeat(4)));
        assert!(!is_oid(&"A".repeat(40)));
        assert!(!is_oid("main"));
        assert!(!is_oid(&"a".repeat(39)));
        assert!(!is_oid(&"g".repeat(40)));
    }

    #[test]
    fn credentials_in_urls_are_masked() {
        assert_eq!(
            redact("fetch -- https://bot:s3cret@example.org/r.git main"),
            "fetch -- https://***@example.org/r.git main"
        );
        assert_eq!(
            redact("push -- ssh://git@host/r.git x"),
            "push -- ssh://***@host/r.git x"
        );
        assert_eq!(redact("fetch -- /srv/r.git"), "fetch -- /srv/r.git");
        assert_eq!(redact("fetch https://host/a@b"), "fetch https://host/a@b");
    }

    #[test]
    fn nul_fields_keep_empty_fields_but_not_the_terminator() {
        assert_eq!(nul_fields(b"a\0\0b\0"), vec!["a", "", "b"]);
        assert_eq!(nul_fields(b""), Vec::<String>::new());
    }
}
