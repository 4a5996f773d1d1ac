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

use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpgrp, getppid, Pid};

/// The hidden subcommand under which the worker binary acts as a leader.
pub const SUBCOMMAND: &str = "session-leader";

/// Runs the leader: `regatta-worker session-leader <worker pid> <command>`.
pub fn main(worker_pid: i32, command: &str) -> ExitCode {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGHUP) {
        eprintln!("regatta session leader: cannot watch the worker: {e}");
        return ExitCode::from(125);
    }
    // The worker may have died between fork and prctl.
    if getppid() != Pid::from_raw(worker_pid) {
        kill_group();
        return ExitCode::from(125);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("regatta session leader: {e}");
            return ExitCode::from(125);
        }
    };
    runtime.block_on(lead(command))
}

async fn lead(command: &str) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hangup), Ok(mut terminate)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("regatta session leader: cannot install signal handlers");
        return ExitCode::from(125);
    };
    let mut child = match tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .kill_on_drop(false)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("regatta session leader: cannot run /bin/sh: {e}");
            return ExitCode::from(127);
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => match (status.code(), status.signal()) {
                        (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
                        (None, Some(signal)) => ExitCode::from((128 + signal).clamp(0, 255) as u8),
                        _ => ExitCode::from(125),
                    },
                    Err(_) => ExitCode::from(125),
                };
            }
            _ = hangup.recv() => {
                // The worker is gone: nothing of this session may survive it.
                kill_group();
                return ExitCode::from(129);
            }
            // SIGTERM is for the command (a deadline or a cancel); the leader
            // keeps waiting so it can report the command's own status.
            _ = terminate.recv() => {}
        }
    }
}

fn kill_group() {
    let _ = killpg(getpgrp(), Signal::SIGKILL);
}
