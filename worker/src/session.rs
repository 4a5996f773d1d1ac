//! A session along its path, once [`intake`](crate::intake) holds its
//! leases and acked its order: `started` is armed ([`crate::start_notice`]);
//! the command runs ([`crate::command`]) while a [`Heartbeat`] renews the
//! leases, then the gates ([`crate::gate`]) and the check of the declared
//! outputs; the evidence is stored ([`crate::evidence`]) and `finished`
//! reported, still under the leases, which go to [`crate::lease::Releases`]
//! once the broker holds the result (contract 3, docs/contracts.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regatta_proto::{EventKind, GateReport, Outcome, WorkOrder};
use tokio_util::sync::CancellationToken;

use crate::command::{run_command, Beats, CommandSpec, Ending, Stop};
use crate::gate::run_gates;
use crate::lease::{Heartbeat, StopCause};
use crate::session_log::{SessionLog, Spill};
use crate::worker::Shared;
use crate::Error;

/// How a session ended, before its evidence is stored.
pub struct SessionResult {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    /// Why it did not succeed.
    pub reason: Option<String>,
    pub gates: Vec<GateReport>,
    /// From the session folder's creation to the end of the last gate.
    pub duration: Duration,
    /// The session's log, in memory or spilled into the store.
    pub log: SessionLog,
    /// Git mode: what the session did with the repository.
    pub git: Option<regatta_proto::GitReport>,
    /// Git mode: the worktree, removed once the evidence is stored.
    workspace: Option<crate::repository::Prepared>,
    /// What the session used, also when it was killed; `None` when it
    /// reported nothing and is no agent session.
    pub usage: Option<regatta_proto::Usage>,
    /// The agent's transcript, when the playbook names an adapter.
    pub transcript: Option<PathBuf>,
    /// The price table the usage was priced with.
    pub prices: Option<regatta_proto::Prices>,
}

/// What the command and gates concluded, before the clock stops.
struct Conclusion {
    outcome: Outcome,
    exit_code: Option<i32>,
    reason: Option<String>,
    gates: Vec<GateReport>,
    git: Option<regatta_proto::GitReport>,
}

impl Conclusion {
    fn new(outcome: Outcome, exit_code: Option<i32>, reason: Option<String>) -> Self {
        Conclusion {
            outcome,
            exit_code,
            reason,
            gates: vec![],
            git: None,
        }
    }

    fn with_gates(self, gates: Vec<GateReport>) -> Self {
        Conclusion { gates, ..self }
    }
}

/// Runs a claimed session to its reported end: `started`, the command and
/// gates, the evidence, `finished`, and the release of its leases.
/// `claimed` is when intake began to claim its leases.
pub(crate) async fn run(shared: &Shared, order: &WorkOrder, fence: u64, claimed: Instant) {
    let config = &shared.config;
    // In git mode the session works in its own worktree, which the order
    // names from here on (outputs, evidence, `REGATTA_WORKSPACE`).
    let in_worktree;
    let order = match &order.git {
        Some(_) => {
            let mut moved = order.clone();
            moved.workdir = beside_session_dir(shared, order, "workspace")
                .display()
                .to_string();
            in_worktree = moved;
            &in_worktree
        }
        None => order,
    };
    let start = crate::start_notice::StartNotice::arm(shared, order, fence, claimed);

    let started_at = chrono::Utc::now();
    let result = run_under_heartbeat(shared, order, fence).await;
    let ended_at = chrono::Utc::now();
    let log_tail = result.log.tail(20);
    let log_path = result.log.store_path();
    let kept_log = result.log.take();
    let artifact_dir = session_dir(shared, order);
    // Evidence is stored and the result reported still under the leases.
    let renewal = Heartbeat::for_result(
        shared.leases.clone(),
        order,
        fence,
        config.lease_ttl,
        shared.notices.listen(),
    )
    .start();
    let trace = regatta_telemetry::TraceRef::current();
    let session_end = crate::evidence::SessionEnd {
        order,
        worker: &config.name,
        started_at,
        ended_at,
        outcome: result.outcome,
        exit_code: result.exit_code,
        reason: result.reason.as_deref(),
        gates: &result.gates,
        log: &kept_log,
        artifact_dir: &artifact_dir,
        trace_id: trace.as_ref().map(|t| t.trace_id.as_str()),
        git: result.git.as_ref(),
        usage: result.usage.as_ref(),
        transcript: result.transcript.as_deref(),
        prices: result.prices.as_ref(),
    };
    let store = crate::artifact::ArtifactStore::new(&config.artifact_store);
    let stored = crate::evidence::record_session(&store, &session_end).await;
    if let Some(workspace) = &result.workspace {
        workspace.remove().await;
    }
    let (outcome, reason, evidence) =
        crate::fault::after_evidence(&shared.health, result.outcome, result.reason, stored);
    tracing::info!(
        ?outcome,
        exit_code = result.exit_code,
        reason = reason.as_deref().unwrap_or(""),
        "session finished"
    );
    if let Some(usage) = &result.usage {
        record_usage(&tracing::Span::current(), usage);
    }
    regatta_telemetry::status::session_ended(&tracing::Span::current(), outcome, reason.as_deref());
    let actual_cost = result.usage.as_ref().and_then(|usage| usage.cost_usd);
    let mut finished = EventKind::Finished {
        outcome,
        exit_code: result.exit_code,
        duration_ms: result.duration.as_millis() as u64,
        reason,
        log_tail,
        log_path: log_path
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        gates: result.gates,
        evidence,
        git: result.git.map(Box::new),
        usage: result.usage,
        started_at_ms: None,
        lease_wait_ms: None,
    };
    start.settle(&mut finished).await;
    // The leases stay renewed until the broker holds the result: a worker
    // that dies before then leaves leases that expire, so the reaper re-runs
    // the unit; released first, the unit would stay `running` for good.
    let reported = shared.report(order, fence, finished).await;
    renewal.stop().await;
    match reported {
        // The coordinator releases them when it applies the result; the
        // worker does only if it has not in time (see `lease::Releases`).
        // The batch budget settles at the actual cost (contract 9).
        Ok(()) => shared.releases.after_result(
            &shared.leases,
            &order.session_id,
            fence,
            actual_cost.map(regatta_proto::batch_budget::micros),
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot report the session's end; its leases expire and the coordinator re-runs the unit");
        }
    }
}

/// Runs the session's command and gates while a heartbeat renews its leases.
async fn run_under_heartbeat(shared: &Shared, order: &WorkOrder, fence: u64) -> SessionResult {
    let config = &shared.config;
    let started = Instant::now();
    // The session's only folder on the worker is its artifact folder: the
    // log stays in memory (or spills into the store), the usage channel
    // and the transcript are files beside it, made only when written.
    let artifact_dir = session_dir(shared, order);
    let log = SessionLog::new(
        config.max_log_bytes,
        Some(Spill {
            store: crate::artifact::ArtifactStore::new(&config.artifact_store),
            batch_id: order.batch_id.clone(),
            unit_id: order.unit_id.clone(),
            session_id: order.session_id.clone(),
        }),
    );
    let mut git = None;
    let meter = std::sync::Arc::new(crate::meter::Meter::new(
        order.agent.as_ref(),
        beside_session_dir(shared, order, crate::usage_channel::USAGE_FILE),
        beside_session_dir(shared, order, crate::meter::TRANSCRIPT_FILE),
        log.clone(),
    ));
    let conclusion = match tokio::fs::create_dir_all(&artifact_dir).await {
        Err(e) => {
            let what = format!(
                "cannot create the session folder {}: {e}",
                artifact_dir.display()
            );
            let (outcome, reason) = crate::fault::worker_fault(&shared.health, &what);
            Conclusion::new(outcome, None, Some(reason))
        }
        Ok(()) => {
            let stop = Stop {
                gently: shared.kill_sessions.child_token(),
                now: CancellationToken::new(),
            };
            // The heartbeat renews until the session is over, also while it
            // is being killed, so its slots are never handed on while it
            // still runs.
            let (heartbeat, renewals) = Heartbeat::for_session(
                shared.leases.clone(),
                order,
                fence,
                config.lease_ttl,
                shared.notices.listen(),
                stop.clone(),
            );
            let heartbeat = heartbeat.start();
            let spec = CommandSpec {
                command: order.run.clone(),
                workdir: order.workdir.clone().into(),
                env: session_env(
                    order,
                    fence,
                    &artifact_dir,
                    &beside_session_dir(shared, order, crate::usage_channel::USAGE_FILE),
                ),
                timeout: Duration::from_millis(order.timeout_ms),
                log: log.clone(),
                grace: config.grace.min(Duration::from_secs(30)),
                containment: config.containment.clone(),
                // Two renewal periods: the leader kills a stalled worker's
                // session before its lease can expire and the unit re-run
                // elsewhere.
                beats: Some(Beats {
                    renewals,
                    deadline: config.lease_ttl * 2 / 3,
                }),
                meter: Some(meter.clone()),
            };
            let conclusion = match &order.git {
                None => run_steps(shared, order, &spec, &stop, heartbeat.cause()).await,
                Some(order_git) => {
                    let (conclusion, prepared) =
                        run_in_worktree(shared, order, order_git, &spec, &stop, heartbeat.cause())
                            .await;
                    git = prepared;
                    conclusion
                }
            };
            heartbeat.stop().await;
            conclusion
        }
    };
    let transcript = meter
        .adapter()
        .map(|_| meter.transcript_path().to_path_buf());
    SessionResult {
        outcome: conclusion.outcome,
        exit_code: conclusion.exit_code,
        reason: conclusion.reason,
        gates: conclusion.gates,
        duration: started.elapsed(),
        log,
        git: conclusion.git,
        workspace: git,
        usage: meter.finish(),
        transcript,
        prices: meter.prices().cloned(),
    }
}

/// The session's folder on this worker, `<work-dir>/<batch>/<session>`: its
/// `REGATTA_ARTIFACT_DIR`, fresh for each session (session ids are unique),
/// and the one folder a session makes there.
fn session_dir(shared: &Shared, order: &WorkOrder) -> PathBuf {
    shared
        .config
        .work_dir
        .join(&order.batch_id)
        .join(&order.session_id)
}

/// A path beside the session's folder, `<work-dir>/<batch>/<session>.<what>`,
/// for what must not be collected as an artifact: the usage channel, an
/// agent's transcript, a git mode worktree.
fn beside_session_dir(shared: &Shared, order: &WorkOrder, what: &str) -> PathBuf {
    shared
        .config
        .work_dir
        .join(&order.batch_id)
        .join(format!("{}.{what}", order.session_id))
}

/// Git mode: builds the worktree, runs the steps in it, and commits and
/// pushes what a unit's session changed once they passed.
async fn run_in_worktree(
    shared: &Shared,
    order: &WorkOrder,
    git: &regatta_proto::GitOrder,
    spec: &CommandSpec,
    stop: &Stop,
    cause: &StopCause,
) -> (Conclusion, Option<crate::repository::Prepared>) {
    use crate::repository::NotPrepared;
    let mut prepared = match shared.repositories.prepare(order, git, &spec.workdir).await {
        Ok(prepared) => prepared,
        Err(NotPrepared::Conflict { report, reason }) => {
            let mut conclusion = Conclusion::new(Outcome::Failed, None, Some(reason));
            conclusion.git = Some(*report);
            return (conclusion, None);
        }
        // A fetch that failed says nothing of a candidate: its integration
        // is tested again (the coordinator bounds how often); a unit's
        // attempt fails with the reason and spends a retry.
        Err(NotPrepared::Failed(reason)) => {
            let outcome = match git.session {
                regatta_proto::GitSession::Integration { .. } => Outcome::Interrupted,
                _ => Outcome::Failed,
            };
            return (Conclusion::new(outcome, None, Some(reason)), None);
        }
    };
    let mut conclusion = run_steps(shared, order, spec, stop, cause).await;
    if conclusion.outcome == Outcome::Succeeded {
        if let Err(reason) = prepared.conclude(order, git).await {
            if !prepared.report.outside_writes.is_empty() {
                conclusion.gates.push(GateReport {
                    name: WRITE_SET_GATE.into(),
                    passed: false,
                    required: true,
                    repairs: 0,
                    duration_ms: 0,
                });
            }
            conclusion.outcome = Outcome::Failed;
            conclusion.reason = Some(reason);
        }
    }
    conclusion.git = Some(prepared.report.clone());
    (conclusion, Some(prepared))
}

/// The built-in gate of `strict_writes`, as gate reports name it.
pub const WRITE_SET_GATE: &str = "write-set";

/// Runs the command, then its gates and the check of its outputs if it
/// exited 0; `cause` says why the heartbeat stopped it, if it did.
async fn run_steps(
    shared: &Shared,
    order: &WorkOrder,
    spec: &CommandSpec,
    stop: &Stop,
    cause: &StopCause,
) -> Conclusion {
    // The command's own errors are the worker's (its log, its leader),
    // except a unit too large for the kernel to start.
    let faulted = |e: Error, exit_code| {
        if cause.cancelled() || cause.lost() {
            stopped(cause, exit_code)
        } else if e.is_units_fault() {
            let reason = format!(
                "{e}: the unit's task, inputs, outputs or env are too large for a process's environment (128 KiB a variable)"
            );
            Conclusion::new(Outcome::Failed, exit_code, Some(reason))
        } else {
            let (outcome, reason) = crate::fault::worker_fault(&shared.health, &e.to_string());
            Conclusion::new(outcome, exit_code, Some(reason))
        }
    };
    match run_command(spec, stop).await {
        Err(e) => faulted(e, None),
        Ok((Ending::Exited(0), _)) => match run_gates(&order.gates, spec, stop).await {
            Err(e) => faulted(e, Some(0)),
            Ok(verdict) if verdict.stopped => stopped(cause, Some(0)).with_gates(verdict.reports),
            Ok(verdict) => {
                let reason = match verdict.escalation {
                    Some(reason) => Some(reason),
                    None => missing_output(order).await,
                };
                let outcome = match reason {
                    Some(_) => Outcome::Failed,
                    None => Outcome::Succeeded,
                };
                Conclusion::new(outcome, Some(0), reason).with_gates(verdict.reports)
            }
        },
        // The leader gave up on a worker that stalled past its lease (a
        // SIGSTOP, a VM pause): the unit already re-runs elsewhere.
        Ok((Ending::Abandoned, _)) => Conclusion::new(
            Outcome::Lost,
            None,
            Some(
                "lost: the worker stalled past its lease and the session leader killed the session"
                    .to_owned(),
            ),
        ),
        // The worker's own machinery failed, not the unit: it runs again
        // without spending a retry, as after a shutdown.
        Ok((Ending::SupervisorLost, _)) if !(cause.cancelled() || cause.lost()) => {
            Conclusion::new(Outcome::Interrupted, None, Some(SUPERVISOR_LOST.to_owned()))
        }
        Ok((Ending::SupervisorLost, _)) => stopped(cause, None),
        Ok((Ending::Exited(code), _)) => Conclusion::new(
            Outcome::Failed,
            Some(code),
            Some(format!("the command exited with status {code}")),
        ),
        Ok((Ending::TimedOut, _)) => Conclusion::new(
            Outcome::TimedOut,
            None,
            Some(format!(
                "the deadline of {} passed; the session was killed",
                humantime::format_duration(spec.timeout)
            )),
        ),
        Ok((Ending::Stopped, _)) => stopped(cause, None),
        Ok((Ending::OverBudget, _)) => {
            let reason = spec
                .meter
                .as_ref()
                .and_then(|meter| meter.reason())
                .unwrap_or_else(|| "over budget".to_owned());
            Conclusion::new(Outcome::OverBudget, None, Some(reason))
        }
    }
}

/// Records a session's usage on its span, for traces.
fn record_usage(span: &tracing::Span, usage: &regatta_proto::Usage) {
    span.record("agent.tokens_in", usage.tokens_in);
    span.record("agent.tokens_cached", usage.tokens_cached);
    span.record("agent.tokens_out", usage.tokens_out);
    span.record("agent.turns", usage.turns);
    if let Some(cost) = usage.cost_usd {
        span.record("agent.cost_usd", cost);
    }
}

/// Why a session whose leader died with the worker's session supervisor
/// is handed back.
const SUPERVISOR_LOST: &str = "interrupted: the worker's session supervisor died, and the session's leader with it; the unit runs again without spending a retry";

/// A session that was stopped: cancelled, lost, or interrupted by the
/// worker's shutdown (or its supervisor's death, during a gate).
fn stopped(cause: &StopCause, exit_code: Option<i32>) -> Conclusion {
    let (outcome, reason) = if cause.cancelled() {
        (
            Outcome::Cancelled,
            "the batch was cancelled; the session was killed",
        )
    } else if cause.lost() {
        (
            Outcome::Lost,
            "the session's leases were lost; it was killed so it cannot overlap a re-run",
        )
    } else {
        (
            Outcome::Interrupted,
            "the worker shut down, or lost its session supervisor, before the session ended",
        )
    };
    Conclusion::new(outcome, exit_code, Some(reason.to_owned()))
}

/// The session's environment: the order's own, then regatta's variables.
fn session_env(
    order: &WorkOrder,
    fence: u64,
    artifact_dir: &Path,
    usage_path: &Path,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = order
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend([
        ("REGATTA_BATCH_ID".into(), order.batch_id.clone()),
        ("REGATTA_UNIT_ID".into(), order.unit_id.clone()),
        ("REGATTA_TASK".into(), order.task.clone()),
        ("REGATTA_INPUTS".into(), order.inputs.join("\n")),
        ("REGATTA_OUTPUTS".into(), order.outputs.join("\n")),
        ("REGATTA_ATTEMPT".into(), order.attempt.to_string()),
        ("REGATTA_SESSION_ID".into(), order.session_id.clone()),
        ("REGATTA_FENCING".into(), fence.to_string()),
        ("REGATTA_WORKSPACE".into(), order.workdir.clone()),
        (
            "REGATTA_ARTIFACT_DIR".into(),
            artifact_dir.display().to_string(),
        ),
        ("REGATTA_USAGE".into(), usage_path.display().to_string()),
    ]);
    env
}

/// Names the first declared output that the session did not produce.
async fn missing_output(order: &WorkOrder) -> Option<String> {
    for output in &order.outputs {
        let path = std::path::Path::new(&order.workdir).join(output);
        if tokio::fs::metadata(&path).await.is_err() {
            return Some(format!("declared output '{output}' is missing"));
        }
    }
    None
}
