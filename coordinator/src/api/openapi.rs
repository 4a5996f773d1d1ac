//! The API's contract: an OpenAPI 3 document generated from the types the
//! handlers return (their `ToSchema` derives) and from one entry per route
//! below, served at `/openapi.json` without a token (it names no batch and
//! holds no data, docs/security.md). The tests hold the entries to the
//! router: a route without an entry, or an entry without a route, fails them.

use axum::http::header;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi};

use super::error_body::ErrorBody;
use super::{EnqueueRequest, EnqueueResponse, LogView, ReviewRequest, SessionView};
use crate::service::{BatchSummary, ConflictsView, LeaseView, TrainView, UnitView};

/// The route that serves the document.
pub fn route<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let document = document();
    Router::new().route(
        "/openapi.json",
        get(move || {
            let document = document.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], document) }
        }),
    )
}

/// The document as served.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"the API document did not render: {e}\"}}"))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "regatta coordinator API",
        description = "The coordinator's HTTP API, the same data the `regatta` CLI shows. Every \
            route but /healthz, /openapi.json, the dashboard's assets (and /metrics with \
            --metrics-public) wants `Authorization: Bearer <REGATTA_API_TOKEN>` when the \
            coordinator has a token. Every error answers `{\"error\": \"...\"}`."
    ),
    paths(
        healthz, openapi_json, metrics, ui_page, ui_page_slash, ui_script, ui_timeline_script,
        ui_stylesheet,
        ui_config, enqueue, list_batches, show_batch, list_leases, list_workers, list_units,
        list_sessions, unit_log, cancel, pause, resume, approve, retry, skip, merge, show_train,
        show_conflicts,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerToken),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// The `bearer` security scheme: `REGATTA_API_TOKEN`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The coordinator's REGATTA_API_TOKEN."))
                    .build(),
            ),
        );
    }
}

/// What any route behind the token may answer besides its own outcomes:
/// the token refused, or a body that is unreadable, too slow or too large.
#[derive(IntoResponses)]
#[allow(dead_code)]
enum Refusals {
    /// A path, query or body that does not parse.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Missing or wrong bearer token.
    #[response(status = 401, headers(("WWW-Authenticate" = String)))]
    Unauthorized(ErrorBody),
    /// The body did not arrive within --body-timeout.
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// The body is larger than --max-manifest-bytes.
    #[response(status = 413)]
    TooLarge(ErrorBody),
}

/// A batch named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct BatchPath {
    /// The batch's id, as `POST /v1/batches` answered it.
    #[param(min_length = 1)]
    id: String,
}

/// A unit of a batch named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct UnitPath {
    /// The batch's id.
    #[param(min_length = 1)]
    id: String,
    /// The unit's id, as the manifest names it.
    #[param(min_length = 1)]
    unit: String,
}

/// A state to filter by.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct StateQuery {
    /// A unit state (`needs_review`, `running`, ...); for sessions also a
    /// session's own state (`failed`, `timed_out`, ...).
    state: Option<String>,
}

// One entry per route. The functions are never called: they carry the
// route's documentation, and the router's handlers are in `api.rs`.

/// Liveness: answers `ok` while the process serves.
#[utoipa::path(get, path = "/healthz", security(()), responses(
    (status = 200, description = "The coordinator serves", body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn healthz() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", security(()), responses(
    (status = 200, description = "The OpenAPI 3 document", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

/// Prometheus metrics (OpenMetrics text); without the token under --metrics-public.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Counts and timings per batch", body = String,
        content_type = "application/openmetrics-text"),
    Refusals))]
#[allow(dead_code)]
fn metrics() {}

/// The dashboard's page.
#[utoipa::path(get, path = "/ui", security(()), responses(
    (status = 200, description = "The page", body = String, content_type = "text/html")))]
#[allow(dead_code)]
fn ui_page() {}

/// The dashboard's page.
#[utoipa::path(get, path = "/ui/", security(()), responses(
    (status = 200, description = "The page", body = String, content_type = "text/html")))]
#[allow(dead_code)]
fn ui_page_slash() {}

/// The dashboard's script.
#[utoipa::path(get, path = "/ui/app.js", security(()), responses(
    (status = 200, description = "The script", body = String, content_type = "text/javascript")))]
#[allow(dead_code)]
fn ui_script() {}

/// The dashboard's timeline chart script.
#[utoipa::path(get, path = "/ui/timeline.js", security(()), responses(
    (status = 200, description = "The script", body = String, content_type = "text/javascript")))]
#[allow(dead_code)]
fn ui_timeline_script() {}

/// The dashboard's stylesheet.
#[utoipa::path(get, path = "/ui/app.css", security(()), responses(
    (status = 200, description = "The stylesheet", body = String, content_type = "text/css")))]
#[allow(dead_code)]
fn ui_stylesheet() {}

/// What the dashboard is told of the coordinator's settings.
#[utoipa::path(get, path = "/v1/ui-config", responses(
    (status = 200, body = super::ui::UiConfig), Refusals))]
#[allow(dead_code)]
fn ui_config() {}

/// Enqueues a batch (`regatta enqueue`).
#[utoipa::path(post, path = "/v1/batches", request_body = EnqueueRequest, responses(
    (status = 201, description = "Enqueued", body = EnqueueResponse),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 422, description = "The manifest was refused, with every problem", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn enqueue() {}

/// Every batch (`regatta status`).
#[utoipa::path(get, path = "/v1/batches", responses(
    (status = 200, body = Vec<BatchSummary>), Refusals))]
#[allow(dead_code)]
fn list_batches() {}

/// One batch.
#[utoipa::path(get, path = "/v1/batches/{id}", params(BatchPath), responses(
    (status = 200, body = BatchSummary),
    (status = 404, description = "No such batch", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn show_batch() {}

/// Live leases over the fleet (`regatta leases`).
#[utoipa::path(get, path = "/v1/leases", responses(
    (status = 200, body = Vec<LeaseView>),
    (status = 502, description = "Redis does not answer", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn list_leases() {}

/// Live workers and their health.
#[utoipa::path(get, path = "/v1/workers", responses(
    (status = 200, body = Vec<regatta_proto::WorkerHealth>),
    (status = 502, description = "Redis does not answer", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn list_workers() {}

/// A batch's units (`regatta units`).
#[utoipa::path(get, path = "/v1/batches/{id}/units", params(BatchPath, StateQuery), responses(
    (status = 200, body = Vec<UnitView>),
    (status = 404, description = "No such batch", body = ErrorBody),
    (status = 422, description = "Unknown state", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn list_units() {}

/// A batch's sessions, one per attempt (`regatta sessions`).
#[utoipa::path(get, path = "/v1/batches/{id}/sessions", params(BatchPath, StateQuery), responses(
    (status = 200, body = Vec<SessionView>),
    (status = 404, description = "No such batch", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn list_sessions() {}

/// A unit's latest log (`regatta logs`).
#[utoipa::path(get, path = "/v1/batches/{id}/units/{unit}/log", params(UnitPath), responses(
    (status = 200, body = LogView),
    (status = 404, description = "No such batch or unit", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn unit_log() {}

/// Cancels a batch (`regatta cancel`).
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", params(BatchPath), responses(
    (status = 200, description = "The batch now", body = BatchSummary),
    (status = 404, description = "No such batch", body = ErrorBody),
    (status = 409, description = "Not in a state that allows it", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn cancel() {}

/// Pauses a batch: nothing more is published (`regatta pause`).
#[utoipa::path(post, path = "/v1/batches/{id}/pause", params(BatchPath), responses(
    (status = 200, description = "The batch now", body = BatchSummary),
    (status = 404, description = "No such batch", body = ErrorBody),
    (status = 409, description = "Not in a state that allows it", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn pause() {}

/// Resumes a paused batch (`regatta resume`).
#[utoipa::path(post, path = "/v1/batches/{id}/resume", params(BatchPath), responses(
    (status = 200, description = "The batch now", body = BatchSummary),
    (status = 404, description = "No such batch", body = ErrorBody),
    (status = 409, description = "Not in a state that allows it", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn resume() {}

/// Approves a calibrated batch for the rest of its units (`regatta approve`).
#[utoipa::path(post, path = "/v1/batches/{id}/approve", params(BatchPath), responses(
    (status = 200, description = "The batch now", body = BatchSummary),
    (status = 404, description = "No such batch", body = ErrorBody),
    (status = 409, description = "Not awaiting approval", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn approve() {}

/// Retries one unit, or every `needs_review` unit (`regatta retry`).
#[utoipa::path(post, path = "/v1/batches/{id}/retry", params(BatchPath),
    request_body = ReviewRequest, responses(
    (status = 200, description = "The batch now", body = BatchSummary),
    (status = 404, description = "No such batch or unit", body = ErrorBody),
    (status = 409, description = "The unit is not in review", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 422, description = "Neither or both of unit and needs_review", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn retry() {}

/// Skips a unit in review (`regatta skip`).
#[utoipa::path(post, path = "/v1/batches/{id}/skip", params(BatchPath),
    request_body = ReviewRequest, responses(
    (status = 200, description = "The batch now", body = BatchSummary),
    (status = 404, description = "No such batch or unit", body = ErrorBody),
    (status = 409, description = "The unit is not in review", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 422, description = "No unit given", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn skip() {}

/// Starts or resumes a git-mode batch's merge train (`regatta merge`).
#[utoipa::path(post, path = "/v1/batches/{id}/merge", params(BatchPath), responses(
    (status = 200, description = "The train now", body = TrainView),
    (status = 404, description = "No such batch", body = ErrorBody),
    (status = 409, description = "Not in git mode", body = ErrorBody),
    (status = 502, description = "The repository does not answer", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn merge() {}

/// A git-mode batch's merge train (`regatta train`).
#[utoipa::path(get, path = "/v1/batches/{id}/train", params(BatchPath), responses(
    (status = 200, body = TrainView),
    (status = 404, description = "No such batch", body = ErrorBody),
    (status = 409, description = "Not in git mode", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn show_train() {}

/// The unit branches that do not merge (`regatta conflicts`).
#[utoipa::path(get, path = "/v1/batches/{id}/conflicts", params(BatchPath), responses(
    (status = 200, body = ConflictsView),
    (status = 404, description = "No such batch", body = ErrorBody),
    (status = 409, description = "Not in git mode", body = ErrorBody),
    (status = 502, description = "The repository does not answer", body = ErrorBody),
    Refusals))]
#[allow(dead_code)]
fn show_conflicts() {}

#[cfg(test)]
#[path = "openapi_tests.rs"]
mod tests;
