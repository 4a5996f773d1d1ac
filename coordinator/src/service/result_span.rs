//! The coordinator's spans for the workers' events: one per event, named
//! by its kind (`result.started`, `result.finished`, `result.deferred`) so a
//! trace reads as the session's story, in the attempt's trace, and an
//! applied failure marked ERROR with the reason `regatta sessions` prints.

use regatta_proto::{EventKind, SessionEvent};
use regatta_telemetry::attempt_span::{attempt_span, Step};
use regatta_telemetry::messaging::{self, Message, Operation};
use regatta_telemetry::{status, TraceRef};

use crate::scheduler::Attempt;

/// The span of an event received on the events queue (a CONSUMER), a child
/// of the worker's session through the trace context in its headers.
pub(super) fn received(
    event: &SessionEvent,
    queue: &str,
    headers: Option<&lapin::types::FieldTable>,
    body_bytes: usize,
) -> tracing::Span {
    let span = new_span(event, "consumer");
    regatta_telemetry::extract(&span, headers);
    messaging::describe(
        &span,
        Operation::Process,
        Message {
            queue,
            id: &event.session_id,
            body_bytes,
        },
    );
    span
}

/// The span of an event the coordinator makes itself (a reaped session's
/// `lost` result), in the attempt's trace when it is known.
pub(super) fn reaped(event: &SessionEvent, attempt: Option<&Attempt>) -> tracing::Span {
    let span = new_span(event, "internal");
    if let Some(trace) = attempt.and_then(|a| a.trace.as_ref()) {
        TraceRef {
            trace_id: trace.trace_id.clone(),
            span_id: trace.span_id.clone(),
        }
        .adopt(&span);
    }
    span
}

fn new_span(event: &SessionEvent, kind: &'static str) -> tracing::Span {
    let step = match event.kind {
        EventKind::Started { .. } => Step::ResultStarted,
        EventKind::Deferred { .. } => Step::ResultDeferred,
        EventKind::Finished { .. } => Step::ResultFinished,
    };
    let span = attempt_span(step, kind, event.into());
    span.record("worker", event.worker.as_str());
    span.record("fencing", i64::try_from(event.fencing).unwrap_or(i64::MAX));
    span
}

/// Marks the current result span by how the applied attempt ended (see
/// [`status::session_ended`]); one that merely started is OK.
pub(super) fn conclude(attempt: &Attempt) {
    let span = tracing::Span::current();
    match attempt.outcome {
        None => status::succeeded(&span),
        Some(outcome) => status::session_ended(&span, outcome, attempt.reason.as_deref()),
    }
}
