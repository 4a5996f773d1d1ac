//! Every error the API answers is one JSON shape, `{"error": "..."}`, as
//! `/openapi.json` promises: also axum's own refusals (a path or query that
//! does not parse, a body that is not JSON, a method or path that is not
//! routed), which would otherwise answer in plain text or with no body.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// How much of a plain-text refusal is kept: axum's are one line.
const MAX_REFUSAL_BYTES: usize = 16 << 10;

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, and what to do about it.
    pub error: String,
}

/// The answer to a path no route matches.
pub async fn no_route() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            error: "no such route: see /openapi.json for the API's paths".into(),
        }),
    )
        .into_response()
}

/// Turns an error response that is not JSON into [`ErrorBody`], keeping its
/// status and headers (a 405's `Allow`, a 401's `WWW-Authenticate`).
pub async fn as_json(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_REFUSAL_BYTES).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned(),
    };
    let body = match serde_json::to_vec(&ErrorBody { error: text }) {
        Ok(body) => body,
        Err(_) => return Response::from_parts(parts, Body::empty()),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    async fn call(router: Router, request: Request) -> (StatusCode, String, serde_json::Value) {
        let response = router.oneshot(request).await.expect("response");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, content_type, json)
    }

    fn router() -> Router {
        async fn numbered(axum::extract::Path(n): axum::extract::Path<u32>) -> impl IntoResponse {
            n.to_string()
        }
        Router::new()
            .route("/n/{n}", get(numbered))
            .fallback(no_route)
            .layer(axum::middleware::from_fn(as_json))
    }

    #[tokio::test]
    async fn axums_own_refusals_answer_in_json() {
        let get = |uri: &str| Request::get(uri).body(Body::empty()).expect("request");
        // A path parameter that does not parse: axum says so in plain text.
        let (status, content_type, json) = call(router(), get("/n/x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(content_type, "application/json");
        assert!(
            json["error"].as_str().is_some_and(|e| e.contains("parse")),
            "{json}"
        );
        // A method not routed: no body at all.
        let post = Request::post("/n/1").body(Body::empty()).expect("request");
        let (status, content_type, json) = call(router(), post).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(content_type, "application/json");
        assert_eq!(json["error"], "Method Not Allowed");
        // No route at all.
        let (status, _, json) = call(router(), get("/nowhere")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(json["error"]
            .as_str()
            .is_some_and(|e| e.contains("openapi")));
        // A success is untouched.
        let (status, content_type, _) = call(router(), get("/n/7")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/plain"));
    }
}
