//! The session leader: a tiny process between the worker and the session's
//! command that makes sure a session never outlives its worker.
//!
//! `PR_SET_PDEATHSIG` only signals the direct child of the dying process, so
//! a plain `sh -c` would leave its own children running when the worker is
//! killed with `kill -9`. The leader is the direct child: it asks the kernel
//! for SIGHUP when the worker dies, runs the command in its own process
//! group, and on SIGHUP kills the whole group. It ignores SIGTERM itself so
//! that a deadline's SIGTERM to the group reaches the command, which may
//! clean up during the grace period, and it exits with the command's status.
//!
//! It is started once per session, so it stays small: no async runtime, just
//! `sigwait` on the three signals it cares about.

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use nix::sys::signal::{killpg, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgrp, getpid, getppid, Pid};

/// The hidden subcommand under which the worker binary acts as a leader.
pub const SUBCOMMAND: &str = "session-leader";

/// Runs the leader: `regatta-worker session-leader <worker pid> <command>`.
pub fn main(worker_pid: i32, command: &str) -> ExitCode {
    // Only a process that leads its own group may take the group down; a
    // leader started by hand in someone else's group just runs the command.
    let leads_group = getpgrp() == getpid();
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGHUP);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGCHLD);
    // Block them so that they queue for `wait` below instead of acting.
    if let Err(e) = signals.thread_set_mask() {
        eprintln!("regatta session leader: cannot block signals: {e}");
        return ExitCode::from(125);
    }
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGHUP) {
        eprintln!("regatta session leader: cannot watch the worker: {e}");
        return ExitCode::from(125);
    }
    // The worker may have died between fork and prctl.
    if getppid() != Pid::from_raw(worker_pid) {
        if leads_group {
            kill_group();
        }
        return ExitCode::from(125);
    }
    let mut child = std::process::Command::new("/bin/sh");
    child.arg("-c").arg(command);
    // The command gets the default signal mask back, whatever ours is.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        child.pre_exec(|| {
            SigSet::all()
                .thread_unblock()
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
    let child = match child.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("regatta session leader: cannot run /bin/sh: {e}");
            return ExitCode::from(127);
        }
    };
    let child_pid = Pid::from_raw(child.id() as i32);
    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => {
                // The worker is gone: nothing of this session may survive it.
                if leads_group {
                    kill_group();
                }
                return ExitCode::from(129);
            }
            // SIGTERM is for the command (a deadline or a cancel); the
            // leader keeps waiting so it can report the command's status.
            Ok(Signal::SIGTERM) => {}
            Ok(_) => match waitpid(child_pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return ExitCode::from(code.clamp(0, 255) as u8),
                Ok(WaitStatus::Signaled(_, signal, _)) => {
                    return ExitCode::from((128 + signal as i32).clamp(0, 255) as u8)
                }
                Ok(_) => {}
                Err(_) => return ExitCode::from(125),
            },
            Err(_) => return ExitCode::from(125),
        }
    }
}

fn kill_group() {
    let _ = killpg(getpgrp(), Signal::SIGKILL);
}
