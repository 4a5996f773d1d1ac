//! `regatta-session-leader`: the small process that leads a session's
//! process group (see `regatta_worker::leader`). A binary of its own so that
//! starting one per session costs little; the worker falls back to leading
//! with its own binary when this one is missing.

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(regatta_worker::supervisor::SUBCOMMAND) {
        let worker_pid = argv.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
        return regatta_worker::supervisor::main(worker_pid);
    }
    let worker_pid = argv.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let deadline_ms = argv.get(2).and_then(|d| d.parse().ok()).unwrap_or(0);
    let command = argv.get(3).cloned().unwrap_or_default();
    let user = argv.get(4).map(String::as_str);
    regatta_worker::leader::main(worker_pid, deadline_ms, &command, user)
}
