//! Makes a session's evidence durable before its result is reported
//! (docs/evidence-pack.md, step 3): every file the store wrote for it (the
//! pack, the log, the copies) and every folder that gained an entry is
//! fsynced.
//!
//! Sessions that finish together share the work: one thread syncs, and the
//! requests that queue while it does are merged, so a folder they share
//! (the batch's, a unit's) is synced once for all of them, and the
//! filesystem's journal commits once for the group rather than once a
//! session.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::OnceLock;

/// One session's paths, and where to say they are durable.
struct Request {
    paths: Vec<PathBuf>,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Syncs `paths` (files and folders), together with those of the other
/// sessions waiting meanwhile; the error names the first path that could
/// not be synced.
pub async fn sync(paths: Vec<PathBuf>) -> Result<(), String> {
    if paths.is_empty() {
        return Ok(());
    }
    let (done, result) = tokio::sync::oneshot::channel();
    syncer()
        .send(Request { paths, done })
        .map_err(|_| "the store's sync thread is gone".to_owned())?;
    result
        .await
        .map_err(|_| "the store's sync thread is gone".to_owned())?
}

/// The process's sync thread, started on first use.
fn syncer() -> &'static mpsc::Sender<Request> {
    static SYNCER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    SYNCER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<Request>();
        let spawned = std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || {
                while let Ok(first) = requests.recv() {
                    let mut group = vec![first];
                    group.extend(requests.try_iter());
                    sync_group(group);
                }
            });
        if let Err(e) = spawned {
            // The receiver is dropped with the closure: every sync then
            // fails, and the sessions are handed back as the worker's fault.
            tracing::error!(error = %e, "cannot start the store's sync thread");
        }
        sender
    })
}

/// Syncs the union of a group's paths, each once, and answers each request.
fn sync_group(group: Vec<Request>) {
    let paths: BTreeSet<&PathBuf> = group.iter().flat_map(|r| r.paths.iter()).collect();
    // Files before folders would not matter to the answer: every request
    // waits for the whole group.
    let failed: Vec<(PathBuf, String)> = paths
        .into_iter()
        .filter_map(|path| {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .err()
                .map(|e| (path.clone(), format!("cannot sync {}: {e}", path.display())))
        })
        .collect();
    for request in group {
        let result = match failed.iter().find(|(path, _)| request.paths.contains(path)) {
            Some((_, why)) => Err(why.clone()),
            None => Ok(()),
        };
        let _ = request.done.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_syncing_together_get_their_own_answers() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("pack.json");
        std::fs::write(&file, "{}").unwrap();
        let missing = temp.path().join("gone");
        let (ok, failed) = tokio::join!(
            sync(vec![file.clone(), temp.path().to_path_buf()]),
            sync(vec![temp.path().to_path_buf(), missing.clone()]),
        );
        assert_eq!(ok, Ok(()));
        let failed = failed.unwrap_err();
        assert!(failed.contains(&missing.display().to_string()), "{failed}");
        assert_eq!(sync(Vec::new()).await, Ok(()));
    }
}
