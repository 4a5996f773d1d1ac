//! A client of the coordinator's HTTP API, used by the CLI and by tests.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{EnqueueRequest, EnqueueResponse, LogView, ReviewRequest, SessionView};
use crate::manifest::Manifest;
use crate::service::{BatchSummary, UnitView};

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the coordinator at {base}: {source}; is `regatta serve` running (REGATTA_API)?")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from the coordinator: {0}")]
    Decode(String),
}

/// Talks to one coordinator.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, token: Option<String>) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(reqwest::Method::GET, path, None::<&()>).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn enqueue(&self, manifest: &Manifest) -> Result<String, ClientError> {
        let request = EnqueueRequest {
            manifest: manifest.clone(),
        };
        let response: EnqueueResponse = self.post("/v1/batches", &request).await?;
        Ok(response.batch_id)
    }

    pub async fn batches(&self) -> Result<Vec<BatchSummary>, ClientError> {
        self.get("/v1/batches").await
    }

    pub async fn leases(&self) -> Result<Vec<crate::service::LeaseView>, ClientError> {
        self.get("/v1/leases").await
    }

    /// Live workers and their health.
    pub async fn workers(&self) -> Result<Vec<regatta_proto::WorkerHealth>, ClientError> {
        self.get("/v1/workers").await
    }

    pub async fn batch(&self, id: &str) -> Result<BatchSummary, ClientError> {
        self.get(&format!("/v1/batches/{id}")).await
    }

    pub async fn units(&self, id: &str, state: Option<&str>) -> Result<Vec<UnitView>, ClientError> {
        let query = state.map(|s| format!("?state={s}")).unwrap_or_default();
        self.get(&format!("/v1/batches/{id}/units{query}")).await
    }

    pub async fn sessions(
        &self,
        id: &str,
        state: Option<&str>,
    ) -> Result<Vec<SessionView>, ClientError> {
        let query = state.map(|s| format!("?state={s}")).unwrap_or_default();
        self.get(&format!("/v1/batches/{id}/sessions{query}")).await
    }

    pub async fn log(&self, id: &str, unit: &str) -> Result<LogView, ClientError> {
        self.get(&format!("/v1/batches/{id}/units/{unit}/log"))
            .await
    }

    /// `action` is one of cancel, pause, resume.
    pub async fn control(&self, id: &str, action: &str) -> Result<BatchSummary, ClientError> {
        self.post(
            &format!("/v1/batches/{id}/{action}"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn retry(&self, id: &str, unit: Option<&str>) -> Result<BatchSummary, ClientError> {
        let request = ReviewRequest {
            unit: unit.map(str::to_owned),
            needs_review: unit.is_none(),
        };
        self.post(&format!("/v1/batches/{id}/retry"), &request)
            .await
    }

    /// Starts or resumes a git-mode batch's merge train.
    pub async fn merge(&self, id: &str) -> Result<crate::service::TrainView, ClientError> {
        self.post(&format!("/v1/batches/{id}/merge"), &serde_json::json!({}))
            .await
    }

    pub async fn train(&self, id: &str) -> Result<crate::service::TrainView, ClientError> {
        self.get(&format!("/v1/batches/{id}/train")).await
    }

    pub async fn conflicts(&self, id: &str) -> Result<crate::service::ConflictsView, ClientError> {
        self.get(&format!("/v1/batches/{id}/conflicts")).await
    }

    pub async fn skip(&self, id: &str, unit: &str) -> Result<BatchSummary, ClientError> {
        let request = ReviewRequest {
            unit: Some(unit.to_owned()),
            needs_review: false,
        };
        self.post(&format!("/v1/batches/{id}/skip"), &request).await
    }
}
