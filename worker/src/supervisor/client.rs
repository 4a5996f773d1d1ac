//! The worker's side of the [supervisor](super): starts it once, sends it
//! one [`Request`] per command with the command's descriptors, and hands
//! each caller its leader's pid and, later, how the leader ended.
//!
//! When the supervisor is gone (killed, or it could not start), every
//! leader it had dies with it (their death signal), the waiting callers
//! hear that their leader was killed, and [`Supervisor::is_alive`] turns
//! false, so the worker exec's its leaders again from then on.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::{Reply, Request, MAX_REQUEST, SUBCOMMAND};

const GONE: &str = "the session supervisor is gone";

/// How long a fork may take before the supervisor counts as stuck: a fork
/// takes well under a millisecond.
pub const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How a leader ended: its exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The supervisor died before it reaped the leader, which died with it.
    pub with_supervisor: bool,
}

impl Ended {
    /// A leader that died with its supervisor: by its death signal, it
    /// killed its session and itself.
    pub const LOST: Ended = Ended {
        code: None,
        signal: Some(nix::sys::signal::Signal::SIGKILL as i32),
        with_supervisor: true,
    };

    /// As a process exit status, for the code that reads one.
    pub fn status(self) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        match (self.code, self.signal) {
            (Some(code), _) => std::process::ExitStatus::from_raw((code & 0xff) << 8),
            (None, Some(signal)) => std::process::ExitStatus::from_raw(signal & 0x7f),
            (None, None) => std::process::ExitStatus::from_raw(0x7f),
        }
    }
}

/// A leader the supervisor forked.
#[derive(Debug)]
pub struct Forked {
    /// Its pid, which is also its process group.
    pub pid: i32,
    /// Resolves when the supervisor has reaped it.
    pub ended: oneshot::Receiver<Ended>,
}

/// Why a request started no leader that the worker knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForkError {
    /// No leader was started: the worker may start one itself.
    Refused(String),
    /// The supervisor died with the request in hand: a leader may have
    /// been forked, and died with it; starting another could overlap it,
    /// so the command counts as abandoned.
    Lost(String),
}

impl std::fmt::Display for ForkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForkError::Refused(why) => write!(f, "{why}"),
            ForkError::Lost(why) => write!(f, "{why}; its leader, if forked, died with it"),
        }
    }
}

/// A caller waiting on the supervisor.
enum Waiting {
    Start(oneshot::Sender<Result<Forked, ForkError>>),
    End(oneshot::Sender<Ended>),
}

/// The running supervisor.
pub struct Supervisor {
    socket: AsyncFd<OwnedFd>,
    waiting: Mutex<HashMap<u64, Waiting>>,
    next_id: AtomicU64,
    alive: AtomicBool,
    pid: u32,
    /// See [`ANSWER_WITHIN`].
    answer_within: std::time::Duration,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("pid", &self.pid)
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl Supervisor {
    /// Starts the supervisor (`<leader_exe> supervise <worker pid>`) with
    /// the environment the sessions get: the worker's, without `withheld`.
    /// Needs a tokio runtime.
    pub fn start(leader_exe: &Path, withheld: &[&str]) -> std::io::Result<Arc<Supervisor>> {
        Supervisor::start_answering_within(leader_exe, withheld, ANSWER_WITHIN)
    }

    /// [`Supervisor::start`], with a bound other than [`ANSWER_WITHIN`] on
    /// each answer (tests).
    pub fn start_answering_within(
        leader_exe: &Path,
        withheld: &[&str],
        answer_within: std::time::Duration,
    ) -> std::io::Result<Arc<Supervisor>> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        // The supervisor's end blocks: it waits for requests in `poll` and
        // its replies are small.
        let flags = nix::fcntl::fcntl(&theirs, nix::fcntl::FcntlArg::F_GETFL)?;
        let blocking =
            nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&theirs, nix::fcntl::FcntlArg::F_SETFL(blocking))?;
        let mut command = tokio::process::Command::new(leader_exe);
        command
            .arg(SUBCOMMAND)
            .arg(std::process::id().to_string())
            .stdin(Stdio::from(theirs))
            .kill_on_drop(true);
        for name in withheld {
            command.env_remove(name);
        }
        let mut child = command.spawn()?;
        // SAFETY: an `OwnedFd` keeps its descriptor open, unchanged, for
        // as long as the `AsyncFd` owns it.
        let socket = unsafe { AsyncFd::register(ours) }.map_err(std::io::Error::from)?;
        let supervisor = Arc::new(Supervisor {
            socket,
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            pid: child.id().unwrap_or(0),
            answer_within,
        });
        let reader = Arc::clone(&supervisor);
        tokio::spawn(async move {
            let why = reader.read_replies().await;
            reader.gone();
            // Reaps it, however it ended.
            let status = child.wait().await;
            tracing::warn!(pid = reader.pid, ?status, "the session supervisor is gone ({why}); sessions start their own leaders from now on");
        });
        Ok(supervisor)
    }

    /// Whether it still takes requests.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks for a leader for `request` (its id is set here) with `fds`:
    /// stdout, stderr, then the heartbeat pipe and `cgroup.procs` when the
    /// request says so. `Err` when no leader was started.
    pub async fn fork(
        &self,
        mut request: Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Forked, ForkError> {
        request.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = rmp_serde::to_vec(&request)
            .map_err(|e| ForkError::Refused(format!("cannot encode the request: {e}")))?;
        if bytes.len() > MAX_REQUEST {
            return Err(ForkError::Refused(format!(
                "the command and its environment take {} bytes, over the supervisor's {MAX_REQUEST}",
                bytes.len()
            )));
        }
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(request.id, Waiting::Start(sender));
        if !self.is_alive() {
            self.lock().remove(&request.id);
            return Err(ForkError::Refused(GONE.to_owned()));
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let sent = loop {
            let mut guard = match self.socket.writable().await {
                Ok(guard) => guard,
                Err(e) => break Err(e),
            };
            let rights = [ControlMessage::ScmRights(&raw)];
            match guard.try_io(|socket| {
                sendmsg::<UnixAddr>(
                    socket.as_raw_fd(),
                    &[IoSlice::new(&bytes)],
                    &rights,
                    MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)
            }) {
                Ok(result) => break result,
                Err(_would_block) => continue,
            }
        };
        if let Err(e) = sent {
            // Not sent: no leader can exist for it.
            self.lock().remove(&request.id);
            return Err(ForkError::Refused(format!(
                "cannot reach the session supervisor: {e}"
            )));
        }
        match tokio::time::timeout(self.answer_within, receiver).await {
            Ok(answer) => answer.unwrap_or_else(|_| Err(ForkError::Lost(GONE.to_owned()))),
            Err(_) => {
                // Stopped or stuck: it is of no more use, and its leaders,
                // this one perhaps among them, die with it.
                self.lock().remove(&request.id);
                let answer_within = self.answer_within;
                tracing::warn!(
                    pid = self.pid,
                    "the session supervisor did not answer within {answer_within:?}; killing it"
                );
                if self.pid > 0 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(self.pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                Err(ForkError::Lost(format!(
                    "the session supervisor did not answer within {answer_within:?}"
                )))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        // A panic while holding it leaves the map as it was: still usable.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads replies until the supervisor is gone; returns why it is.
    async fn read_replies(&self) -> String {
        // Replies are small, and the supervisor caps what it writes in them
        // (`MAX_REPLY`); a larger or unreadable one means it is broken.
        let mut buffer = vec![0u8; super::MAX_REPLY];
        loop {
            let mut guard = match self.socket.readable().await {
                Ok(guard) => guard,
                Err(e) => return format!("its socket failed: {e}"),
            };
            let received = guard.try_io(|socket| {
                let mut iov = [IoSliceMut::new(&mut buffer)];
                recvmsg::<UnixAddr>(socket.as_raw_fd(), &mut iov, None, MsgFlags::empty())
                    .map(|message| (message.bytes, message.flags.contains(MsgFlags::MSG_TRUNC)))
                    .map_err(std::io::Error::from)
            });
            let length = match received {
                Err(_would_block) => continue,
                Ok(Err(e)) => return format!("its socket failed: {e}"),
                Ok(Ok((0, _))) => return "it closed its socket".to_owned(),
                Ok(Ok((_, true))) => return "it sent a reply too large to read".to_owned(),
                Ok(Ok((length, false))) => length,
            };
            match rmp_serde::from_slice::<Reply>(&buffer[..length]) {
                Ok(reply) => self.deliver(reply),
                // Its caller would never hear: the supervisor is of no use.
                Err(e) => {
                    if self.pid > 0 {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(self.pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    return format!("it sent a reply that does not decode ({e})");
                }
            }
        }
    }

    /// Hands a reply to whoever waits for it.
    fn deliver(&self, reply: Reply) {
        let mut waiting = self.lock();
        match reply {
            Reply::Started { id, pid } => {
                if let Some(Waiting::Start(caller)) = waiting.remove(&id) {
                    let (sender, ended) = oneshot::channel();
                    waiting.insert(id, Waiting::End(sender));
                    // A caller that gave up still has a leader running: its
                    // end is heard and dropped.
                    let _ = caller.send(Ok(Forked { pid, ended }));
                }
            }
            Reply::NotStarted { id, error } => {
                if let Some(Waiting::Start(caller)) = waiting.remove(&id) {
                    let _ = caller.send(Err(ForkError::Refused(error)));
                }
            }
            Reply::Ended { id, code, signal } => {
                if let Some(Waiting::End(caller)) = waiting.remove(&id) {
                    let _ = caller.send(Ended {
                        code,
                        signal,
                        with_supervisor: false,
                    });
                }
            }
        }
    }

    /// The supervisor is gone: so are its leaders.
    fn gone(&self) {
        self.alive.store(false, Ordering::Release);
        for (_, caller) in self.lock().drain() {
            match caller {
                Waiting::Start(caller) => {
                    let _ = caller.send(Err(ForkError::Lost(GONE.to_owned())));
                }
                Waiting::End(caller) => {
                    let _ = caller.send(Ended::LOST);
                }
            }
        }
    }
}
