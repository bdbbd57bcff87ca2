//! The Comfy API v2 (`/api/v2`, the contract of Comfy-Org's `comfy-api-proxy` and official SDK) over Orchestrator's
//! own store, dispatcher and backends: a v2 job is a job like any other (the panel and `/api/jobs` list it), a v2
//! asset a record over a blob in `DATA_DIR/assets/`. Bodies, status words and error codes are the contract's; what
//! Orchestrator adds is additive (`id:` on events, `Last-Event-ID`, the money rules' codes).
//!
//! - [`jobs`]: submit (with `Idempotency-Key`), list, read, the workflow, cancel;
//! - [`events`]: a job's live state as the contract's server-sent events, numbered and resumable;
//! - [`assets`]: upload (blake3 on the way in), the dedup fast path, metadata, bytes with `Range`, delete;
//! - [`keys`]: Stripe's `Idempotency-Key` rules for the writes that make something;
//! - [`render`]: Orchestrator's records in the contract's shapes.

pub(in crate::http) mod assets;
mod events;
mod jobs;
mod keys;
mod render;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::codes::Code;
use crate::error::ApiError;

/// The v2 routes, each with its OpenAPI description.
/// Every route but the multipart upload takes JSON only: a browser can send a cross-site form or `text/plain`
/// body without asking first, never `application/json`.
pub fn routes() -> OpenApiRouter<AppState> {
    let upload = OpenApiRouter::new().routes(routes!(assets::upload));
    let json = OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::workflow))
        .routes(routes!(jobs::cancel))
        .routes(routes!(events::events))
        .routes(routes!(assets::from_hash))
        .routes(routes!(assets::by_hash))
        .routes(routes!(assets::get, assets::delete))
        .routes(routes!(assets::content))
        .layer(axum::middleware::from_fn(super::guard::require_json_body));
    upload.merge(json)
}

/// `GET /api/v2/health`: the v2 surface answers (whether a ComfyUI does is `GET /api/status`'s business).
#[utoipa::path(get, path = "/api/v2/health", tag = "v2",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "service": "orchestrator", "version": env!("CARGO_PKG_VERSION") }))
}

/// An error answer of the v2 routes: the shared envelope `{"error": {code, message, details}}` with the contract's
/// codes where it names one for the case.
#[derive(Debug)]
pub struct V2Error {
    status: StatusCode,
    code: Code,
    message: String,
    details: Value,
    retry_after: Option<u64>,
}

pub type V2Result<T> = Result<T, V2Error>;

impl V2Error {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidRequest, message)
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        let id: String = id.chars().take(64).collect();
        Self::new(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            format!("no {what} {id}"),
        )
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error in a v2 route");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            "internal error",
        )
    }
}

/// Orchestrator's own refusals, with the contract's names for the cases it has one for.
impl From<ApiError> for V2Error {
    fn from(error: ApiError) -> Self {
        let status = error.status();
        let retry_after = error.retry_after();
        let (message, details) = (error.message(), error.details());
        let code = match error.code() {
            Code::JobNotFound | Code::OutputNotFound => Code::NotFound,
            Code::ValidationFailed => Code::InvalidWorkflow,
            Code::ComfyRejected => Code::InvalidWorkflow,
            Code::BudgetExceeded => Code::InsufficientCredits,
            Code::IdempotencyKeyReused => Code::IdempotencyKeyReuse,
            other => other,
        };
        if code == Code::Internal {
            // Logged once, with its cause, as every internal error.
            let _ = error.into_response();
        }
        Self {
            status,
            code,
            message,
            details,
            retry_after,
        }
    }
}

impl From<crate::assets::AssetError> for V2Error {
    fn from(error: crate::assets::AssetError) -> Self {
        use crate::assets::AssetError;
        match error {
            AssetError::HashMismatch { expected, computed } => Self::new(
                StatusCode::CONFLICT,
                Code::HashMismatch,
                "the bytes received do not have the expected hash; nothing was kept",
            )
            .with_details(json!({ "expected": expected, "computed": computed })),
            AssetError::TooLarge { limit } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::PayloadTooLarge,
                format!("the upload is larger than {limit} bytes"),
            )
            .with_details(json!({ "limit_bytes": limit })),
            AssetError::BodyTimeout { after } => Self::body_timeout(after),
            AssetError::Body(why) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                Code::InvalidRequest,
                format!("the upload could not be read: {why}"),
            ),
            other => Self::internal(other),
        }
    }
}

impl V2Error {
    /// `408 body_timeout`: the client sent its body too slowly.
    pub fn body_timeout(after: std::time::Duration) -> Self {
        let error = crate::problems::RequestError::BodyTimeout { after };
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            Code::BodyTimeout,
            error.to_string(),
        )
        .with_details(error.details())
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body: `{"error": {code, message, details}}`.
    pub fn envelope(&self) -> Value {
        let details = if self.details.is_object() {
            self.details.clone()
        } else {
            json!({})
        };
        json!({ "error": { "code": self.code.as_str(), "message": self.message, "details": details } })
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.envelope())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        response
    }
}

/// The origin the client reached this server on, for the contract's absolute content URLs (the guard has already
/// checked `Host` against the allowlist).
pub fn base(headers: &HeaderMap) -> String {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}
