//! `/api/flux/*` and `/api/v0/*`: thin handlers over [`crate::flux`] and [`crate::v0`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// `POST /api/flux/generate`: a dry run unless `dryRun: false`; see [`crate::flux::service`].
pub async fn flux_generate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("body", format!("not valid JSON: {e}")))?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::invalid("Idempotency-Key", "must be visible ASCII characters")
        })?),
    };
    let answer = state.flux.generate(&body, key).await?;
    let mut response = (answer.status, Json(answer.body)).into_response();
    if answer.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

pub async fn flux_budget(State(state): State<AppState>) -> ApiResult<Response> {
    let budget = state.flux.budget().await.map_err(ApiError::internal)?;
    Ok(Json(budget).into_response())
}

pub async fn flux_models() -> Json<Value> {
    Json(crate::flux::catalog::catalogue())
}

pub async fn v0_validate(State(state): State<AppState>) -> Json<Value> {
    Json(state.v0.validate().await)
}

/// `/api/v0/{*path}`, every method.
pub async fn v0_gateway(State(state): State<AppState>, request: Request) -> ApiResult<Response> {
    let path = request
        .uri()
        .path()
        .strip_prefix("/api/v0")
        .unwrap_or_default()
        .to_owned();
    state.v0.forward(request, &path).await
}
