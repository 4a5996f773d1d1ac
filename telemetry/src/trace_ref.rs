//! A reference to one span (trace id and span id, in hex) that outlives the
//! span: stored in a unit's attempt record so that the API, the evidence
//! pack and later spans (a retry's link, a reaped session's result) can
//! point at the attempt's trace.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::KeyValue;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where a span lives: its trace and itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRef {
    /// 32 lowercase hex digits, as tracing UIs show and search it.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
}

impl TraceRef {
    /// The span's reference; `None` when spans are not exported.
    pub fn of(span: &tracing::Span) -> Option<TraceRef> {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| TraceRef {
            trace_id: span_context.trace_id().to_string(),
            span_id: span_context.span_id().to_string(),
        })
    }

    /// The reference of the span the caller runs in, if exported.
    pub fn current() -> Option<TraceRef> {
        TraceRef::of(&tracing::Span::current())
    }

    /// The span as OpenTelemetry names it (a remote, sampled span); `None`
    /// when the stored text is not a valid id.
    fn span_context(&self) -> Option<SpanContext> {
        let trace_id = TraceId::from_hex(&self.trace_id).ok()?;
        let span_id = SpanId::from_hex(&self.span_id).ok()?;
        let context = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        context.is_valid().then_some(context)
    }

    /// Links `span` to this one (`follows_from`): related, without joining
    /// its trace; `relation` (the link's `regatta.link` attribute) says how.
    /// Call before the span is entered or its context read.
    pub fn link_from(&self, span: &tracing::Span, relation: &'static str) {
        if let Some(context) = self.span_context() {
            span.add_link_with_attributes(context, vec![KeyValue::new("regatta.link", relation)]);
        }
    }

    /// Makes `span` a child of this one, in its trace. Call before the span
    /// is entered or its context read.
    pub fn adopt(&self, span: &tracing::Span) {
        if let Some(context) = self.span_context() {
            let _ =
                span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
        }
    }
}
