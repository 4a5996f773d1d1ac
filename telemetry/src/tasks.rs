//! A process's long-running tasks, each spawned with a name and joined on
//! shutdown, so that none outlives the process unnoticed and the log says
//! which one ended, panicked, or had to be aborted.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};

/// Named tasks, joined together. Dropping it aborts those still running.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, String>,
}

/// How one task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It returned.
    Returned(String),
    /// It panicked (or was aborted).
    Failed(String),
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Spawns `task` under `name`, the name the log gives it when it ends.
    pub fn spawn(
        &mut self,
        name: impl Into<String>,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name.into());
    }

    /// How many tasks have not been joined yet.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Waits for the next task to end and says which one and how; `None`
    /// when none is left. Cancel-safe, for `select!`.
    pub async fn join_next(&mut self) -> Option<Ended> {
        let joined = self.set.join_next_with_id().await?;
        Some(match joined {
            Ok((id, ())) => {
                let name = self.names.remove(&id).unwrap_or_default();
                tracing::debug!(task = %name, "task ended");
                Ended::Returned(name)
            }
            Err(e) => {
                let name = self.names.remove(&e.id()).unwrap_or_default();
                log_failure(&name, &e);
                Ended::Failed(name)
            }
        })
    }

    /// Waits for every task, for `bound` at most (the caller has told them
    /// to stop); those still running then are aborted, and their names
    /// returned.
    pub async fn join_all(mut self, bound: Duration) -> Vec<String> {
        let joined =
            tokio::time::timeout(bound, async { while self.join_next().await.is_some() {} }).await;
        if joined.is_ok() {
            return Vec::new();
        }
        let mut late: Vec<String> = self.names.values().cloned().collect();
        late.sort();
        tracing::warn!(tasks = %late.join(", "), bound = ?bound, "tasks still running at shutdown; aborted");
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
        late
    }
}

fn log_failure(name: &str, e: &JoinError) {
    if e.is_panic() {
        tracing::error!(task = %name, "task panicked");
    } else {
        tracing::warn!(task = %name, "task aborted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_ended_task_is_named_with_how_it_ended() {
        let mut tasks = Tasks::new();
        tasks.spawn("returns", async {});
        tasks.spawn("panics", async { panic!("on purpose") });
        let mut ended = vec![
            tasks.join_next().await.unwrap(),
            tasks.join_next().await.unwrap(),
        ];
        ended.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            ended,
            vec![
                Ended::Failed("panics".into()),
                Ended::Returned("returns".into())
            ]
        );
        assert!(tasks.join_next().await.is_none());
    }

    #[tokio::test]
    async fn joining_waits_for_stopping_tasks_and_aborts_the_late_ones() {
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Tasks::new();
        let (watching, flag) = (stop.clone(), stopped.clone());
        tasks.spawn("stops", async move {
            watching.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        tasks.spawn("never stops", std::future::pending());
        stop.cancel();
        let late = tasks.join_all(Duration::from_secs(2)).await;
        assert_eq!(late, vec!["never stops".to_owned()]);
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
    }
}
