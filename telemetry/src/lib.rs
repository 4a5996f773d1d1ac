//! Logs, traces and the shared runtime pieces of regatta's binaries.
//!
//! - [`init`] installs a `tracing` subscriber: text or JSON logs on stderr,
//!   filtered by `REGATTA_LOG`, and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set, spans exported over OTLP (HTTP/protobuf) under the service name
//!   (`OTEL_SERVICE_NAME` overrides it). Unset, nothing is exported and
//!   nothing complains.
//! - [`inject`] and [`extract`] carry the W3C trace context in AMQP message
//!   headers, so that a unit attempt's trace follows it from the
//!   coordinator's publish through the queue into the worker's session and
//!   back.
//! - [`attempt_span::attempt_span`] builds the spans of a unit's attempt
//!   (publish, session, results) with the same fields everywhere.
//! - [`TraceRef`] names a span after it ended: attempts record their trace,
//!   and each publish links to what made its unit ready.
//! - [`status`] and [`messaging`] say what a tracing UI needs: errors as
//!   errors, producers and consumers with their queue.
//! - [`backoff::Backoff`]: the one way both binaries wait out an outage;
//!   [`fleet_args::FleetArgs`]: the flags both binaries share.
//! - [`shutdown::on_signals`]: SIGTERM and SIGINT cancel a process's root
//!   token; [`tasks::Tasks`]: its long-running tasks, named and joined on
//!   shutdown.
//!
//! This crate exists so the coordinator and the worker share one
//! implementation without depending on each other; `proto` stays free of I/O.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub mod attempt_span;
pub mod backoff;
pub mod fleet_args;
pub mod messaging;
mod propagation;
mod resource;
pub mod shutdown;
pub mod status;
pub mod tasks;
mod trace_ref;

pub use propagation::{extract, inject};
pub use trace_ref::TraceRef;

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
/// `instance` names this process among its service's (a worker's name);
/// `None` stands for `host:pid`.
pub fn init(service_name: &str, instance: Option<&str>, json: bool) -> Telemetry {
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
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource::resource(service_name, instance))
                    .build(),
            ),
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
