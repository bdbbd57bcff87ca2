//! `/api/flux/*` and `/api/v0/*`: thin handlers over [`crate::flux`] and [`crate::v0`].

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// `POST /api/flux/generate`: a dry run unless `dryRun: false`; see [`crate::flux::service`].
#[utoipa::path(post, path = "/api/flux/generate", tag = "flux", request_body = super::openapi::FluxRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry of the same body one charge (1 to 255 printable ASCII characters, spaces included)")),
    responses(
        (status = 200, description = "The dry run: the exact payload, its price and a confirmToken; nothing sent, nothing charged", body = super::openapi::FluxDryRun),
        (status = 202, description = "Paid and submitted: the job follows through /api/jobs/{id}", body = super::openapi::FluxAccepted),
        (status = 402, description = "The day's budget cannot cover the price (`budget_exceeded`)", body = crate::error::ErrorBody),
        (status = 403, description = "Generation is disabled on the server (`generation_disabled`)", body = crate::error::ErrorBody),
        (status = 409, description = "The confirmToken is missing, expired, used, or for another payload; `idempotency_conflict` (with `Retry-After`): the first request under the key is still being answered after 30 s", body = crate::error::ErrorBody),
        (status = 413, description = "The body is larger than 32 MiB", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "A field is wrong (`details.fields`), or the Idempotency-Key was used with another body", body = crate::error::ErrorBody),
        (status = 429, description = "Too many requests from this client; see Retry-After", body = crate::error::ErrorBody),
        (status = 502, description = "BFL refused or could not be reached", body = crate::error::ErrorBody),
        (status = 503, description = "BFL_API_KEY is not configured", body = crate::error::ErrorBody)))]
pub async fn flux_generate(
    State(state): State<AppState>,
    headers: HeaderMap,
    // Kontext takes its input image inline.
    super::extract::Body(body): super::extract::Body<{ 32 * 1024 * 1024 }>,
) -> ApiResult<Response> {
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("body", format!("not valid JSON: {e}")))?;
    let key = super::jobs::idempotency_key(&headers)?;
    let answer = state.flux.generate(&body, key.as_deref()).await?;
    let mut response = (answer.status, Json(answer.body)).into_response();
    if answer.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Today's FLUX budget (UTC day): spent, reserved and left.
#[utoipa::path(get, path = "/api/flux/budget", tag = "flux",
    responses((status = 200, description = "The budget", body = crate::flux::service::Budget),
        (status = 429, description = "Too many requests from this client", body = crate::error::ErrorBody)))]
pub async fn flux_budget(State(state): State<AppState>) -> ApiResult<Response> {
    let budget = state.flux.budget().await.map_err(ApiError::internal)?;
    Ok(Json(budget).into_response())
}

/// The FLUX models, their prices and fields.
#[utoipa::path(get, path = "/api/flux/models", tag = "flux",
    responses((status = 200, description = "The catalogue", body = super::openapi::FluxCatalogue),
        (status = 429, description = "Too many requests from this client", body = crate::error::ErrorBody)))]
pub async fn flux_models() -> Json<Value> {
    Json(crate::bfl::catalog::catalogue())
}

/// Checks the server's v0 key with a cheap call.
#[utoipa::path(get, path = "/api/v0/validate", tag = "v0",
    responses((status = 200, description = "valid, invalid, not_configured, unknown or unreachable", body = super::openapi::V0Validation),
        (status = 429, description = "Too many requests from this client", body = crate::error::ErrorBody)))]
pub async fn v0_validate(State(state): State<AppState>) -> Json<Value> {
    Json(state.v0.validate().await)
}

/// `/api/comfy-org/{*path}`, every method: ComfyUI's API nodes' calls, through the egress (their job's key is
/// the only credential it takes).
pub async fn comfy_org_egress(
    State(state): State<AppState>,
    request: Request,
) -> ApiResult<Response> {
    let path = request
        .uri()
        .path()
        .strip_prefix(crate::config::Config::EGRESS_PATH)
        .unwrap_or_default()
        .to_owned();
    state
        .jobs
        .call_comfy_org(request, &path)
        .await
        .map(|response| response.map(axum::body::Body::new))
        .map_err(ApiError::from)
}

/// `/api/v0/{*path}`, every method.
pub async fn v0_gateway(State(state): State<AppState>, request: Request) -> ApiResult<Response> {
    let path = request
        .uri()
        .path()
        .strip_prefix("/api/v0")
        .unwrap_or_default()
        .to_owned();
    state
        .v0
        .forward(request, &path)
        .await
        .map(|response| response.map(axum::body::Body::new))
        .map_err(ApiError::from)
}
