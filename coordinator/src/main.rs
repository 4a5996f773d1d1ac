//! `regatta`: the coordinator daemon and its command-line interface.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    if !matches!(args.command, cli::Command::Serve(_)) {
        // A command piped into `head` should stop quietly, like any Unix
        // tool, instead of panicking on a closed stdout.
        // SAFETY: set once at start, before any thread exists.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("regatta: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("regatta: {e:#}");
            ExitCode::FAILURE
        }
    }
}
