//! `regatta`: the coordinator daemon and its command-line interface.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let mut args = cli::Args::parse();
    // The secret, the API token and the URLs stay out of reach of the
    // other processes of this user: out of the environment (before any
    // thread exists) and out of /proc (non-dumpable).
    args.connection.note_secret_source();
    // SAFETY: no thread exists yet.
    unsafe { regatta_secret::scrub_environment(regatta_secret::FLEET_VARIABLES) };
    if let Err(e) = regatta_secret::keep_memory_private() {
        eprintln!("regatta: cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {e}");
        return ExitCode::FAILURE;
    }
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
