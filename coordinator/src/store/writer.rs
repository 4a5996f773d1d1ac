//! The store's writer: one task that turns writes into fenced scripts
//! within Redis's budgets, sends them in order, waits out outages and
//! answers the writes Redis refuses for good.

use super::budget::{hset_ops, oversized, Op, BYTES_PER_COMMAND, FIELDS_PER_COMMAND};
use super::*;

/// How long, once shutdown is cancelled, the writer still takes writes
/// from the tasks that finish their last work.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the writer waits for Redis to answer one script.
pub(super) const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A write as the writer handles it: operations, or a marker.
enum Step {
    Store {
        what: String,
        ops: Vec<Op>,
        refused: Option<Error>,
        answer: Answer,
    },
    Flush(oneshot::Sender<Option<String>>),
    Then(Box<dyn FnOnce() + Send>),
}

/// Who learns that a write was refused.
enum Answer {
    /// The request that made it ([`Write::Checked`]).
    Caller(oneshot::Sender<Result<(), Error>>),
    /// The orders queued after it: they are not published.
    Orders,
    /// Nobody: a clean-up that may fail for the reason it cleans up.
    Log,
}

impl Step {
    fn refused(&self) -> bool {
        matches!(
            self,
            Step::Store {
                refused: Some(_),
                ..
            }
        )
    }

    fn refuse(&mut self, why: impl FnOnce(&str) -> Error) {
        if let Step::Store { what, refused, .. } = self {
            if refused.is_none() {
                *refused = Some(why(what));
            }
        }
    }
}

/// What came of one script.
enum Sent {
    Stored,
    /// An error reply: sent again, it would be refused again.
    Refused(String),
    /// Another tenure holds the lock.
    Deposed,
}

/// The task that sends every write, in order.
pub(super) struct Writer {
    connection: ConnectionManager,
    /// Redis's `proto-max-bulk-len`.
    largest_value: usize,
    keys: Keys,
    tenure: Option<Tenure>,
    script: redis::Script,
    /// Set once Redis refused a write as another tenure's: who holds it.
    lost: Option<String>,
    /// A write not checked by its caller was refused since the last marker.
    refused_since_marker: bool,
}

impl Writer {
    /// Starts the task that sends every write, in order, on its own
    /// connection, in `tasks`; it ends once `shutdown` is cancelled and what
    /// was queued is stored (see [`Writer::run`]).
    pub(super) fn spawn(
        connection: ConnectionManager,
        largest_value: usize,
        keys: Keys,
        tenure: Option<Tenure>,
        receiver: mpsc::UnboundedReceiver<Write>,
        shutdown: CancellationToken,
        tasks: &mut Tasks,
    ) {
        let writer = Writer {
            connection,
            largest_value,
            keys,
            tenure,
            script: redis::Script::new(&scripts::FENCED_WRITE),
            lost: None,
            refused_since_marker: false,
        };
        tasks.spawn("store writer", writer.run(receiver, shutdown));
    }

    /// Sends every write until the store's handles are all gone, or until
    /// shutdown: the tasks that write finish their last work after it is
    /// cancelled (an event being applied, a request being answered), so
    /// their writes are taken for [`SHUTDOWN_GRACE`] more; then no new
    /// write is taken, and those queued are stored before it ends.
    async fn run(
        mut self,
        mut receiver: mpsc::UnboundedReceiver<Write>,
        shutdown: CancellationToken,
    ) {
        let closing = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::pin!(closing);
        let mut closed = false;
        let mut batch = Vec::new();
        loop {
            let received = tokio::select! {
                received = receiver.recv_many(&mut batch, 512) => received,
                _ = &mut closing, if !closed => {
                    closed = true;
                    receiver.close();
                    continue;
                }
            };
            if received == 0 {
                return;
            }
            let mut steps = Vec::with_capacity(batch.len());
            for write in batch.drain(..) {
                self.steps_of(write, &mut steps);
            }
            self.apply(&mut steps).await;
            self.finish(steps);
        }
    }

    /// Turns a write into the steps that carry it.
    fn steps_of(&self, write: Write, steps: &mut Vec<Step>) {
        let store = |what: String, ops: Vec<Op>, answer| Step::Store {
            what,
            ops,
            refused: None,
            answer,
        };
        match write {
            Write::Flush(done) => steps.push(Step::Flush(done)),
            Write::Then(callback) => steps.push(Step::Then(callback)),
            Write::Checked { writes, done } => {
                let mut what = Vec::new();
                let mut ops = Vec::new();
                for write in writes {
                    if let Some((w, o)) = self.ops_of(write) {
                        what.push(w);
                        ops.extend(o);
                    }
                }
                steps.push(store(what.join(", "), ops, Answer::Caller(done)));
            }
            Write::Forget { batch_id } => {
                // Two steps: a refused index (the usual culprit) must not
                // keep the records.
                let keys = &self.keys;
                let del = [
                    keys.batch(&batch_id),
                    keys.units(&batch_id),
                    keys.sessions(&batch_id),
                ]
                .into_iter()
                .map(|key| Op {
                    name: "del",
                    keys: vec![key],
                    args: vec![],
                })
                .collect();
                steps.push(store(
                    format!("the removal of batch '{batch_id}'"),
                    del,
                    Answer::Log,
                ));
                let zrem = Op {
                    name: "zrem",
                    keys: vec![keys.batches()],
                    args: vec![batch_id.clone()],
                };
                steps.push(store(
                    format!("the removal of batch '{batch_id}' from {}", keys.batches()),
                    vec![zrem],
                    Answer::Log,
                ));
            }
            other => {
                if let Some((what, ops)) = self.ops_of(other) {
                    steps.push(store(what, ops, Answer::Orders));
                }
            }
        }
    }

    /// What a data write is called in messages, and its operations.
    fn ops_of(&self, write: Write) -> Option<(String, Vec<Op>)> {
        let keys = &self.keys;
        Some(match write {
            Write::Hash { key, fields } => {
                // Moved, not copied: a manifest may be hundreds of MB.
                let what = format!("{key} ({} fields)", fields.len());
                let ops = hset_ops(key, fields);
                (what, ops)
            }
            Write::IndexBatch {
                batch_id,
                created_ms,
            } => (
                format!("batch '{batch_id}' in {}", keys.batches()),
                vec![Op {
                    name: "zadd",
                    keys: vec![keys.batches()],
                    args: vec![created_ms.to_string(), batch_id],
                }],
            ),
            Write::Release {
                session_id,
                fence,
                actual_micros,
            } => (
                format!("the release of session {session_id}'s leases"),
                vec![Op {
                    name: "release",
                    keys: vec![
                        keys.leases(),
                        keys.lease(&session_id),
                        keys.done(&session_id),
                    ],
                    args: vec![
                        session_id,
                        fence.to_string(),
                        actual_micros.map(|m| m.to_string()).unwrap_or_default(),
                    ],
                }],
            ),
            Write::Notify(notice) => (
                format!("the notice '{}'", notice.encode()),
                vec![Op {
                    name: "publish",
                    keys: vec![],
                    args: vec![keys.control_channel(), notice.encode()],
                }],
            ),
            Write::Forget { .. } | Write::Flush(_) | Write::Then(_) | Write::Checked { .. } => {
                return None
            }
        })
    }

    /// Sends every step's operations, in scripts of bounded size, in order.
    async fn apply(&mut self, steps: &mut [Step]) {
        for step in steps.iter_mut() {
            if let Step::Store { ops, .. } = step {
                if let Some(reason) = oversized(ops, self.largest_value) {
                    step.refuse(|what| refusal(what, &reason));
                }
            }
        }
        let chunks = scripts_of(steps);
        for chunk in chunks {
            // A step refused in an earlier script sends nothing more.
            let live: Vec<(usize, usize)> = chunk
                .into_iter()
                .filter(|(s, _)| !steps[*s].refused())
                .collect();
            if live.is_empty() {
                continue;
            }
            let mut owners: Vec<usize> = live.iter().map(|(s, _)| *s).collect();
            owners.dedup();
            let script = self.script.clone();
            match self.send(self.invocation(&script, steps, &live)).await {
                Sent::Stored => {}
                Sent::Deposed => self.refuse_lost(steps, &owners),
                Sent::Refused(reason) if owners.len() == 1 => {
                    steps[owners[0]].refuse(|what| refusal(what, &reason));
                }
                // One write spoils the script: each alone, to find it.
                Sent::Refused(_) => {
                    for s in owners {
                        let own: Vec<(usize, usize)> =
                            live.iter().copied().filter(|(o, _)| *o == s).collect();
                        match self.send(self.invocation(&script, steps, &own)).await {
                            Sent::Stored => {}
                            Sent::Deposed => self.refuse_lost(steps, &[s]),
                            Sent::Refused(reason) => {
                                steps[s].refuse(|what| refusal(what, &reason));
                            }
                        }
                    }
                }
            }
        }
    }

    fn refuse_lost(&self, steps: &mut [Step], owners: &[usize]) {
        let holder = self.lost.clone().unwrap_or_default();
        for &s in owners {
            steps[s].refuse(|_| Error::LockLost(holder.clone()));
        }
    }

    /// The script call that carries `part`, fenced by this tenure.
    fn invocation<'s>(
        &self,
        script: &'s redis::Script,
        steps: &[Step],
        part: &[(usize, usize)],
    ) -> redis::ScriptInvocation<'s> {
        let (instance, id, ttl_ms) = match &self.tenure {
            Some(t) => (t.instance.clone(), t.id.clone(), t.ttl.as_millis() as u64),
            None => (String::new(), String::new(), 0),
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.coordinator())
            .key(self.keys.coordinator_tenure())
            .arg(instance)
            .arg(id)
            .arg(ttl_ms);
        for &(s, o) in part {
            let Step::Store { ops, .. } = &steps[s] else {
                continue;
            };
            let op = &ops[o];
            invocation.arg(op.name).arg(op.args.len());
            for key in &op.keys {
                invocation.key(key);
            }
            for arg in &op.args {
                invocation.arg(arg);
            }
        }
        invocation
    }

    /// Sends one script until Redis answers it; outages are waited out,
    /// while the coordinator's lock is known to be held.
    async fn send(&mut self, invocation: redis::ScriptInvocation<'_>) -> Sent {
        let mut backoff = regatta_telemetry::backoff::Backoff::new(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        );
        loop {
            if self.lost.is_some() {
                return Sent::Deposed;
            }
            // A coordinator whose lock renewal is overdue (paused, cut off)
            // writes nothing, and so publishes nothing, until it is renewed
            // or the lock's holder stops this process.
            if let Some(tenure) = &self.tenure {
                if !tenure.is_current() {
                    tracing::warn!("the coordinator lock is not renewed: writes wait");
                    while !tenure.is_current() {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
            let answer = invocation
                .invoke_async::<(i64, String, String)>(&mut self.connection)
                .await;
            match answer {
                Ok((1, _, _)) => return Sent::Stored,
                Ok((_, holder, tenure)) => {
                    let holder = format!("coordinator '{holder}' (tenure '{tenure}') holds it");
                    tracing::error!(%holder, "Redis refused a write: another coordinator holds the namespace; this one stops");
                    if let Some(tenure) = &self.tenure {
                        tenure.depose();
                    }
                    self.lost = Some(holder);
                    return Sent::Deposed;
                }
                Err(e) if refused_for_good(&e) => return Sent::Refused(e.to_string()),
                Err(e) => {
                    tracing::warn!(error = %e, "storing batch state failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Answers every step, runs the callbacks whose state was stored.
    fn finish(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Store {
                    what,
                    refused,
                    answer: Answer::Caller(done),
                    ..
                } => {
                    if let Some(e) = &refused {
                        tracing::warn!(error = %e, %what, "a write was refused; its request fails");
                    }
                    let _ = done.send(refused.map_or(Ok(()), Err));
                }
                Step::Store {
                    what,
                    refused: Some(e),
                    answer,
                    ..
                } => {
                    tracing::error!(error = %e, %what, "Redis refused a write; it is dropped, later writes go on");
                    if matches!(answer, Answer::Orders) {
                        self.refused_since_marker = true;
                    }
                }
                Step::Store { .. } => {}
                Step::Flush(done) => {
                    self.refused_since_marker = false;
                    let _ = done.send(self.lost.clone());
                }
                Step::Then(callback) => {
                    if self.refused_since_marker || self.lost.is_some() {
                        tracing::error!(
                            "orders not published: Redis refused the state that names them"
                        );
                    } else {
                        callback();
                    }
                    self.refused_since_marker = false;
                }
            }
        }
    }
}

/// Groups every step's operations, in order, into scripts within the
/// budgets of fields and bytes: each script is a list of (step, operation).
fn scripts_of(steps: &[Step]) -> Vec<Vec<(usize, usize)>> {
    let mut chunks: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut chunk = Vec::new();
    let (mut weight, mut bytes) = (0, 0);
    for (s, step) in steps.iter().enumerate() {
        let Step::Store { ops, .. } = step else {
            continue;
        };
        for (o, op) in ops.iter().enumerate() {
            let full =
                weight + op.weight() > FIELDS_PER_COMMAND || bytes + op.bytes() > BYTES_PER_COMMAND;
            if full && !chunk.is_empty() {
                chunks.push(std::mem::take(&mut chunk));
                (weight, bytes) = (0, 0);
            }
            chunk.push((s, o));
            weight += op.weight();
            bytes += op.bytes();
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// The error a refused write answers.
fn refusal(what: &str, reason: &str) -> Error {
    Error::StoreRefused {
        what: what.to_owned(),
        reason: reason.to_owned(),
    }
}

/// True for an error reply of Redis that a retry would get again (a key
/// of the wrong type, a value over the bulk limit, no memory left), as
/// opposed to an outage (a lost connection, a timeout, a Redis loading
/// its data) that is waited out.
fn refused_for_good(e: &redis::RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
        && matches!(e.retry_method(), RetryMethod::NoRetry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::budget::tests::pieces;

    #[test]
    fn scripts_stay_within_both_budgets() {
        let store = |ops| Step::Store {
            what: String::new(),
            ops,
            refused: None,
            answer: Answer::Log,
        };
        let steps = vec![
            store(hset_ops("a".into(), pieces(10, 1 << 20))),
            store(hset_ops("b".into(), pieces(1_500, 10))),
        ];
        let scripts = scripts_of(&steps);
        for script in &scripts {
            let (mut fields, mut bytes) = (0, 0);
            for &(s, o) in script {
                let Step::Store { ops, .. } = &steps[s] else {
                    unreachable!()
                };
                fields += ops[o].weight();
                bytes += ops[o].bytes();
            }
            assert!(fields <= FIELDS_PER_COMMAND && bytes <= BYTES_PER_COMMAND);
        }
        let sent: Vec<(usize, usize)> = scripts.into_iter().flatten().collect();
        let mut all = Vec::new();
        for (s, step) in steps.iter().enumerate() {
            if let Step::Store { ops, .. } = step {
                all.extend((0..ops.len()).map(|o| (s, o)));
            }
        }
        assert_eq!(sent, all, "every operation, in order");
    }
}
