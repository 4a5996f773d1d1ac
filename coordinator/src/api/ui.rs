//! The live dashboard at `/ui`: one page, one script and one stylesheet,
//! embedded in the binary so that a coordinator serves them with nothing
//! beside it and the browser fetches nothing from elsewhere. The assets need
//! no token (they hold no data); the page calls the JSON API with the bearer
//! token a person enters once, so every piece of data stays behind it.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const TIMELINE_JS: &str = include_str!("ui/timeline.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// The placeholder a trace URL template must hold.
pub const TRACE_ID_PLACEHOLDER: &str = "{trace_id}";

/// Only this coordinator's own scripts, styles and API: a log line that
/// looks like markup can do nothing, and no page may frame the dashboard.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the page learns of the coordinator's settings (`GET /v1/ui-config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UiConfig {
    /// The tracing UI's address of one trace, with [`TRACE_ID_PLACEHOLDER`]
    /// where the trace id goes (`--trace-url`).
    pub trace_url: Option<String>,
}

/// Checks a `--trace-url` template: an http(s) address holding
/// [`TRACE_ID_PLACEHOLDER`], so that every session's link is its own.
pub fn check_trace_url(template: &str) -> Result<(), String> {
    if !(template.starts_with("http://") || template.starts_with("https://")) {
        return Err(format!(
            "--trace-url '{template}' is not an http:// or https:// address"
        ));
    }
    if !template.contains(TRACE_ID_PLACEHOLDER) {
        return Err(format!(
            "--trace-url '{template}' has no {TRACE_ID_PLACEHOLDER} for the session's trace, \
             e.g. http://localhost:16686/trace/{TRACE_ID_PLACEHOLDER}"
        ));
    }
    Ok(())
}

/// The asset routes, served without a token.
pub fn assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/timeline.js", get(timeline_script))
        .route("/ui/app.css", get(stylesheet))
}

/// `GET /v1/ui-config`: to be put behind the token like every data route.
pub fn config_route<S: Clone + Send + Sync + 'static>(config: UiConfig) -> Router<S> {
    Router::new().route(
        "/v1/ui-config",
        get(move || {
            let config = config.clone();
            async move { Json(config) }
        }),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        body,
    )
}

async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn timeline_script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", TIMELINE_JS)
}

async fn stylesheet() -> impl IntoResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn fetch(path: &str) -> (StatusCode, String, String) {
        let response = assets::<()>()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, content_type, String::from_utf8_lossy(&body).into())
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_from_the_binary() {
        for path in ["/ui", "/ui/"] {
            let (status, content_type, body) = fetch(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(content_type.starts_with("text/html"), "{content_type}");
            assert!(body.contains("/ui/app.js") && body.contains("/ui/app.css"));
        }
        let (status, content_type, body) = fetch("/ui/app.js").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/javascript"));
        assert!(
            body.contains("sessionStorage"),
            "the token is kept per session"
        );
        let (status, content_type, body) = fetch("/ui/timeline.js").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/javascript"));
        assert!(body.contains("function timelineSection"));
        let (status, content_type, _) = fetch("/ui/app.css").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/css"));
        let (status, _, _) = fetch("/ui/other.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_fetches_nothing_from_elsewhere() {
        for (name, text) in [
            ("html", INDEX_HTML),
            ("js", APP_JS),
            ("timeline", TIMELINE_JS),
            ("css", APP_CSS),
        ] {
            for remote in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(remote), "{name} names {remote}");
            }
        }
        // Data is written as text, never parsed as markup.
        assert!(!APP_JS.contains("innerHTML"));
        assert!(!TIMELINE_JS.contains("innerHTML"));
    }

    #[test]
    fn a_trace_url_needs_its_placeholder_and_http() {
        assert!(check_trace_url("http://localhost:16686/trace/{trace_id}").is_ok());
        assert!(check_trace_url("https://tempo.example/explore?trace={trace_id}").is_ok());
        let missing = check_trace_url("http://localhost:16686/trace/").unwrap_err();
        assert!(missing.contains("{trace_id}"), "{missing}");
        assert!(check_trace_url("javascript:alert(1)//{trace_id}").is_err());
    }
}
