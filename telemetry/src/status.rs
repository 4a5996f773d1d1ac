//! A span's outcome as a tracing UI counts it: OK, or ERROR with the human
//! reason and an exception-style event, so error filters find failed
//! sessions, commands and gates.

use opentelemetry::trace::Status;
use opentelemetry::KeyValue;
use regatta_proto::Outcome;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Marks the span as having done its job.
pub fn succeeded(span: &tracing::Span) {
    span.set_status(Status::Ok);
}

/// Marks the span as failed: status ERROR whose description is `reason`
/// (the text `regatta sessions` prints), and an `exception` event of type
/// `kind` (`session.failed`, `command.failed`...) carrying the same text.
pub fn failed(span: &tracing::Span, kind: &'static str, reason: &str) {
    span.set_status(Status::error(reason.to_owned()));
    span.add_event(
        "exception",
        vec![
            KeyValue::new("exception.type", kind),
            KeyValue::new("exception.message", reason.to_owned()),
        ],
    );
}

/// [`succeeded`] when there is no reason, else [`failed`].
pub fn ended(span: &tracing::Span, kind: &'static str, failure: Option<&str>) {
    match failure {
        None => succeeded(span),
        Some(reason) => failed(span, kind, reason),
    }
}

/// Marks the span of a session (or of the coordinator's result for it) by
/// how the session ended: OK when it succeeded, ERROR with its reason when
/// it failed, timed out, was lost or interrupted. A cancel is a person's
/// choice, not an error: it stays unmarked.
pub fn session_ended(span: &tracing::Span, outcome: Outcome, reason: Option<&str>) {
    let kind = match outcome {
        Outcome::Succeeded => return succeeded(span),
        Outcome::Cancelled => return,
        Outcome::Failed => "session.failed",
        Outcome::TimedOut => "session.timed_out",
        Outcome::Lost => "session.lost",
        Outcome::Interrupted => "session.interrupted",
        Outcome::OverBudget => "session.over_budget",
    };
    let fallback = format!("the session ended {outcome:?}");
    failed(span, kind, reason.unwrap_or(&fallback));
}
