//! The `lease.acquire` span: what a session asked for (its batch slot and
//! resource shares, touched files among them), how long it waited and the
//! fencing number it got, so a slow start can be read off its trace.

use std::time::Duration;

use regatta_proto::WorkOrder;

use crate::lease::Claim;
use crate::Error;

/// A new `lease.acquire` span for the order's demand.
pub fn lease_span(order: &WorkOrder) -> tracing::Span {
    let resources: Vec<String> = order
        .leases
        .resources
        .iter()
        .map(|r| format!("{}:{}/{}", r.name, r.weight, r.capacity))
        .collect();
    tracing::info_span!(
        "lease.acquire",
        lease.concurrency = i64::from(order.leases.concurrency),
        lease.resources = %resources.join(","),
        lease.resource_count = resources.len() as i64,
        lease.wait_ms = tracing::field::Empty,
        lease.fencing = tracing::field::Empty,
        lease.result = tracing::field::Empty,
    )
}

/// Records how the acquisition ended on its span: the wait, the fencing
/// number when held, and ERROR when it failed or the order was refused.
pub fn describe_claim(span: &tracing::Span, claim: &Result<Claim, Error>, waited: Duration) {
    span.record(
        "lease.wait_ms",
        i64::try_from(waited.as_millis()).unwrap_or(i64::MAX),
    );
    let result = match claim {
        Ok(Claim::Held { fence, .. }) => {
            span.record("lease.fencing", i64::try_from(*fence).unwrap_or(i64::MAX));
            regatta_telemetry::status::succeeded(span);
            "held"
        }
        Ok(Claim::Busy { .. }) => "busy",
        Ok(Claim::OverBatchBudget { .. }) => "over_batch_budget",
        Ok(Claim::AlreadyHeld) => "already_held",
        Ok(Claim::Cancelled) => "cancelled",
        Ok(Claim::UnknownBatch) => "unknown_batch",
        Ok(Claim::NotCurrent { reason }) => {
            regatta_telemetry::status::failed(span, "lease.not_current", reason);
            "not_current"
        }
        Err(e) => {
            regatta_telemetry::status::failed(span, "lease.error", &e.to_string());
            "error"
        }
    };
    span.record("lease.result", result);
}
