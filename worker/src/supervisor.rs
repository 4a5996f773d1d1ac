//! The session supervisor: one long-lived process per worker that forks a
//! [`leader`](crate::leader) for each command the worker runs, instead of
//! the worker exec'ing the leader binary every time (docs/architecture.md,
//! "Sessions"). A leader exec costs a dynamic link and a runtime start, more
//! than a millisecond of CPU per command; a fork of this small,
//! single-threaded process costs a tenth of that, and the leader it makes
//! is the same code with the same guarantees.
//!
//! The chain of death signals is kept: the supervisor asks for SIGHUP when
//! the worker dies and then exits; each leader asks for SIGHUP when the
//! supervisor dies, and kills its session. So a worker killed with `-9`
//! still takes every session down with it. Heartbeats still reach each
//! leader on its own stdin, a pipe the worker passes with the request.
//!
//! The worker talks to it over a `SOCK_SEQPACKET` socket pair on the
//! supervisor's stdin ([`client`]): a [`Request`] with the command's
//! stdout, stderr, heartbeat pipe and cgroup as file descriptors
//! (`SCM_RIGHTS`), answered by [`Reply::Started`] with the leader's pid
//! (its process group) and, when it is reaped, [`Reply::Ended`]. Nothing but
//! the worker holds the other end: the socket has no name, and the
//! supervisor is non-dumpable, so a session (same user) cannot take its
//! descriptors.

pub mod client;

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, getppid, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::leader;

/// The argument under which the leader binary acts as the supervisor.
pub const SUBCOMMAND: &str = "supervise";

/// The largest request: a command line and its environment. A larger one
/// is run by an exec'd leader instead.
pub const MAX_REQUEST: usize = 60 * 1024;

/// The largest reply: its error text is cut to fit.
pub const MAX_REPLY: usize = 4096;

/// The most descriptors one request carries: stdout, stderr, the
/// heartbeat pipe and the cgroup's `cgroup.procs`.
const MAX_FDS: usize = 4;

/// Start a leader for one command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The worker's name for it, echoed in the replies.
    pub id: u64,
    pub command: String,
    pub workdir: PathBuf,
    /// Set on top of the supervisor's environment (the worker's, without
    /// the fleet's secrets).
    pub env: Vec<(String, String)>,
    /// The leader's heartbeat deadline (0: none, and no heartbeat pipe).
    pub deadline_ms: u64,
    /// `<uid>:<gid>` to run the command as.
    pub user: Option<String>,
    /// Whether the descriptors hold a heartbeat pipe (third).
    pub stdin: bool,
    /// Whether the descriptors end with the session's `cgroup.procs`.
    pub cgroup: bool,
}

/// What the supervisor says about a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reply {
    /// The leader runs, as `pid`, leading process group `pid`.
    Started { id: u64, pid: i32 },
    /// No leader was started.
    NotStarted { id: u64, error: String },
    /// The leader was reaped: its exit code, or the signal that killed it.
    Ended {
        id: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// Runs the supervisor: `regatta-session-leader supervise <worker pid>`,
/// its stdin the worker's socket. Exits when the worker closes the socket
/// or dies; the leaders it started then die too.
pub fn main(worker_pid: i32) -> ExitCode {
    let fail = |what: &str, e: Errno| {
        eprintln!("regatta session supervisor: {what}: {e}");
        ExitCode::from(125)
    };
    // SAFETY: fd 0 is the socket the worker handed over; nothing else in
    // this process uses it.
    let socket = unsafe { OwnedFd::from_raw_fd(0) };
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGHUP);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGCHLD);
    // It shares the worker's process group: a Ctrl-C (or a SIGQUIT) to the
    // group is the worker's to handle, with its grace period, and would
    // otherwise end every session at once. Blocked, not ignored, so the
    // commands (spawned with an empty mask) do not inherit it.
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGQUIT);
    if let Err(e) = signals.thread_block() {
        return fail("cannot block signals", e);
    }
    let signal_fd =
        match SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => fd,
            Err(e) => return fail("cannot watch signals", e),
        };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGHUP) {
        return fail("cannot watch the worker", e);
    }
    if getppid() != Pid::from_raw(worker_pid) {
        return ExitCode::SUCCESS;
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        return fail("cannot make itself non-dumpable", e);
    }
    let me = getpid();
    let mut running: HashMap<Pid, u64> = HashMap::new();
    let mut buffer = vec![0u8; MAX_REQUEST];
    loop {
        let mut fds = [
            PollFd::new(socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return fail("poll failed", e),
        }
        let asked = fds[0].revents().is_some_and(|r| !r.is_empty());
        if asked {
            match receive(socket.as_raw_fd(), &mut buffer) {
                // The worker closed its end: it is gone or shutting down,
                // and the leaders die with this process.
                Ok(None) => return ExitCode::SUCCESS,
                Ok(Some((length, descriptors))) => {
                    match rmp_serde::from_slice::<Request>(&buffer[..length]) {
                        Ok(request) => {
                            let reply =
                                start(me, &socket, &signal_fd, request, descriptors, &mut running);
                            if let Err(e) = send(socket.as_raw_fd(), &reply) {
                                return fail("cannot answer the worker", e);
                            }
                        }
                        // Another version's worker, or a bug: without its id
                        // no answer can reach the caller, so this process
                        // ends, and the worker's callers hear it.
                        Err(e) => {
                            eprintln!(
                                "regatta session supervisor: a request that does not decode ({e})"
                            );
                            return ExitCode::from(125);
                        }
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return fail("cannot read the worker's request", e),
            }
        }
        while let Ok(Some(info)) = signal_fd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                // The worker died: so do this process and, by their own
                // death signal, its leaders.
                Ok(Signal::SIGHUP) => return ExitCode::SUCCESS,
                // A SIGTERM, SIGINT or SIGQUIT to the worker's group is the
                // worker's to handle.
                Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) => {}
                _ => {
                    for reply in reap(&mut running) {
                        if let Err(e) = send(socket.as_raw_fd(), &reply) {
                            return fail("cannot answer the worker", e);
                        }
                    }
                }
            }
        }
    }
}

/// Reads one request and the descriptors that came with it; `None` at end
/// of file.
fn receive(socket: RawFd, buffer: &mut [u8]) -> Result<Option<(usize, Vec<OwnedFd>)>, Errno> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buffer)];
    let message = recvmsg::<UnixAddr>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut descriptors = Vec::new();
    if let Ok(messages) = message.cmsgs() {
        for control in messages {
            if let ControlMessageOwned::ScmRights(fds) = control {
                // SAFETY: SCM_RIGHTS made these descriptors new in this
                // process; nothing else owns them.
                descriptors.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
    }
    let truncated = message
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let length = message.bytes;
    if length == 0 && descriptors.is_empty() {
        return Ok(None);
    }
    if truncated {
        // The worker sends neither (it checks first): without the whole
        // request no answer can reach its caller, so this process ends.
        eprintln!("regatta session supervisor: a request over {MAX_REQUEST} bytes or {MAX_FDS} descriptors");
        return Err(Errno::EMSGSIZE);
    }
    Ok(Some((length, descriptors)))
}

/// Sends one reply (the socket is blocking on this side: the worker reads
/// all the time), its error text cut to fit in [`MAX_REPLY`].
fn send(socket: RawFd, reply: &Reply) -> Result<(), Errno> {
    let capped;
    let reply = match reply {
        Reply::NotStarted { id, error } if error.len() > MAX_REPLY / 2 => {
            let mut cut = MAX_REPLY / 2;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            capped = Reply::NotStarted {
                id: *id,
                error: format!("{}...", &error[..cut]),
            };
            &capped
        }
        other => other,
    };
    let bytes = rmp_serde::to_vec(reply).map_err(|_| Errno::EINVAL)?;
    loop {
        match sendmsg::<UnixAddr>(
            socket,
            &[IoSlice::new(&bytes)],
            &[],
            MsgFlags::empty(),
            None,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

/// Forks a leader for `request`, or says why not.
fn start(
    me: Pid,
    socket: &OwnedFd,
    signal_fd: &SignalFd,
    request: Request,
    descriptors: Vec<OwnedFd>,
    running: &mut HashMap<Pid, u64>,
) -> Reply {
    let id = request.id;
    let wanted = 2 + usize::from(request.stdin) + usize::from(request.cgroup);
    if descriptors.len() != wanted {
        return Reply::NotStarted {
            id,
            error: format!(
                "the request came with {} descriptors, not {wanted}",
                descriptors.len()
            ),
        };
    }
    // An environment the C library cannot hold is refused before the fork
    // (the exec'd leader then reports it as a spawn would).
    if let Some((name, _)) = request
        .env
        .iter()
        .find(|(name, value)| name.is_empty() || name.contains(['=', '\0']) || value.contains('\0'))
    {
        return Reply::NotStarted {
            id,
            error: format!("the environment variable {name:?} cannot be set"),
        };
    }
    // A folder that is not there fails here, as a spawn would, not as the
    // command's own failure.
    // One stat, not an open: a folder one may enter but not list is fine.
    match std::fs::metadata(&request.workdir) {
        Ok(folder) if folder.is_dir() => {}
        Ok(_) => {
            return Reply::NotStarted {
                id,
                error: format!("cannot enter {}: not a folder", request.workdir.display()),
            }
        }
        Err(e) => {
            return Reply::NotStarted {
                id,
                error: format!("cannot enter {}: {e}", request.workdir.display()),
            }
        }
    }
    // SAFETY: this process is single-threaded, so the child may do all
    // that the parent could.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = become_leader(me, socket, signal_fd, request, descriptors);
            // Without running this process's destructors: the parent's
            // state is not the child's to tear down.
            std::process::exit(i32::from(code))
        }
        Ok(ForkResult::Parent { child }) => {
            running.insert(child, id);
            Reply::Started {
                id,
                pid: child.as_raw(),
            }
        }
        Err(e) => Reply::NotStarted {
            id,
            error: format!("cannot fork a session leader: {e}"),
        },
    }
}

/// In the forked child: takes the request's descriptors as stdin, stdout
/// and stderr, leads a process group of its own (in the session's cgroup),
/// enters the working folder, sets the session's environment, and runs the
/// leader.
fn become_leader(
    supervisor: Pid,
    socket: &OwnedFd,
    signal_fd: &SignalFd,
    request: Request,
    descriptors: Vec<OwnedFd>,
) -> u8 {
    // Seen as a leader in `ps -o comm` and `top`, not as a second
    // supervisor (its command line stays the supervisor's).
    let _ = nix::sys::prctl::set_name(c"regatta-leader");
    // The supervisor's signals are not the session's; nor is the worker's
    // socket, replaced below when it sits on fd 0 (closed first, fd 0
    // would go to the next file opened, and then be closed with it).
    let _ = nix::unistd::close(signal_fd.as_fd().as_raw_fd());
    let mut descriptors = descriptors.into_iter();
    let (Some(stdout), Some(stderr)) = (descriptors.next(), descriptors.next()) else {
        return 125;
    };
    let stdin = match request.stdin.then(|| descriptors.next()).flatten() {
        Some(pipe) => pipe,
        None => match std::fs::File::open("/dev/null") {
            Ok(null) => null.into(),
            Err(e) => {
                eprintln!("regatta session leader: cannot open /dev/null: {e}");
                return 125;
            }
        },
    };
    let cgroup = request.cgroup.then(|| descriptors.next()).flatten();
    if let Err(e) = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
        eprintln!("regatta session leader: cannot lead a process group: {e}");
        return 125;
    }
    if let Some(procs) = &cgroup {
        if let Err(e) = crate::cgroup::join(procs.as_raw_fd()) {
            eprintln!("regatta session leader: cannot join the session's cgroup: {e}");
            return 125;
        }
    }
    // dup2 clears close-on-exec on the copies, so the command inherits them.
    let wired = nix::unistd::dup2_stdin(&stdin)
        .and_then(|()| nix::unistd::dup2_stdout(&stdout))
        .and_then(|()| nix::unistd::dup2_stderr(&stderr));
    if let Err(e) = wired {
        eprintln!("regatta session leader: cannot set up its stdin, stdout and stderr: {e}");
        return 125;
    }
    drop((stdin, stdout, stderr, cgroup));
    if socket.as_raw_fd() > 2 {
        let _ = nix::unistd::close(socket.as_raw_fd());
    }
    if let Err(e) = std::env::set_current_dir(&request.workdir) {
        eprintln!(
            "regatta session leader: cannot enter {}: {e}",
            request.workdir.display()
        );
        return 125;
    }
    for (name, value) in &request.env {
        // Single-threaded, as its parent: setting the environment is safe.
        std::env::set_var(name, value);
    }
    leader::run(
        supervisor.as_raw(),
        request.deadline_ms,
        &request.command,
        request.user.as_deref(),
    )
}

/// Reaps every leader that ended, with the reply for each.
fn reap(running: &mut HashMap<Pid, u64>) -> Vec<Reply> {
    let mut replies = Vec::new();
    loop {
        let (pid, code, signal) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code), None),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, None, Some(signal as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return replies,
            Ok(_) => continue,
        };
        if let Some(id) = running.remove(&pid) {
            replies.push(Reply::Ended { id, code, signal });
        }
    }
}
