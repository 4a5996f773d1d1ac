//! The worker's side of git mode (docs/git-mode.md): one mirror per remote
//! for every session of this worker, a fresh worktree per attempt, and
//! after a unit's session passed, its commit, the check of its write set
//! and the push of its branch.
//!
//! A session is untrusted code: every git command runs with hooks and
//! fsmonitor off ([`regatta_git::repo`]), and what the session left in its
//! worktree is only ever read as files, never executed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regatta_git::change::outside_write_set;
use regatta_git::mirror::Mirror;
use regatta_git::repo::Identity;
use regatta_git::workspace::Workspace;
use regatta_proto::git::{session_ref, ChangedFile, GitReport, GitSession, UnitCommit};
use regatta_proto::{GitOrder, WorkOrder};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// The mirrors of this worker, one per remote, shared by its sessions.
pub struct Repositories {
    root: PathBuf,
    mirrors: Mutex<HashMap<String, Arc<Mirror>>>,
}

/// A session's worktree, ready for its command.
pub struct Prepared {
    pub workspace: Workspace,
    pub mirror: Arc<Mirror>,
    pub report: GitReport,
}

/// Why a worktree could not be made.
pub enum NotPrepared {
    /// The dependencies' commits conflict with each other: a person must
    /// decide, so the unit goes to review at once.
    Conflict {
        report: Box<GitReport>,
        reason: String,
    },
    /// Git or the remote failed.
    Failed(String),
}

impl Repositories {
    /// Mirrors live under `root` (the worker's work folder), one folder per
    /// remote named by the hash of its URL.
    pub fn new(root: PathBuf) -> Repositories {
        Repositories {
            root,
            mirrors: Mutex::default(),
        }
    }

    async fn mirror(&self, repo: &str) -> Result<Arc<Mirror>, regatta_git::Error> {
        let mut mirrors = self.mirrors.lock().await;
        if let Some(mirror) = mirrors.get(repo) {
            return Ok(mirror.clone());
        }
        let name = hex::encode(&Sha256::digest(repo.as_bytes())[..8]);
        let mirror = Arc::new(Mirror::open(&self.root.join(name), repo).await?);
        mirrors.insert(repo.to_owned(), mirror.clone());
        Ok(mirror)
    }

    /// Builds the session's worktree at `path`: fetches what the order
    /// names, then starts from its base with the dependencies merged in.
    pub async fn prepare(
        &self,
        order: &WorkOrder,
        git: &GitOrder,
        path: &Path,
    ) -> Result<Prepared, NotPrepared> {
        let failed = |what: &str, e: regatta_git::Error| {
            NotPrepared::Failed(format!("git mode: {what} of {}: {e}", git.repo))
        };
        let mirror = self
            .mirror(&git.repo)
            .await
            .map_err(|e| failed("cannot open the mirror", e))?;
        let mut wants: Vec<&str> = git.fetch.iter().map(String::as_str).collect();
        wants.push(&git.base);
        wants.extend(git.dependencies.iter().map(|(_, commit)| commit.as_str()));
        mirror
            .fetch(&wants)
            .await
            .map_err(|e| failed("cannot fetch", e))?;
        let mut report = GitReport {
            base: git.base.clone(),
            dependencies: git.dependencies.clone(),
            branch: git.branch.clone(),
            ..GitReport::default()
        };
        match Workspace::create(
            &mirror,
            path,
            &git.base,
            &git.dependencies,
            &identity(order),
        )
        .await
        {
            Ok(workspace) => {
                report.start = workspace.start.clone();
                Ok(Prepared {
                    workspace,
                    mirror,
                    report,
                })
            }
            Err(regatta_git::Error::Conflict { what, files }) => {
                let reason = format!(
                    "{what} conflict in {}: the unit cannot start until a person resolves it",
                    files.join(", ")
                );
                report.conflict = Some(files);
                Err(NotPrepared::Conflict {
                    report: Box::new(report),
                    reason,
                })
            }
            Err(e) => Err(failed("cannot make the worktree", e)),
        }
    }
}

impl Prepared {
    /// After the command and gates passed: commits the unit's changes,
    /// checks them against its write set and pushes its branch. An
    /// integration session commits nothing. `Err` is the reason the unit
    /// fails.
    pub async fn conclude(&mut self, order: &WorkOrder, git: &GitOrder) -> Result<(), String> {
        if matches!(git.session, GitSession::Integration { .. }) {
            return Ok(());
        }
        let message = commit_message(order);
        let made = self
            .workspace
            .commit(&identity(order), &message)
            .await
            .map_err(|e| format!("git mode: cannot commit the unit's changes: {e}"))?;
        let Some(made) = made else {
            // Nothing changed: the unit lands as it is.
            return Ok(());
        };
        let files: Vec<ChangedFile> = made.files.clone();
        self.report.commit = Some(UnitCommit {
            commit: made.commit.clone(),
            tree: made.tree.clone(),
            files,
            insertions: made.insertions,
            deletions: made.deletions,
        });
        if let Some(allowed) = &git.writes {
            let outside = outside_write_set(&made.files, allowed);
            if !outside.is_empty() {
                let reason = format!(
                    "the unit changed files outside its touches and outputs: {}",
                    outside.join(", ")
                );
                self.report.outside_writes = outside;
                return Err(reason);
            }
        }
        if let Some(branch) = &git.branch {
            // The session's own ref first: the coordinator lands from it,
            // and no later push (a stalled earlier attempt's) replaces it.
            let session = session_ref(&order.batch_id, &order.session_id);
            for refname in [&session, branch] {
                regatta_git::remote::push(&self.mirror, &made.commit, refname)
                    .await
                    .map_err(|e| format!("git mode: cannot push {refname}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Removes the worktree; its commit lives on in the mirror and remote.
    pub async fn remove(&self) {
        if let Err(e) = self.workspace.remove(&self.mirror).await {
            tracing::warn!(error = %e, path = %self.workspace.path.display(), "cannot remove a worktree");
        }
    }
}

/// Who a unit's commit is by: the session, so `git log` names it.
fn identity(order: &WorkOrder) -> Identity {
    Identity {
        name: format!("regatta {}/{}", order.batch_id, order.unit_id),
        email: format!("{}@regatta.invalid", order.session_id),
    }
}

/// The unit's commit message: its task, then where it came from.
fn commit_message(order: &WorkOrder) -> String {
    let title = match order.task.lines().next().filter(|t| !t.trim().is_empty()) {
        Some(task) => format!("{}: {}", order.unit_id, task.trim()),
        None => format!("{}: regatta unit", order.unit_id),
    };
    format!(
        "{title}\n\nRegatta-Batch: {}\nRegatta-Unit: {}\nRegatta-Session: {}\nRegatta-Attempt: {}\n",
        order.batch_id, order.unit_id, order.session_id, order.attempt
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_message_names_the_task_batch_unit_and_session() {
        let order = WorkOrder::example();
        let message = commit_message(&order);
        assert!(message.starts_with("customer-pkg: Migrate CUSTOMER_PKG\n\n"));
        assert!(message.contains("Regatta-Batch: b-1\n"));
        assert!(message.contains("Regatta-Session: s-1\n"));
        let who = identity(&order);
        assert_eq!(who.name, "regatta b-1/customer-pkg");
        assert_eq!(who.email, "s-1@regatta.invalid");
    }
}
