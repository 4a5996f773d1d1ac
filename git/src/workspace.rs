//! A fresh `git worktree` per attempt: the pinned base with the commits of
//! the unit's dependencies merged in, checked out from the worker's mirror.

use std::path::{Path, PathBuf};

use crate::change::{commit_on, UnitCommit};
use crate::merge::{is_ancestor, merge_commit, merge_tree};
use crate::mirror::Mirror;
use crate::repo::{Git, Identity, Oid};
use crate::Error;

/// The worktree a session runs in.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// Where the worktree is checked out.
    pub path: PathBuf,
    /// The pinned base commit of the batch.
    pub base: Oid,
    /// The commit the session starts from: base with the deps merged.
    pub start: Oid,
    /// The dependencies merged in, (unit, commit), in the order given.
    pub dependencies: Vec<(String, Oid)>,
    /// The worktree's own folder in the mirror (`worktrees/<name>`), read
    /// when it was made, before any session code ran in it.
    pub git_dir: PathBuf,
}

impl Workspace {
    /// Builds the start commit without a worktree (one merge commit
    /// "Merge dependency <unit>" per dependency not already contained, in
    /// order), then `git worktree add --detach <path> <start>`. When
    /// dependencies conflict, [`Error::Conflict`] names them ("dependencies
    /// a and b", or "dependency a" when one conflicts with the base alone)
    /// and the files. Dependency commits must already be in the mirror.
    pub async fn create(
        mirror: &Mirror,
        path: &Path,
        base: &Oid,
        dependencies: &[(String, Oid)],
        identity: &Identity,
    ) -> Result<Workspace, Error> {
        let git = mirror.git();
        let mut start = base.clone();
        for (index, (unit, commit)) in dependencies.iter().enumerate() {
            if is_ancestor(git, commit, &start).await? {
                continue;
            }
            let message = format!("Merge dependency {unit}");
            match merge_commit(git, &start, commit, &message, identity).await? {
                Ok(merged) => start = merged,
                Err(files) => {
                    return Err(
                        blame(mirror, base, &dependencies[..index], unit, commit, files).await?,
                    )
                }
            }
        }
        let path_arg = path.to_string_lossy();
        let serialised = mirror.worktree_lock().await;
        git.run(&["worktree", "add", "--detach", "--quiet", &path_arg, &start])
            .await?;
        drop(serialised);
        let git_dir = Git::at(path)
            .run(&["rev-parse", "--absolute-git-dir"])
            .await?;
        Ok(Workspace {
            path: path.to_path_buf(),
            base: base.clone(),
            start,
            dependencies: dependencies.to_vec(),
            git_dir: PathBuf::from(git_dir.trim_end_matches('\n')),
        })
    }

    /// Commits everything the session left in the worktree as one commit
    /// on [`Workspace::start`] (see [`commit_all`](crate::change::commit_all)
    /// for the result). Trusts neither the worktree's `.git` file nor its
    /// `HEAD`: a session's own commits, resets or a rewritten `.git` change
    /// nothing; the commit's tree is the worktree's contents.
    pub async fn commit(
        &self,
        identity: &Identity,
        message: &str,
    ) -> Result<Option<UnitCommit>, Error> {
        commit_on(&self.git(), &self.start, identity, message).await
    }

    /// Runs commands in this worktree through its repository in the mirror.
    pub fn git(&self) -> Git {
        Git::worktree(&self.git_dir, &self.path)
    }

    /// Removes the worktree (`worktree remove --force`, then `prune`);
    /// idempotent, and it also clears a folder git no longer knows.
    pub async fn remove(&self, mirror: &Mirror) -> Result<(), Error> {
        let git = mirror.git();
        let path_arg = self.path.to_string_lossy();
        let _serialised = mirror.worktree_lock().await;
        let removed = git
            .run(&["worktree", "remove", "--force", "--force", &path_arg])
            .await;
        if removed.is_err() && tokio::fs::try_exists(&self.path).await? {
            tokio::fs::remove_dir_all(&self.path).await?;
        }
        git.run(&["worktree", "prune"]).await?;
        Ok(())
    }
}

/// The conflict error for dependency `unit` (`commit`), which did not merge
/// into the base plus `earlier`: with the base alone, or with the first
/// earlier dependency it conflicts with, or else with them together.
async fn blame(
    mirror: &Mirror,
    base: &Oid,
    earlier: &[(String, Oid)],
    unit: &str,
    commit: &Oid,
    files: Vec<String>,
) -> Result<Error, Error> {
    let git = mirror.git();
    if let Err(files) = merge_tree(git, base, commit).await? {
        return Ok(Error::Conflict {
            what: format!("dependency {unit}"),
            files,
        });
    }
    for (other, other_commit) in earlier {
        if let Err(files) = merge_tree(git, other_commit, commit).await? {
            return Ok(Error::Conflict {
                what: format!("dependencies {other} and {unit}"),
                files,
            });
        }
    }
    let names: Vec<&str> = earlier.iter().map(|(name, _)| name.as_str()).collect();
    let what = if names.is_empty() {
        format!("dependency {unit}")
    } else {
        format!("dependencies {} and {unit}", names.join(", "))
    };
    Ok(Error::Conflict { what, files })
}
