//! Git mode: the coordinator's mirrors of the batches' remotes, opened once
//! per remote and shared by every train; a git-mode batch's base is pinned
//! in them when it is enqueued.

use std::collections::HashMap;
use std::sync::Arc;

use regatta_git::mirror::Mirror;
use regatta_git::remote;

use super::Service;
use crate::manifest::Manifest;
use crate::Error;

/// The coordinator's mirrors, one per remote.
#[derive(Default, Clone)]
pub(super) struct Mirrors {
    open: Arc<tokio::sync::Mutex<HashMap<String, Arc<Mirror>>>>,
}

impl Mirrors {
    pub(super) async fn get(
        &self,
        root: &std::path::Path,
        repo: &str,
    ) -> Result<Arc<Mirror>, String> {
        let mut open = self.open.lock().await;
        if let Some(mirror) = open.get(repo) {
            return Ok(mirror.clone());
        }
        let name = regatta_proto::evidence::digest::sha256_hex(repo.as_bytes());
        let mirror = Mirror::open(&root.join(&name[..16]), repo)
            .await
            .map_err(|e| format!("cannot open a mirror of {repo}: {e}"))?;
        let mirror = Arc::new(mirror);
        open.insert(repo.to_owned(), mirror.clone());
        Ok(mirror)
    }
}

impl Service {
    /// Pins the manifest's `git.base` to a commit and checks that the
    /// target exists, before a git-mode batch is accepted.
    pub(super) async fn pin_base(&self, manifest: &Manifest) -> Result<Option<String>, Error> {
        let Some(git) = &manifest.git else {
            return Ok(None);
        };
        let mirror = self
            .mirrors
            .get(&self.config.git_dir, &git.repo)
            .await
            .map_err(Error::Invalid)?;
        let base = remote::pin(&mirror, &git.base).await.map_err(|e| {
            Error::Invalid(format!(
                "git.base '{}' cannot be pinned in {}: {e}",
                git.base, git.repo
            ))
        })?;
        let tip = remote::tip(&mirror, &git.target)
            .await
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", git.repo)))?;
        if tip.is_none() {
            return Err(Error::Invalid(format!(
                "git.target: branch '{}' does not exist in {}; create it (for example at {base})",
                git.target, git.repo
            )));
        }
        Ok(Some(base))
    }
}
