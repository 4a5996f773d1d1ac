//! The one local bare mirror a worker (or the coordinator) keeps per remote:
//! every session's worktree, every merge and every push starts from it, so a
//! unit costs a fetch of what is new, never a clone.

use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

use crate::repo::{is_oid, redact, Git, Oid};
use crate::Error;

/// The config key that records which remote a mirror mirrors, so that a
/// folder is never silently reused for another repository.
const REMOTE_KEY: &str = "regatta.remote";

/// A bare repository that mirrors the refs and commits regatta asked for.
/// Shared by the sessions of a worker behind an `Arc`.
pub struct Mirror {
    git: Git,
    /// The remote as given: a path, or a file://, ssh:// or https:// URL.
    remote: String,
    /// Serialises fetches: two at once would race on the same ref updates.
    fetching: Mutex<()>,
    /// Serialises adding and removing worktrees: a `worktree prune` while
    /// another session's `worktree add` runs deletes its half-made entry.
    worktrees: Mutex<()>,
}

impl Mirror {
    /// Opens the bare repository in `dir` for `remote`, creating it (`git
    /// init --bare`) if absent. Safe if two processes race to create it: the
    /// repository is made in a sibling folder and renamed into place, and
    /// the loser of the race uses the winner's.
    pub async fn open(dir: &Path, remote: &str) -> Result<Mirror, Error> {
        let git = Git::at(dir);
        let dir = git.dir().to_path_buf();
        if !dir.join("HEAD").exists() {
            create(&dir, remote).await?;
        }
        let found = git
            .run(&["config", "--get", REMOTE_KEY])
            .await
            .unwrap_or_default();
        let found = found.trim();
        if found != remote {
            return Err(Error::MirrorOfAnotherRemote {
                dir,
                found: redact(found),
                wanted: redact(remote),
            });
        }
        Ok(Mirror {
            git,
            remote: remote.to_owned(),
            fetching: Mutex::new(()),
            worktrees: Mutex::new(()),
        })
    }

    /// Held while a worktree is added or removed (see [`crate::workspace`]).
    pub(crate) async fn worktree_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.worktrees.lock().await
    }

    /// Runs commands in the mirror.
    pub fn git(&self) -> &Git {
        &self.git
    }

    /// The remote this mirrors.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// The remote for messages: credentials in its URL masked.
    pub fn shown_remote(&self) -> String {
        redact(&self.remote)
    }

    /// Fetches these refs or commit ids from the remote into the mirror,
    /// skipping commit ids already present. A name (`main`, `v1.2`,
    /// `refs/heads/regatta/b/u`) is found on the remote as git would
    /// (`ls-remote`, then the rev-parse order: exact, `refs/`, tags, heads)
    /// and stored under the same full name here, so [`Mirror::resolve`]
    /// finds it. A commit id is fetched without a ref; a worktree or a ref
    /// pushed later keeps it, and git keeps unreferenced objects for weeks.
    pub async fn fetch(&self, wants: &[&str]) -> Result<(), Error> {
        let _serialised = self.fetching.lock().await;
        let (ids, names): (Vec<&str>, Vec<&str>) = wants.iter().partition(|want| is_oid(want));
        let mut refspecs: Vec<String> = self.missing(&ids).await?;
        if !names.is_empty() {
            let advertised = self.ls_remote(&names).await?;
            for name in names {
                let full = full_name(name, &advertised).ok_or_else(|| Error::NotOnRemote {
                    rev: name.to_owned(),
                    remote: self.shown_remote(),
                })?;
                refspecs.push(format!("+{full}:{full}"));
            }
        }
        if refspecs.is_empty() {
            return Ok(());
        }
        let mut args = vec![
            "fetch",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-auto-maintenance",
            "--quiet",
            "--",
            self.remote.as_str(),
        ];
        args.extend(refspecs.iter().map(String::as_str));
        self.git.run(&args).await?;
        Ok(())
    }

    /// `rev-parse --verify <rev>^{commit}` in the mirror: the commit `rev`
    /// names here (fetch it first).
    pub async fn resolve(&self, rev: &str) -> Result<Oid, Error> {
        let peeled = format!("{rev}^{{commit}}");
        let commit = self
            .git
            .run(&[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &peeled,
            ])
            .await
            .map_err(|_| Error::NotInMirror {
                rev: rev.to_owned(),
            })?;
        Ok(commit.trim().to_owned())
    }

    /// Tells whether the mirror has this commit.
    pub async fn has_commit(&self, id: &str) -> Result<bool, Error> {
        Ok(self.missing(&[id]).await?.is_empty())
    }

    /// The commit ids among `ids` that the mirror does not have yet.
    async fn missing(&self, ids: &[&str]) -> Result<Vec<String>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let input: String = ids.iter().map(|id| format!("{id}^{{commit}}\n")).collect();
        let args = ["cat-file", "--batch-check=%(objectname)"];
        let output = self.git.run_with_input(&args, input.as_bytes()).await?;
        let output = crate::repo::check(&args, output)?;
        let answers = String::from_utf8_lossy(&output.stdout);
        // One answer a line, in order: the id, or "<id>^{commit} missing".
        Ok(ids
            .iter()
            .zip(answers.lines())
            .filter(|(_, answer)| answer.ends_with(" missing"))
            .map(|(id, _)| (*id).to_owned())
            .collect())
    }

    /// The refs the remote advertises for these names: (full name, id).
    pub(crate) async fn ls_remote(&self, names: &[&str]) -> Result<Vec<(String, Oid)>, Error> {
        let mut args = vec!["ls-remote", "--", self.remote.as_str()];
        args.extend(names.iter().copied());
        let listing = self.git.run(&args).await?;
        Ok(listing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(id, name)| (name.to_owned(), id.to_owned()))
            .collect())
    }
}

impl std::fmt::Debug for Mirror {
    /// Without the remote's credentials, if its URL carries any.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Mirror")
            .field("dir", &self.git.dir())
            .field("remote", &self.shown_remote())
            .finish()
    }
}

/// The full ref name git would pick for `name` among the advertised refs
/// (rev-parse's order), if any.
pub(crate) fn full_name(name: &str, advertised: &[(String, Oid)]) -> Option<String> {
    [
        name.to_owned(),
        format!("refs/{name}"),
        format!("refs/tags/{name}"),
        format!("refs/heads/{name}"),
    ]
    .into_iter()
    .find(|candidate| {
        candidate.starts_with("refs/") && advertised.iter().any(|(full, _)| full == candidate)
    })
}

/// Makes the bare repository next to `dir` and renames it into place.
async fn create(dir: &Path, remote: &str) -> Result<(), Error> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    tokio::fs::create_dir_all(parent).await?;
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging: PathBuf = parent.join(format!(
        ".{name}.creating-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default()
    ));
    let made = async {
        let parent_git = Git::at(parent);
        let staging_arg = staging.to_string_lossy();
        parent_git
            .run(&[
                "-c",
                "init.defaultBranch=main",
                "init",
                "--bare",
                "--quiet",
                &staging_arg,
            ])
            .await?;
        Git::at(&staging)
            .run(&["config", REMOTE_KEY, remote])
            .await?;
        Ok::<(), Error>(())
    }
    .await;
    if let Err(error) = made {
        let _ = tokio::fs::remove_dir_all(&staging).await;
        return Err(error);
    }
    // Renaming over a missing or empty folder succeeds; over another
    // process's fresh mirror it fails, and that mirror is as good as ours.
    if tokio::fs::rename(&staging, dir).await.is_err() {
        let _ = tokio::fs::remove_dir_all(&staging).await;
        if !dir.join("HEAD").exists() {
            return Err(Error::Io(std::io::Error::other(format!(
                "cannot create the mirror {}: the folder exists and is not a repository",
                dir.display()
            ))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_in_rev_parse_order() {
        let advertised = vec![
            ("refs/heads/v1".to_owned(), "a".repeat(40)),
            ("refs/tags/v1".to_owned(), "b".repeat(40)),
            ("refs/heads/main".to_owned(), "c".repeat(40)),
        ];
        assert_eq!(
            full_name("v1", &advertised).as_deref(),
            Some("refs/tags/v1")
        );
        assert_eq!(
            full_name("main", &advertised).as_deref(),
            Some("refs/heads/main")
        );
        assert_eq!(
            full_name("refs/heads/main", &advertised).as_deref(),
            Some("refs/heads/main")
        );
        assert_eq!(
            full_name("heads/main", &advertised).as_deref(),
            Some("refs/heads/main")
        );
        assert_eq!(full_name("other", &advertised), None);
    }
}
