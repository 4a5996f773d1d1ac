//! OpenTelemetry's messaging semantic conventions for the spans that cross
//! RabbitMQ, so that a tracing UI shows producers, consumers and queues.
//! The span kind is set where the span is made (`otel.kind` field).

use opentelemetry::KeyValue;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// What a span does with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Sends it (a PRODUCER span).
    Send,
    /// Handles a delivered message (a CONSUMER span).
    Process,
}

impl Operation {
    fn type_name(self) -> &'static str {
        match self {
            Operation::Send => "send",
            Operation::Process => "process",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Operation::Send => "publish",
            Operation::Process => "process",
        }
    }
}

/// One message as seen on the span that sends or handles it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The queue (regatta publishes on the default exchange, so the routing
    /// key is the queue's name).
    pub queue: &'a str,
    /// The session id: one message per session and kind.
    pub id: &'a str,
    pub body_bytes: usize,
}

/// Adds the `messaging.*` attributes of `message` to `span`.
pub fn describe(span: &tracing::Span, operation: Operation, message: Message<'_>) {
    let attributes = [
        KeyValue::new("messaging.system", "rabbitmq"),
        KeyValue::new("messaging.operation.type", operation.type_name()),
        KeyValue::new("messaging.operation.name", operation.name()),
        KeyValue::new("messaging.destination.name", message.queue.to_owned()),
        KeyValue::new(
            "messaging.rabbitmq.destination.routing_key",
            message.queue.to_owned(),
        ),
        KeyValue::new("messaging.message.id", message.id.to_owned()),
        KeyValue::new(
            "messaging.message.body.size",
            i64::try_from(message.body_bytes).unwrap_or(i64::MAX),
        ),
    ];
    for attribute in attributes {
        span.set_attribute(attribute.key, attribute.value);
    }
}
