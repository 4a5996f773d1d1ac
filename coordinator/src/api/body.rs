//! Request bodies read whole, within a size and a time bound, before any
//! handler sees them: a 250 MB manifest once took the coordinator to 522 MB
//! of memory, and a body sent one byte at a time held its connection open
//! for as long as the sender liked.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;

/// How large and how slow a request body may be.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The largest body, in bytes (`--max-manifest-bytes`).
    pub max_bytes: usize,
    /// How long the whole body may take to arrive (`--body-timeout`).
    pub timeout: Duration,
}

/// The middleware: refuses a body over the size (413) or slower than the
/// timeout (408), and hands the rest to the handler already in memory.
pub async fn limit_body(
    State(limits): State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A declared length over the cap is refused before a byte is read.
    if declared.is_some_and(|length| length > limits.max_bytes as u64) {
        return too_large(limits.max_bytes);
    }
    let (parts, body) = request.into_parts();
    let capacity = declared.map_or(0, |length| length as usize);
    let read = tokio::time::timeout(
        limits.timeout,
        read_within(body, capacity, limits.max_bytes),
    );
    match read.await {
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} (the coordinator's --body-timeout)",
                humantime::format_duration(limits.timeout)
            ),
        ),
        Ok(Err(ReadError::TooLarge)) => too_large(limits.max_bytes),
        Ok(Err(ReadError::Broken(why))) => error(
            StatusCode::BAD_REQUEST,
            format!("the request body could not be read: {why}"),
        ),
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

enum ReadError {
    TooLarge,
    Broken(String),
}

/// Collects a body, stopping as soon as it passes `max_bytes`.
async fn read_within(body: Body, capacity: usize, max_bytes: usize) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::with_capacity(capacity.min(max_bytes));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ReadError::Broken(e.to_string()))?;
        if bytes.len() + chunk.len() > max_bytes {
            return Err(ReadError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn too_large(max_bytes: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than {max_bytes} bytes: start the coordinator with a \
             larger --max-manifest-bytes (REGATTA_MAX_MANIFEST_BYTES) to accept it"
        ),
    )
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
