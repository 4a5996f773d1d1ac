//! The `command` span of every process a session runs (its command, each
//! gate check, each repair): how it ended (exit code, or the signal regatta
//! sent), how long it ran, and ERROR with the reason when it did not exit 0
//! by itself, so a tracing UI finds the failing step.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::command::Ending;
use crate::Error;

/// A new `command` span; [`describe_ending`] fills it in.
pub(crate) fn command_span() -> tracing::Span {
    tracing::info_span!(
        "command",
        process.exit.code = tracing::field::Empty,
        process.signal = tracing::field::Empty,
        command.ending = tracing::field::Empty,
        command.duration_ms = tracing::field::Empty,
    )
}

/// Records how a command ended on its span: exit code or signal, duration,
/// and ERROR with the reason when it did not exit 0 by itself.
pub(crate) fn describe_ending(
    span: &tracing::Span,
    result: &Result<(Ending, Duration), Error>,
    timeout: Duration,
    elapsed: Duration,
) {
    use regatta_telemetry::status;
    let duration = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let (ending, ran) = match result {
        Ok((ending, ran)) => (*ending, *ran),
        Err(e) => {
            span.record("command.duration_ms", duration(elapsed));
            span.record("command.ending", "error");
            return status::failed(span, "command.error", &e.to_string());
        }
    };
    span.record("command.duration_ms", duration(ran));
    match ending {
        Ending::Exited(0) => {
            span.record("process.exit.code", 0i64);
            span.record("command.ending", "exited");
            status::succeeded(span);
        }
        Ending::Exited(code) => {
            span.record("process.exit.code", i64::from(code));
            span.record("command.ending", "exited");
            // The leader reports a command killed by signal n as 128 + n.
            if let Some(signal) = code.checked_sub(128).and_then(|n| Signal::try_from(n).ok()) {
                span.record("process.signal", signal.as_str());
            }
            status::failed(
                span,
                "command.failed",
                &format!("the command exited with status {code}"),
            );
        }
        Ending::TimedOut => {
            span.record("process.signal", Signal::SIGTERM.as_str());
            span.record("command.ending", "timed_out");
            status::failed(
                span,
                "command.timed_out",
                &format!(
                    "the deadline of {} passed; the command was killed",
                    humantime::format_duration(timeout)
                ),
            );
        }
        // Stopped by a cancel, a lost lease or a shutdown: the session's
        // span says which.
        Ending::Stopped => {
            span.record("command.ending", "stopped");
        }
        Ending::Abandoned => {
            span.record("process.signal", Signal::SIGKILL.as_str());
            span.record("command.ending", "abandoned");
            status::failed(
                span,
                "command.abandoned",
                "the session leader was killed with the whole session",
            );
        }
        Ending::SupervisorLost => {
            span.record("process.signal", Signal::SIGKILL.as_str());
            span.record("command.ending", "supervisor_lost");
            status::failed(
                span,
                "command.supervisor_lost",
                "the worker's session supervisor died, and the session's leader with it",
            );
        }
        Ending::OverBudget => {
            span.record("command.ending", "over_budget");
            status::failed(
                span,
                "command.over_budget",
                "the session crossed its budget and was killed",
            );
        }
    }
}
