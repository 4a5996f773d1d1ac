//! The coordinator's HTTP API: the same data the CLI shows, for scripts and
//! dashboards (its own at `/ui`), described by `/openapi.json` ([`openapi`]).
//! Every route but `/healthz`, `/openapi.json`, the dashboard's assets (and
//! `/metrics` with `--metrics-public`) wants
//! `Authorization: Bearer <REGATTA_API_TOKEN>` when a token is configured.

mod auth;
mod body;
mod error_body;
pub mod openapi;
pub mod server;
pub mod session_log;
pub mod ui;

use std::path::PathBuf;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::scheduler::UnitState;
use crate::service::{Control, Service};
use crate::Error;

pub use body::BodyLimits;
pub use server::{serve, ServerLimits};

/// The default cap on a request body (`--max-manifest-bytes`): a few
/// hundred thousand units of JSON (a generated 100 000-unit manifest is
/// 12 MB); a larger manifest needs the flag raised.
pub const DEFAULT_MAX_MANIFEST_BYTES: usize = 64 << 20;

/// How the API authenticates and what it serves.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Turns bearer authentication on for every route but the open ones.
    pub token: Option<String>,
    /// Serve `/metrics` without the token (it names batch ids).
    pub metrics_public: bool,
    /// The workers' artifact store, where session logs are read from.
    pub artifact_store: PathBuf,
    pub body: BodyLimits,
    /// What the dashboard is told (`GET /v1/ui-config`).
    pub ui: ui::UiConfig,
}

/// The body of `POST /v1/batches`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnqueueRequest {
    /// The batch manifest, as docs/contracts.md and the README describe it.
    #[schema(value_type = Object)]
    pub manifest: Manifest,
}

/// The answer to `POST /v1/batches`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnqueueResponse {
    pub batch_id: String,
}

/// The body of `POST /v1/batches/{id}/retry` and `/skip`.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReviewRequest {
    pub unit: Option<String>,
    #[serde(default)]
    pub needs_review: bool,
}

/// One session (one attempt of one unit), as `regatta sessions` lists it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionView {
    pub unit: String,
    pub unit_state: UnitState,
    pub session_id: String,
    pub attempt: u32,
    /// `queued`, `running`, or how it ended (`succeeded`, `failed`, `timed_out`, `lost`, ...).
    pub state: String,
    pub worker: Option<String>,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub gates: Vec<regatta_proto::GateReport>,
    /// The session's evidence pack (path on the worker's disk, sha256).
    #[serde(default)]
    pub evidence: Option<regatta_proto::EvidenceRef>,
    /// The session's trace (32 hex digits) in the tracing UI, when spans
    /// are exported.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// An agent session's usage (tokens, turns, cost), also when it was
    /// killed over its budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<regatta_proto::Usage>,
}

/// A unit's log, as `regatta logs` prints it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogView {
    pub unit: String,
    pub session_id: Option<String>,
    /// The log in the coordinator's view of the artifact store, or empty
    /// when `tail` is the few lines the worker's event carried.
    pub log_path: String,
    pub tail: String,
}

#[derive(Debug, Deserialize)]
struct StateFilter {
    state: Option<String>,
}

#[derive(Clone)]
struct AppState {
    service: Service,
    artifact_store: PathBuf,
}

/// Builds the router.
pub fn router(service: Service, config: ApiConfig) -> Router {
    let state = AppState {
        service,
        artifact_store: config.artifact_store.clone(),
    };
    routes(config).with_state(state)
}

/// Every route, before the state is given: what `/openapi.json` must
/// describe, path for path and method for method (the `openapi` tests).
fn routes(config: ApiConfig) -> Router<AppState> {
    let token = config.token.filter(|t| !t.is_empty());
    let mut api = Router::new()
        .route("/v1/batches", post(enqueue).get(list_batches))
        .route("/v1/batches/{id}", get(show_batch))
        .route("/v1/leases", get(list_leases))
        .route("/v1/workers", get(list_workers))
        .route("/v1/batches/{id}/units", get(list_units))
        .route("/v1/batches/{id}/sessions", get(list_sessions))
        .route("/v1/batches/{id}/units/{unit}/log", get(unit_log))
        .route("/v1/batches/{id}/cancel", post(cancel))
        .route("/v1/batches/{id}/pause", post(pause))
        .route("/v1/batches/{id}/resume", post(resume))
        .route("/v1/batches/{id}/approve", post(approve))
        .route("/v1/batches/{id}/retry", post(retry))
        .route("/v1/batches/{id}/skip", post(skip))
        .route("/v1/batches/{id}/merge", post(merge))
        .route("/v1/batches/{id}/train", get(show_train))
        .route("/v1/batches/{id}/conflicts", get(show_conflicts))
        .merge(ui::config_route(config.ui));
    let mut open = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(openapi::route())
        .merge(ui::assets());
    if config.metrics_public {
        open = open.route("/metrics", get(metrics));
    } else {
        api = api.route("/metrics", get(metrics));
    }
    // Layers added last run first: the token is checked before a body is read.
    let api = api
        // The body middleware bounds every body; the extractors' own
        // default limit (2 MB) would refuse a large manifest it admitted.
        .route_layer(axum::extract::DefaultBodyLimit::disable())
        .route_layer(axum::middleware::from_fn_with_state(
            config.body,
            body::limit_body,
        ))
        .route_layer(axum::middleware::from_fn_with_state(token, authenticate));
    open.merge(api)
        .fallback(error_body::no_route)
        .layer(axum::middleware::from_fn(error_body::as_json))
}

/// Counts and timings only, no commands or logs; but per batch id, so it
/// wants the token unless `--metrics-public` says Prometheus scrapes without.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.service.render_metrics().await,
    )
}

async fn authenticate(
    State(token): State<Option<String>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::bearer_token);
        if !presented.is_some_and(|presented| auth::token_matches(presented, token)) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(error_body::ErrorBody {
                    error: "missing or wrong bearer token: set REGATTA_API_TOKEN".into(),
                }),
            )
                .into_response();
        }
    }
    next.run(request).await
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Invalid(_) | Error::Manifest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unavailable(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = error_body::ErrorBody {
            error: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

/// Reads the manifest off the async threads: a million-unit body takes
/// seconds to parse, which would stall every other request and the
/// renewal of the coordinator's lock. Rejections are [`Json`]'s own.
async fn enqueue(State(state): State<AppState>, request: Request) -> Response {
    let parsed = tokio::task::spawn_blocking(move || {
        // The body middleware already holds the whole body in memory, so
        // this never waits on the network.
        futures::executor::block_on(Json::<EnqueueRequest>::from_request(request, &()))
    })
    .await;
    let request = match parsed {
        Ok(Ok(Json(request))) => request,
        Ok(Err(rejection)) => return rejection.into_response(),
        Err(e) => {
            return Error::Invalid(format!("reading the manifest stopped: {e}")).into_response()
        }
    };
    match state.service.enqueue(request.manifest).await {
        Ok(batch_id) => (StatusCode::CREATED, Json(EnqueueResponse { batch_id })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list_batches(State(state): State<AppState>) -> Json<Vec<crate::service::BatchSummary>> {
    Json(state.service.batches())
}

async fn list_leases(
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::service::LeaseView>>, Error> {
    Ok(Json(state.service.leases().await?))
}

/// Live workers and their health, as they report it.
async fn list_workers(
    State(state): State<AppState>,
) -> Result<Json<Vec<regatta_proto::WorkerHealth>>, Error> {
    Ok(Json(state.service.workers().await?))
}

async fn show_batch(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::service::BatchSummary>, Error> {
    Ok(Json(state.service.batch(&id)?))
}

fn parse_state(filter: &StateFilter) -> Result<Option<UnitState>, Error> {
    filter
        .state
        .as_deref()
        .map(|s| {
            UnitState::parse(s).ok_or_else(|| {
                let known: Vec<&str> = UnitState::ALL.iter().map(|s| s.as_str()).collect();
                Error::Invalid(format!("unknown state '{s}' (known: {})", known.join(", ")))
            })
        })
        .transpose()
}

async fn list_units(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(filter): Query<StateFilter>,
) -> Result<Json<Vec<crate::service::UnitView>>, Error> {
    let wanted = parse_state(&filter)?;
    Ok(Json(state.service.units(&id, wanted)?))
}

/// A session's state in words: queued, running, or its outcome.
fn session_state(attempt: &crate::scheduler::Attempt) -> String {
    match (attempt.outcome, attempt.started_at_ms) {
        (Some(outcome), _) => outcome.as_str().into(),
        (None, Some(_)) => "running".into(),
        (None, None) => "queued".into(),
    }
}

async fn list_sessions(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(filter): Query<StateFilter>,
) -> Result<Json<Vec<SessionView>>, Error> {
    let mut units = state.service.units(&id, None)?;
    units.extend(state.service.integration_unit(&id));
    let mut sessions = Vec::new();
    for unit in units {
        for attempt in &unit.history {
            let view = SessionView {
                unit: unit.id.clone(),
                unit_state: unit.state,
                session_id: attempt.session_id.clone(),
                attempt: attempt.attempt,
                state: session_state(attempt),
                worker: attempt.worker.clone(),
                started_at_ms: attempt.started_at_ms,
                ended_at_ms: attempt.ended_at_ms,
                exit_code: attempt.exit_code,
                reason: attempt.reason.clone(),
                gates: attempt.gates.clone(),
                evidence: attempt.evidence.clone(),
                trace_id: attempt.trace.as_ref().map(|t| t.trace_id.clone()),
                usage: attempt.usage.clone(),
            };
            // A filter matches the session's own state or its unit's
            // (`needs_review`, `blocked`), so both questions have an answer.
            let keep = match filter.state.as_deref() {
                None => true,
                Some(wanted) => {
                    view.state == wanted
                        || unit.state.as_str() == wanted && Some(attempt) == unit.history.last()
                }
            };
            if keep {
                sessions.push(view);
            }
        }
    }
    Ok(Json(sessions))
}

async fn unit_log(
    State(state): State<AppState>,
    Path((id, unit)): Path<(String, String)>,
) -> Result<Json<LogView>, Error> {
    let mut units = state.service.units(&id, None)?;
    units.extend(state.service.integration_unit(&id));
    let record = units
        .into_iter()
        .find(|u| u.id == unit)
        .ok_or_else(|| Error::NotFound(format!("unit '{unit}' in batch '{id}'")))?;
    let Some(last) = record.history.last() else {
        return Ok(Json(LogView {
            unit,
            session_id: None,
            log_path: String::new(),
            tail: String::new(),
        }));
    };
    // The full log is in the artifact store, under ids this coordinator
    // issued; the path a worker's event names is never opened.
    let (store, batch, unit_id, session) = (
        state.artifact_store.clone(),
        id.clone(),
        unit.clone(),
        last.session_id.clone(),
    );
    let stored = tokio::task::spawn_blocking(move || {
        session_log::read_tail(&store, &batch, &unit_id, &session)
    })
    .await
    .unwrap_or_else(|e| session_log::StoredLog::Refused(format!("the read stopped: {e}")));
    let (log_path, tail) = match stored {
        session_log::StoredLog::Found { path, tail } => (path.display().to_string(), tail),
        session_log::StoredLog::Missing => (String::new(), last.log_tail.clone()),
        session_log::StoredLog::Refused(why) => {
            tracing::warn!(batch = %id, %unit, reason = %why, "a session log in the artifact store was not served");
            (String::new(), last.log_tail.clone())
        }
    };
    Ok(Json(LogView {
        unit,
        session_id: Some(last.session_id.clone()),
        log_path,
        tail,
    }))
}

async fn control(
    state: &AppState,
    id: &str,
    action: Control,
) -> Result<Json<crate::service::BatchSummary>, Error> {
    state.service.control(id, action).await?;
    Ok(Json(state.service.batch(id)?))
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::service::BatchSummary>, Error> {
    control(&state, &id, Control::Cancel).await
}

async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::service::BatchSummary>, Error> {
    control(&state, &id, Control::Pause).await
}

async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::service::BatchSummary>, Error> {
    control(&state, &id, Control::Resume).await
}

async fn approve(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::service::BatchSummary>, Error> {
    control(&state, &id, Control::Approve).await
}

async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(request): Json<ReviewRequest>,
) -> Result<Json<crate::service::BatchSummary>, Error> {
    let action = match (request.unit, request.needs_review) {
        (Some(unit), false) => Control::Retry(unit),
        (None, true) => Control::RetryNeedsReview,
        _ => {
            return Err(Error::Invalid(
                "give either a unit or needs_review: true".into(),
            ))
        }
    };
    control(&state, &id, action).await
}

async fn skip(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(request): Json<ReviewRequest>,
) -> Result<Json<crate::service::BatchSummary>, Error> {
    let unit = request
        .unit
        .ok_or_else(|| Error::Invalid("give the unit to skip".into()))?;
    control(&state, &id, Control::Skip(unit)).await
}

/// `regatta merge`: starts or resumes a batch's merge train.
async fn merge(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::service::TrainView>, Error> {
    state.service.start_train(&id).await?;
    Ok(Json(state.service.train(&id)?))
}

async fn show_train(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::service::TrainView>, Error> {
    Ok(Json(state.service.train(&id)?))
}

async fn show_conflicts(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::service::ConflictsView>, Error> {
    Ok(Json(state.service.conflicts(&id).await?))
}

#[cfg(test)]
mod tests {
    use regatta_proto::Outcome;

    use crate::metrics::{Metrics, OutcomeLabels};
    use crate::scheduler::Attempt;

    fn ended(outcome: Outcome) -> Attempt {
        let mut attempt: Attempt = serde_json::from_value(serde_json::json!({
            "attempt": 1, "session_id": "s", "worker": null, "fencing": 1,
            "published_at_ms": 0, "started_at_ms": 1, "ended_at_ms": 2,
            "outcome": null, "exit_code": null, "reason": null,
            "log_tail": "", "log_path": "", "gates": []
        }))
        .expect("an attempt");
        attempt.outcome = Some(outcome);
        attempt
    }

    #[test]
    fn the_api_and_the_metric_labels_name_every_outcome_alike() {
        let metrics = Metrics::new();
        for outcome in Outcome::ALL {
            metrics
                .sessions
                .get_or_create(&OutcomeLabels::of(outcome))
                .inc();
        }
        let text = metrics.render();
        for outcome in Outcome::ALL {
            let name = super::session_state(&ended(outcome));
            assert_eq!(name, outcome.as_str());
            assert!(
                text.contains(&format!("outcome=\"{name}\"")),
                "/metrics has no label {name:?} for {outcome:?}:\n{text}"
            );
        }
    }
}
