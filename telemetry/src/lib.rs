//! Logs and traces for regatta's binaries.
//!
//! - [`init`] installs a `tracing` subscriber: text or JSON logs on stderr,
//!   filtered by `REGATTA_LOG`, and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set, spans exported over OTLP (HTTP/protobuf) under the service name
//!   (`OTEL_SERVICE_NAME` overrides it). Unset, nothing is exported and
//!   nothing complains.
//! - [`inject`] and [`extract`] carry the W3C trace context in AMQP message
//!   headers, so that one trace follows a unit from the coordinator's publish
//!   through the queue into the worker's session and back.
//!
//! This crate exists so the coordinator and the worker share one
//! implementation without depending on each other; `proto` stays free of I/O.

use std::collections::HashMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the exporter alive; dropping it flushes the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs logging and, when configured, trace export. Call once, early.
pub fn init(service_name: &str, json: bool) -> Telemetry {
    let filter =
        || EnvFilter::try_from_env("REGATTA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed()
    };
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    let provider = if endpoint.trim().is_empty() {
        None
    } else {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                let name =
                    std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_owned());
                Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(Resource::builder().with_service_name(name).build())
                        .build(),
                )
            }
            Err(e) => {
                eprintln!("{service_name}: OTLP export to {endpoint} disabled: {e}");
                None
            }
        }
    };
    // Spans for export are recorded at info and above, whatever the log filter.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("regatta"))
            .with_filter(EnvFilter::new("info"))
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    Telemetry { provider }
}

struct HeaderInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct HeaderExtractor<'a>(&'a FieldTable);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key) {
            Some(AMQPValue::LongString(value)) => std::str::from_utf8(value.as_bytes()).ok(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}

/// Writes the span's trace context (`traceparent`, `tracestate`) into AMQP
/// headers; adds nothing when the span is not exported.
pub fn inject(span: &tracing::Span, headers: &mut FieldTable) {
    let context = span.context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut carrier));
    for (key, value) in carrier {
        headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
}

/// Makes `span` a child of the trace context found in AMQP headers, if any.
pub fn extract(span: &tracing::Span, headers: Option<&FieldTable>) {
    let Some(headers) = headers else { return };
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(context);
}
