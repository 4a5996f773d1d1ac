//! Runs one command of a session (its command, a gate's check, a repair):
//! under a [`leader`], in its own process group (and its own cgroup where
//! the machine allows), with a deadline, its output captured to the
//! session's bounded log ([`crate::session_log`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use std::os::fd::AsFd;

use crate::containment::Containment;
use crate::session_log::{capture, SessionLog};
use crate::supervisor::client::{Ended, ForkError, Supervisor};
use crate::supervisor::Request;
use crate::{cgroup, leader, Error};

/// What to run and how.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// A shell command line, run with `/bin/sh -c` (or as the same program
    /// without the shell when it is plain: [`crate::plain_command`]).
    pub command: String,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// The session's log, which the command's stdout and stderr are
    /// appended to (bounded: see [`crate::session_log`]).
    pub log: SessionLog,
    /// Between SIGTERM and SIGKILL of the process group.
    pub grace: Duration,
    /// The leader, the session's user and its cgroup.
    pub containment: Containment,
    /// Lease renewals, forwarded to the session's leader so that it kills
    /// the session if the worker stalls (see [`leader`]); `None` in tests
    /// that run a command without leases.
    pub beats: Option<Beats>,
    /// The session's meter: its budget is enforced while the command runs,
    /// and, when it names an agent adapter, stdout goes to the transcript
    /// and is parsed as it comes. `None` for gates and repairs.
    pub meter: Option<std::sync::Arc<crate::meter::Meter>>,
}

/// The renewals a leader listens to, and how long it waits for one.
#[derive(Debug, Clone)]
pub struct Beats {
    pub renewals: tokio::sync::watch::Receiver<u64>,
    pub deadline: Duration,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited by itself with this status (128 + n when killed by signal n).
    Exited(i32),
    /// The deadline passed; the group was terminated.
    TimedOut,
    /// The caller stopped it (lease lost, cancel, shutdown); the group was terminated.
    Stopped,
    /// The session's leader was killed, with its whole group: it gave up on
    /// a worker that stalled past its lease (or someone killed it).
    Abandoned,
    /// The session crossed its budget ([`crate::meter`]); the group was killed.
    OverBudget,
    /// The worker's session supervisor died while it held the command's
    /// leader, which died with it, taking the session: the worker's fault,
    /// not the unit's.
    SupervisorLost,
}

/// How the caller tells a running command to stop.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// SIGTERM to the group, SIGKILL after the grace period: a cancel or a
    /// shutdown, where the session may clean up while its leases still hold.
    pub gently: CancellationToken,
    /// SIGKILL to the group at once: the leases are lost, so a re-run may
    /// already be starting elsewhere.
    pub now: CancellationToken,
}

/// Runs a command to its end, or until its deadline or `stop`.
///
/// Whatever happens, no process of the group is left running on return.
pub async fn run_command(spec: &CommandSpec, stop: &Stop) -> Result<(Ending, Duration), Error> {
    let span = crate::command_span::command_span();
    let started = Instant::now();
    let result = tracing::Instrument::instrument(run_contained(spec, stop), span.clone()).await;
    crate::command_span::describe_ending(&span, &result, spec.timeout, started.elapsed());
    result
}

/// [`run_command`] without its span.
async fn run_contained(spec: &CommandSpec, stop: &Stop) -> Result<(Ending, Duration), Error> {
    let (reader, writer) = std::io::pipe().map_err(Error::Spawn)?;
    let writer_err = writer.try_clone().map_err(Error::Spawn)?;
    // An agent's stdout is its transcript, parsed as it comes; stderr
    // stays in the log.
    let meter = spec.meter.clone();
    let transcript = match meter.as_ref().filter(|m| m.adapter().is_some()) {
        Some(meter) => {
            let (out_reader, out_writer) = std::io::pipe().map_err(Error::Spawn)?;
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(meter.transcript_path())
                .await
                .map_err(|source| Error::WorkDir {
                    path: meter.transcript_path().display().to_string(),
                    source,
                })?;
            Some((out_reader, out_writer, file, meter.clone()))
        }
        None => None,
    };
    let stdout = match &transcript {
        Some((_, out_writer, _, _)) => out_writer.try_clone(),
        None => writer.try_clone(),
    }
    .map_err(Error::Spawn)?;
    drop(writer);
    let containment = &spec.containment;
    // The leader joins the session's cgroup before it runs anything, so
    // every process of the session is in it.
    let cgroup = session_cgroup(containment);
    let deadline_ms = spec
        .beats
        .as_ref()
        .map_or(0, |b| b.deadline.as_millis() as u64);
    let started = Instant::now();
    let supervisor = containment.supervisor.as_ref().filter(|s| s.is_alive());
    let forked = match supervisor {
        Some(supervisor) => {
            match fork_leader(
                supervisor,
                spec,
                deadline_ms,
                &stdout,
                &writer_err,
                cgroup.as_ref(),
            )
            .await
            {
                Ok(forked) => Some(forked),
                // Too large a request, a folder that is not there, a
                // supervisor gone: the exec'd leader either runs it or
                // fails as it always did.
                Err(ForkError::Refused(e)) => {
                    tracing::debug!("the session supervisor did not start the command ({e}); exec'ing its leader");
                    None
                }
                // A leader may have run and died with the supervisor:
                // another must not overlap it.
                Err(lost @ ForkError::Lost(_)) => {
                    tracing::warn!("{lost}: the command is given up");
                    // A leader may have been forked for it: it dies with the
                    // supervisor (its death signal), taking its session. Its
                    // cgroup makes sure; without one, it gets the time to
                    // sweep before the unit can run again elsewhere.
                    match cgroup {
                        Some(cgroup) => cgroup.kill_and_remove(Duration::from_secs(5)).await,
                        None => tokio::time::sleep(SWEEP_WITHIN).await,
                    }
                    return Ok((Ending::SupervisorLost, started.elapsed()));
                }
            }
        }
        None => None,
    };
    let (mut child, stdin) = match forked {
        Some(forked) => {
            // Our copies of the pipes' write ends: once every process of
            // the session closes its own, the capture sees end of file.
            drop((stdout, writer_err));
            forked
        }
        None => spawn_leader(spec, deadline_ms, stdout, writer_err, cgroup.as_ref())?,
    };
    // Forward each renewal to the leader as one byte on its stdin.
    let forward = match (stdin, spec.beats.clone()) {
        (Some(stdin), Some(beats)) => Some(tokio::spawn(forward_beats(stdin, beats))),
        _ => None,
    };
    // Our copies of the pipe's write end went into the child and are
    // closed here; once every process of the session closes it, the
    // capture sees end of file.
    let capture = tokio::spawn(capture(reader, spec.log.clone()));
    let transcript = transcript.map(|(out_reader, out_writer, file, meter)| {
        drop(out_writer);
        tokio::spawn(crate::transcript::capture(
            out_reader,
            file,
            spec.log.limit(),
            meter,
        ))
    });
    let pgid = child.pid().map(Pid::from_raw);
    // The channel and the wall clock are read on a timer; the stream at
    // every line it writes.
    let crossed = meter
        .as_ref()
        .map(|m| m.crossed().clone())
        .unwrap_or_default();
    let polling = meter.clone().map(|meter| {
        meter.start();
        tokio::spawn(async move {
            loop {
                meter.poll();
                tokio::time::sleep(crate::meter::POLL).await;
            }
        })
    });

    let ending = tokio::select! {
        biased;
        _ = stop.now.cancelled() => {
            kill_group(pgid, &mut child).await;
            Ending::Stopped
        }
        _ = crossed.cancelled() => {
            kill_group(pgid, &mut child).await;
            Ending::OverBudget
        }
        status = child.wait() => {
            use std::os::unix::process::ExitStatusExt;
            match status {
                Ok(_) if child.lost_with_supervisor() => Ending::SupervisorLost,
                // The leader reports its command's status with an exit code;
                // only the leader's own death is a signal.
                Ok(status) if status.signal() == Some(Signal::SIGKILL as i32) => Ending::Abandoned,
                other => Ending::Exited(exit_code(other.ok())),
            }
        }
        _ = tokio::time::sleep(spec.timeout) => {
            terminate_group(pgid, &mut child, spec.grace, &stop.now).await;
            Ending::TimedOut
        }
        _ = stop.gently.cancelled() => {
            terminate_group(pgid, &mut child, spec.grace, &stop.now).await;
            Ending::Stopped
        }
    };
    // A leader that died with its supervisor is still sweeping what its
    // session left (a SIGKILL to its group now would stop it half way):
    // wait until it is gone.
    if let (true, Some(pgid)) = (child.lost_with_supervisor(), pgid) {
        wait_until_gone(pgid, SWEEP_WITHIN).await;
    }
    // A command may exit while its background children still run: they
    // belong to the session and die with it. The leader killed those it
    // could see; the cgroup holds even those of a leader killed first.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    if let Some(cgroup) = cgroup {
        cgroup.kill_and_remove(Duration::from_secs(5)).await;
    }
    if let Some(forward) = forward {
        forward.abort();
    }
    if let Some(polling) = polling {
        polling.abort();
    }
    if let Some(transcript) = transcript {
        if let Ok(Ok(Err(source))) = tokio::time::timeout(Duration::from_secs(5), transcript).await
        {
            return Err(Error::SessionLog {
                path: spec
                    .meter
                    .as_ref()
                    .map(|m| m.transcript_path().display().to_string())
                    .unwrap_or_default(),
                source,
            });
        }
    }
    if let Ok(Ok(Err(source))) = tokio::time::timeout(Duration::from_secs(5), capture).await {
        return Err(Error::SessionLog {
            path: spec
                .log
                .store_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "in memory".to_owned()),
            source,
        });
    }
    Ok((ending, started.elapsed()))
}

fn exit_code(status: Option<std::process::ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(status) => status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1),
        None => -1,
    }
}

/// SIGTERM to the whole group, then SIGKILL after the grace period, or at
/// once if `now` fires meanwhile.
async fn terminate_group(
    pgid: Option<Pid>,
    child: &mut Leader,
    grace: Duration,
    now: &CancellationToken,
) {
    let Some(pgid) = pgid else { return };
    let _ = killpg(pgid, Signal::SIGTERM);
    tokio::select! {
        _ = child.wait() => return,
        _ = tokio::time::sleep(grace) => {}
        _ = now.cancelled() => {}
    }
    kill_group(Some(pgid), child).await;
}

/// Kills the whole session without a grace period: the leader first hears
/// SIGHUP, as if the worker died, and kills every process of the session,
/// those that left its group too; SIGKILL to the group follows, for a
/// leader that does not answer within a second.
async fn kill_group(pgid: Option<Pid>, child: &mut Leader) {
    if let Some(pgid) = pgid {
        let _ = nix::sys::signal::kill(pgid, Signal::SIGHUP);
        let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let _ = child.wait().await;
}

/// A new cgroup for the session, when the worker has cgroups; a session
/// whose cgroup cannot be made runs without one (its leader still kills
/// what its command leaves), with a warning.
fn session_cgroup(containment: &Containment) -> Option<cgroup::SessionCgroup> {
    let parent = containment.cgroups.as_ref()?;
    match parent.create() {
        Ok(cgroup) => Some(cgroup),
        Err(e) => {
            tracing::warn!(parent = %parent.dir().display(), "cannot make the session's cgroup ({e}); its leader alone will kill what it leaves");
            None
        }
    }
}

/// How long a leader orphaned by its supervisor's death may take to kill
/// and reap what its session left.
const SWEEP_WITHIN: Duration = Duration::from_secs(2);

/// Waits until `pid` no longer exists (its new parent reaped it), or
/// `within` passes.
async fn wait_until_gone(pid: Pid, within: Duration) {
    let started = Instant::now();
    while nix::sys::signal::kill(pid, None) != Err(nix::errno::Errno::ESRCH)
        && started.elapsed() < within
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The fleet's secrets and connection URLs stay with the worker: a session
/// that could read REGATTA_SECRET could sign its own orders.
pub const WITHHELD: [&str; 4] = [
    "REGATTA_SECRET",
    "REGATTA_API_TOKEN",
    "REGATTA_AMQP_URL",
    "REGATTA_REDIS_URL",
];

/// A session's leader: exec'd by the worker, or forked by its supervisor.
enum Leader {
    Spawned(tokio::process::Child),
    Forked {
        pid: i32,
        ended: tokio::sync::oneshot::Receiver<Ended>,
        status: Option<std::process::ExitStatus>,
        /// Its supervisor died before it reaped it.
        lost: bool,
    },
}

impl Leader {
    /// Its pid, which is its process group; `None` once reaped (spawned).
    fn pid(&self) -> Option<i32> {
        match self {
            Leader::Spawned(child) => child.id().map(|id| id as i32),
            Leader::Forked { pid, .. } => Some(*pid),
        }
    }

    /// Waits for it to end (cancel-safe).
    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Leader::Spawned(child) => child.wait().await,
            Leader::Forked {
                ended,
                status,
                lost,
                ..
            } => {
                if let Some(status) = status {
                    return Ok(*status);
                }
                // A supervisor that vanished took its leaders with it.
                let end = ended.await.unwrap_or(Ended::LOST);
                *lost = end.with_supervisor;
                Ok(*status.insert(end.status()))
            }
        }
    }

    /// Whether it ended with its supervisor rather than by itself (known
    /// once [`Leader::wait`] returned).
    fn lost_with_supervisor(&self) -> bool {
        matches!(
            self,
            Leader::Forked {
                status: Some(_),
                lost: true,
                ..
            }
        )
    }
}

/// Exec's the leader binary for the command (no supervisor).
fn spawn_leader(
    spec: &CommandSpec,
    deadline_ms: u64,
    stdout: std::io::PipeWriter,
    stderr: std::io::PipeWriter,
    cgroup: Option<&cgroup::SessionCgroup>,
) -> Result<(Leader, Option<Heartbeats>), Error> {
    let containment = &spec.containment;
    let mut command = tokio::process::Command::new(&containment.leader_exe);
    // The worker binary leads through a hidden subcommand; the dedicated
    // leader binary takes the arguments directly.
    if containment.leader_exe.file_name() != Some(std::ffi::OsStr::new(leader::BINARY)) {
        command.arg(leader::SUBCOMMAND);
    }
    command
        .arg(std::process::id().to_string())
        .arg(deadline_ms.to_string())
        .arg(&spec.command)
        .args(containment.session_user.map(|user| user.to_arg()))
        .current_dir(&spec.workdir)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(if spec.beats.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(false);
    for name in WITHHELD {
        command.env_remove(name);
    }
    if let Some(procs) = cgroup.map(cgroup::SessionCgroup::procs_fd) {
        // SAFETY: one `write` between fork and exec (async-signal-safe).
        unsafe {
            command.pre_exec(move || cgroup::join(procs));
        }
    }
    let mut child = command.spawn().map_err(Error::Spawn)?;
    let stdin = child.stdin.take().map(Heartbeats::Spawned);
    Ok((Leader::Spawned(child), stdin))
}

/// Asks the worker's supervisor to fork a leader for the command; `Err`
/// says why none runs.
async fn fork_leader(
    supervisor: &Supervisor,
    spec: &CommandSpec,
    deadline_ms: u64,
    stdout: &std::io::PipeWriter,
    stderr: &std::io::PipeWriter,
    cgroup: Option<&cgroup::SessionCgroup>,
) -> Result<(Leader, Option<Heartbeats>), ForkError> {
    // The worker's end is ready before the leader exists: once it is
    // forked, nothing may fail and leave a second leader to be exec'd.
    let heartbeat = match spec.beats {
        Some(_) => {
            let (reader, writer) = std::io::pipe()
                .map_err(|e| ForkError::Refused(format!("no pipe for heartbeats: {e}")))?;
            let writer = tokio::net::unix::pipe::Sender::from_owned_fd(writer.into())
                .map_err(|e| ForkError::Refused(format!("cannot watch the heartbeat pipe: {e}")))?;
            Some((reader, writer))
        }
        None => None,
    };
    let mut fds = vec![stdout.as_fd(), stderr.as_fd()];
    if let Some((reader, _)) = &heartbeat {
        fds.push(reader.as_fd());
    }
    if let Some(procs) = cgroup.map(cgroup::SessionCgroup::procs_fd) {
        // SAFETY: the cgroup's file stays open for as long as `cgroup` lives,
        // which outlasts this call.
        fds.push(unsafe { std::os::fd::BorrowedFd::borrow_raw(procs) });
    }
    let request = Request {
        id: 0,
        command: spec.command.clone(),
        workdir: spec.workdir.clone(),
        env: spec.env.clone(),
        deadline_ms,
        user: spec.containment.session_user.map(|user| user.to_arg()),
        stdin: heartbeat.is_some(),
        cgroup: cgroup.is_some(),
    };
    let forked = supervisor.fork(request, &fds).await?;
    let stdin = heartbeat.map(|(_reader, writer)| Heartbeats::Forked(writer));
    Ok((
        Leader::Forked {
            pid: forked.pid,
            ended: forked.ended,
            status: None,
            lost: false,
        },
        stdin,
    ))
}

/// Where the worker writes a byte per lease renewal for the leader.
enum Heartbeats {
    Spawned(tokio::process::ChildStdin),
    Forked(tokio::net::unix::pipe::Sender),
}

/// Writes one byte to the leader per renewal, until either side is gone.
async fn forward_beats(stdin: Heartbeats, mut beats: Beats) {
    use tokio::io::AsyncWriteExt;
    let mut stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>> = match stdin {
        Heartbeats::Spawned(stdin) => Box::pin(stdin),
        Heartbeats::Forked(pipe) => Box::pin(pipe),
    };
    while beats.renewals.changed().await.is_ok() {
        if stdin.write_all(b".").await.is_err() {
            break;
        }
    }
}
