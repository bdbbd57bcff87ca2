//! `GET /api/jobs/{id}/preview`: the latest preview image of a running job, as ComfyUI sent it.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

use super::jobs::find;
use crate::app::AppState;
use crate::error::ApiResult;

/// 200 with the image while the job runs and ComfyUI has sent one; 204 when there is none (not started, ended,
/// ComfyUI started without `--preview-method`, or followed by another instance of a fleet), so a page that asks
/// just as the job ends shows no error. Never cached: each `preview` event means a new image at the same address.
#[utoipa::path(get, path = "/api/jobs/{id}/preview", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The latest preview (JPEG or PNG); `X-Preview-Number`: how many the job has sent", content_type = "image/jpeg", body = Vec<u8>),
        (status = 204, description = "No preview now"),
        (status = 404, description = "No such job", body = crate::error::ErrorBody)))]
pub async fn preview(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    let Some(preview) = state.jobs.ledger().preview(&id) else {
        find(&state, &id).await?;
        return Ok((StatusCode::NO_CONTENT, no_store).into_response());
    };
    Ok((
        no_store,
        // The type is ComfyUI's word for bytes a custom node made: never sniffed into something a browser runs.
        [(header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        [(header::CONTENT_TYPE, preview.content_type)],
        [("x-preview-number", preview.number.to_string())],
        preview.bytes,
    )
        .into_response())
}
