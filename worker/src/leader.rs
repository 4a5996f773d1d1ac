//! The session leader: a tiny process between the worker and the session's
//! command that makes sure a session never outlives its worker's claim.
//!
//! `PR_SET_PDEATHSIG` only signals the direct child of the dying process, so
//! a plain `sh -c` would leave its own children running when the worker is
//! killed with `kill -9`. The leader is the direct child: it asks the kernel
//! for SIGHUP when the worker dies, runs the command in its own process
//! group, and on SIGHUP kills the whole group.
//!
//! A worker can also stall without dying (SIGSTOP, a VM pause): its leases
//! then expire and the unit re-runs elsewhere. So the worker sends the
//! leader a byte on its stdin after each lease renewal, and a leader that
//! hears nothing for its deadline (two renewal periods, before the lease
//! can expire) kills the group too; so does one whose stdin closes.
//!
//! A command may also detach (`setsid cmd &`, a double fork) and outlive
//! its group. The leader is therefore a child subreaper: orphans of the
//! session become its children, and before it exits (the command ended, or
//! it kills the session) it kills and reaps every child it has until none
//! is left ([`sweep`]), so nothing of the session survives it and nothing
//! holds the session's log pipe open. Where the machine allows, the worker
//! also puts the leader in a cgroup of its own ([`crate::cgroup`]).
//!
//! The leader is non-dumpable, as the worker: the session, same user, may
//! not read or ptrace it. `--session-user` (a root worker only) makes the
//! command run as another user, which may not read the worker's files.
//!
//! The leader ignores SIGTERM itself so that a deadline's SIGTERM to the
//! group reaches the command, which may clean up during the grace period,
//! and it exits with the command's status. It is started once per command,
//! so it stays small: no async runtime, one `poll` loop. A plain command
//! line runs without `/bin/sh` ([`plain_command`]).

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgrp, getpid, getppid, Gid, Pid, Uid};

use crate::containment::SessionUser;
use crate::plain_command;

/// The hidden subcommand under which the worker binary acts as a leader.
pub const SUBCOMMAND: &str = "session-leader";

/// The dedicated leader binary, next to the worker's: much smaller than the
/// worker, so cheaper to start once per command.
pub const BINARY: &str = "regatta-session-leader";

/// The leader to run: the dedicated binary beside `worker_exe` when it is
/// there, else the worker binary itself.
pub fn executable(worker_exe: &std::path::Path) -> std::path::PathBuf {
    let dedicated = worker_exe.with_file_name(BINARY);
    if dedicated.is_file() {
        dedicated
    } else {
        worker_exe.to_path_buf()
    }
}

/// Runs the leader: `regatta-worker session-leader <worker pid>
/// <deadline ms, 0 for none> <command> [<uid>:<gid> to run it as]`.
pub fn main(worker_pid: i32, deadline_ms: u64, command: &str, user: Option<&str>) -> ExitCode {
    ExitCode::from(run(worker_pid, deadline_ms, command, user))
}

/// The leader's work, in an exec'd leader or one forked by the
/// [`supervisor`](crate::supervisor): `parent_pid` is the process whose
/// death kills the session (the worker, or the supervisor that dies with
/// it). Returns the exit status to leave with.
pub fn run(parent_pid: i32, deadline_ms: u64, command: &str, user: Option<&str>) -> u8 {
    // Only a process that leads its own group may take the group down; a
    // leader started by hand in someone else's group just runs the command.
    let leads_group = getpgrp() == getpid();
    // Killing the group kills the leader too: the worker sees its leader
    // die of SIGKILL (not an exit code) and reports the session lost.
    let kill = || {
        sweep();
        if leads_group {
            let _ = killpg(getpgrp(), Signal::SIGKILL);
        }
        125
    };
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGHUP);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGCHLD);
    // Blocked, they queue on the signalfd instead of acting.
    if let Err(e) = signals.thread_block() {
        eprintln!("regatta session leader: cannot block signals: {e}");
        return 125;
    }
    let signal_fd =
        match SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("regatta session leader: cannot watch signals: {e}");
                return 125;
            }
        };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGHUP) {
        eprintln!("regatta session leader: cannot watch the worker: {e}");
        return 125;
    }
    // The parent may have died between fork and prctl.
    if getppid() != Pid::from_raw(parent_pid) {
        return kill();
    }
    // execve made this process dumpable again: the session, same user,
    // could otherwise ptrace it or read its memory.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("regatta session leader: cannot make itself non-dumpable: {e}");
        return 125;
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("regatta session leader: cannot become the session's subreaper: {e}");
        return 125;
    }
    let user = match user.map(parse_user).transpose() {
        Ok(user) => user,
        Err(e) => {
            eprintln!("regatta session leader: {e}");
            return 125;
        }
    };
    if let Some(user) = user {
        hand_artifact_dir_to(user);
    }
    // The command gets the default signal mask back, and its user.
    let prepare = |child: &mut std::process::Command| {
        child.stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            child.pre_exec(move || {
                let os = |e: nix::errno::Errno| std::io::Error::from_raw_os_error(e as i32);
                if let Some(user) = user {
                    let gid = Gid::from_raw(user.gid);
                    nix::unistd::setgroups(&[gid]).map_err(os)?;
                    nix::unistd::setgid(gid).map_err(os)?;
                    nix::unistd::setuid(Uid::from_raw(user.uid)).map_err(os)?;
                }
                SigSet::all().thread_unblock().map_err(os)
            });
        }
    };
    // A plain command line runs without the shell; one whose program cannot
    // start goes to the shell after all, which reports it as it would have.
    // Without a user to switch to, `posix_spawn` starts it (a vfork: none of
    // the leader's memory is copied); a switch needs std's fork.
    let start = |mut child: std::process::Command| match user {
        None => spawn_light(&child),
        Some(_) => {
            prepare(&mut child);
            child.spawn().map(|child| Pid::from_raw(child.id() as i32))
        }
    };
    let (child, direct) = plain_command::command_for(command, |name| std::env::var_os(name));
    let spawned = match start(child) {
        Err(_) if direct => start(plain_command::shell(command)),
        spawned => spawned,
    };
    let child_pid = match spawned {
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("regatta session leader: cannot run /bin/sh: {e}");
            return 127;
        }
    };
    let deadline = (deadline_ms > 0).then(|| Duration::from_millis(deadline_ms));
    let mut stdin = std::io::stdin().lock();
    let mut last_beat = Instant::now();
    loop {
        let timeout = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_sub(last_beat.elapsed());
                PollTimeout::try_from(left.as_millis().min(60_000) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let stdin_fd = std::io::stdin();
        let mut fds = vec![PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
        if deadline.is_some() {
            fds.push(PollFd::new(stdin_fd.as_fd(), PollFlags::POLLIN));
        }
        if let Err(e) = poll(&mut fds, timeout) {
            if e != nix::errno::Errno::EINTR {
                eprintln!("regatta session leader: poll failed: {e}");
                return kill();
            }
        }
        let heard = fds.get(1).and_then(|fd| fd.revents()).is_some_and(|r| {
            r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
        });
        drop(fds);
        while let Ok(Some(info)) = signal_fd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                // The worker is gone: nothing of this session may survive it.
                Ok(Signal::SIGHUP) => return kill(),
                // SIGTERM is for the command (a deadline or a cancel).
                Ok(Signal::SIGTERM) => {}
                _ => match waitpid(child_pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => {
                        sweep();
                        return code.clamp(0, 255) as u8;
                    }
                    Ok(WaitStatus::Signaled(_, signal, _)) => {
                        sweep();
                        return (128 + signal as i32).clamp(0, 255) as u8;
                    }
                    Ok(_) => {}
                    Err(_) => return 125,
                },
            }
        }
        if heard {
            let mut buffer = [0u8; 64];
            match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => return kill(), // the worker closed its end: gone
                Ok(_) => last_beat = Instant::now(),
            }
        }
        if deadline.is_some_and(|deadline| last_beat.elapsed() >= deadline) {
            eprintln!("regatta session leader: no lease renewal from the worker within {deadline_ms} ms; killing the session");
            return kill();
        }
    }
}

/// Starts `command` with `posix_spawnp`: its stdin `/dev/null`, every
/// signal unblocked and SIGPIPE back to its default (as std's fork path
/// does), in the leader's environment with the command's own changes.
fn spawn_light(command: &std::process::Command) -> std::io::Result<Pid> {
    use nix::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
    use std::ffi::{CString, OsStr, OsString};
    use std::os::unix::ffi::OsStrExt;

    let c_string = |text: &[u8]| {
        CString::new(text).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the command line holds a NUL byte",
            )
        })
    };
    let program = c_string(command.get_program().as_bytes())?;
    let mut args = vec![program.clone()];
    for arg in command.get_args() {
        args.push(c_string(arg.as_bytes())?);
    }
    let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => env.insert(name.to_owned(), value.to_owned()),
            None => env.remove(name),
        };
    }
    let envp = env
        .iter()
        .map(|(name, value)| c_string(&[name.as_bytes(), b"=", OsStr::as_bytes(value)].concat()))
        .collect::<std::io::Result<Vec<CString>>>()?;
    // Close-on-exec here; its copy as the child's stdin is not.
    let null = std::fs::File::open("/dev/null")?;
    let mut actions = PosixSpawnFileActions::init()?;
    actions.add_dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0)?;
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_sigmask(&SigSet::empty())?;
    let mut defaults = SigSet::empty();
    defaults.add(Signal::SIGPIPE);
    attr.set_sigdefault(&defaults)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    Ok(posix_spawnp(&program, &actions, &attr, &args, &envp)?)
}

/// Kills (SIGKILL) and reaps every child of the leader until it has none:
/// the command, and the processes it left, which the kernel hands to the
/// leader, their subreaper, as their parents die. A process that forks
/// meanwhile only adds a child that is handed over when its parent dies,
/// so a later round finds it; the rounds never block on a child, so one
/// missed by a round cannot hang the leader.
fn sweep() {
    let me = getpid();
    loop {
        // Reaping first: a session that left nothing behind (the usual
        // case) ends here, without reading every process's `/proc` entry.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                // ECHILD: no child is left.
                Err(_) => return,
            }
        }
        for child in children_of(me) {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The children of `parent`, from `/proc` (the `children` file needs a
/// kernel option, so every process's parent is read instead).
fn children_of(parent: Pid) -> Vec<Pid> {
    let own = format!("/proc/{parent}/task/{parent}/children");
    if let Ok(list) = std::fs::read_to_string(own) {
        return list
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok().map(Pid::from_raw))
            .collect();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (name) state ppid ...`; the name may hold spaces and parentheses.
            let ppid: i32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent.as_raw()).then_some(Pid::from_raw(pid))
        })
        .collect()
}

/// Parses the `<uid>:<gid>` argument the worker passes.
fn parse_user(text: &str) -> Result<SessionUser, String> {
    let (uid, gid) = text
        .split_once(':')
        .ok_or_else(|| format!("the session user '{text}' is not <uid>:<gid>"))?;
    match (uid.parse(), gid.parse()) {
        (Ok(uid), Ok(gid)) => Ok(SessionUser { uid, gid }),
        _ => Err(format!("the session user '{text}' is not <uid>:<gid>")),
    }
}

/// Gives the session's artifact folder (`REGATTA_ARTIFACT_DIR`, made by the
/// worker) to the user the command runs as, so that it may write there.
fn hand_artifact_dir_to(user: SessionUser) {
    if let Some(dir) = std::env::var_os("REGATTA_ARTIFACT_DIR") {
        let _ = std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid));
    }
}
