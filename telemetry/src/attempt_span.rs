//! The spans of one attempt at a unit, as the coordinator publishes it, a
//! worker runs it and the coordinator applies its results: built here, in
//! one place, so that every one carries the same fields under the same
//! names (`batch`, `unit`, `attempt`, `session`) and a tracing UI can
//! search an attempt's whole story by any of them.

use regatta_proto::{SessionEvent, WorkOrder};
use tracing::Span;

/// Which step of an attempt a span stands for; each is its span's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `publish`: the coordinator sends the order (a root span).
    Publish,
    /// `session`: a worker received the order and runs it.
    Session,
    /// `result.started`, `result.deferred`, `result.finished`: the
    /// coordinator applies one of the session's events.
    ResultStarted,
    ResultDeferred,
    ResultFinished,
}

/// The names of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub batch: &'a str,
    pub unit: &'a str,
    pub attempt: u32,
    pub session: &'a str,
}

impl<'a> From<&'a WorkOrder> for Attempt<'a> {
    fn from(order: &'a WorkOrder) -> Self {
        Attempt {
            batch: &order.batch_id,
            unit: &order.unit_id,
            attempt: order.attempt,
            session: &order.session_id,
        }
    }
}

impl<'a> From<&'a SessionEvent> for Attempt<'a> {
    fn from(event: &'a SessionEvent) -> Self {
        Attempt {
            batch: &event.batch_id,
            unit: &event.unit_id,
            attempt: event.attempt,
            session: &event.session_id,
        }
    }
}

/// A new span of `step` of `attempt`, of OpenTelemetry kind `kind`
/// (`producer`, `consumer`, `internal`). The fields only some steps have
/// (`worker`, `fencing`, `queue_wait_ms`, and an agent session's usage:
/// `agent.tokens_in`, `agent.tokens_cached`, `agent.tokens_out`,
/// `agent.turns`, `agent.cost_usd`) are declared empty, for the caller to
/// record.
pub fn attempt_span(step: Step, kind: &'static str, attempt: Attempt<'_>) -> Span {
    let number = i64::from(attempt.attempt);
    // A span's name is part of its callsite: one `info_span!` per step.
    macro_rules! span {
        ($(parent: $parent:expr,)? $name:literal) => {
            tracing::info_span!(
                $(parent: $parent,)?
                $name,
                otel.kind = kind,
                batch = %attempt.batch,
                unit = %attempt.unit,
                attempt = number,
                session = %attempt.session,
                worker = tracing::field::Empty,
                fencing = tracing::field::Empty,
                queue_wait_ms = tracing::field::Empty,
                agent.tokens_in = tracing::field::Empty,
                agent.tokens_cached = tracing::field::Empty,
                agent.tokens_out = tracing::field::Empty,
                agent.turns = tracing::field::Empty,
                agent.cost_usd = tracing::field::Empty,
            )
        };
    }
    match step {
        // A root: a publish made inside a `result` span must not become its
        // child, or a whole batch ends up as one trace.
        Step::Publish => span!(parent: None, "publish"),
        Step::Session => span!("session"),
        Step::ResultStarted => span!("result.started"),
        Step::ResultDeferred => span!("result.deferred"),
        Step::ResultFinished => span!("result.finished"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::registry::{LookupSpan, Registry};

    const ATTEMPT: Attempt<'static> = Attempt {
        batch: "b",
        unit: "u",
        attempt: 2,
        session: "s",
    };

    #[test]
    fn every_step_names_its_attempt_with_the_same_fields() {
        let registry = std::sync::Arc::new(Registry::default());
        tracing::subscriber::with_default(registry.clone(), || {
            let steps = [
                (Step::Publish, "publish"),
                (Step::Session, "session"),
                (Step::ResultStarted, "result.started"),
                (Step::ResultDeferred, "result.deferred"),
                (Step::ResultFinished, "result.finished"),
            ];
            for (step, name) in steps {
                let span = attempt_span(step, "internal", ATTEMPT);
                let metadata = span.metadata().expect("an enabled span");
                assert_eq!(metadata.name(), name);
                for field in ["batch", "unit", "attempt", "session", "otel.kind"] {
                    assert!(metadata.fields().field(field).is_some(), "{name}: {field}");
                }
            }
        });
    }

    #[test]
    fn a_publish_is_a_root_and_a_session_a_child() {
        let registry = std::sync::Arc::new(Registry::default());
        tracing::subscriber::with_default(registry.clone(), || {
            let outer = tracing::info_span!("result.finished");
            let _inside = outer.enter();
            let publish = attempt_span(Step::Publish, "producer", ATTEMPT);
            let session = attempt_span(Step::Session, "consumer", ATTEMPT);
            let parent = |span: &Span| {
                let id = span.id().expect("an enabled span");
                registry
                    .span(&id)
                    .expect("registered")
                    .parent()
                    .map(|p| p.name())
            };
            assert_eq!(parent(&publish), None);
            assert_eq!(parent(&session), Some("result.finished"));
        });
    }
}
