//! The resource every exported span carries: which service, which version,
//! which instance (a worker's name) on which host, so a UI can tell three
//! workers apart.

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

/// The resource of this process. `OTEL_SERVICE_NAME` overrides `service`;
/// `instance` defaults to `host:pid`.
pub(crate) fn resource(service: &str, instance: Option<&str>) -> Resource {
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| service.to_owned());
    let host = host_name();
    let instance = instance
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{host}:{}", std::process::id()));
    Resource::builder()
        .with_service_name(name)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance),
            KeyValue::new("host.name", host),
        ])
        .build()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
