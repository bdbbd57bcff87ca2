//! The gallery's API: `GET /api/gallery` (every output, newest first, filtered and searched, a page at a time),
//! `GET /api/jobs/{id}/outputs/{name}/thumbnail`, `DELETE /api/jobs/{id}` and `POST /api/jobs/{id}/again`.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::extract::Query;
use super::jobs::find;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::jobs::runner::thumbnails::has_thumbnail;
use crate::model::{Backend, JobStatus};
use crate::store::GalleryQuery;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GalleryParams {
    /// Jobs per page, 1 to 100 (default 24); a page holds every output of its jobs.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only outputs of this template.
    template: Option<String>,
    /// `comfy` or `flux`.
    #[param(pattern = "^(comfy|flux)$")]
    backend: Option<String>,
    /// Only jobs in this state.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// Made on or after this day (`YYYY-MM-DD`, UTC).
    #[param(format = Date)]
    since: Option<String>,
    /// Made on or before this day (`YYYY-MM-DD`, UTC).
    #[param(format = Date)]
    until: Option<String>,
    /// Words the prompt contains (each a prefix).
    q: Option<String>,
}

/// One output in the gallery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GalleryItem {
    pub job_id: String,
    pub name: String,
    /// The file (with `Range`).
    pub url: String,
    /// A JPEG that fits 320×320, for still images; `null` for video and audio.
    pub thumbnail_url: Option<String>,
    pub content_type: String,
    pub template: Option<String>,
    #[schema(value_type = String)]
    pub backend: Backend,
    #[schema(value_type = String)]
    pub status: JobStatus,
    pub created_at: String,
    /// The prompt, when the job had one.
    pub prompt: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GalleryPage {
    pub items: Vec<GalleryItem>,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A day as `created_at` sorts (`2026-12-04`), `next` for the day after it (an inclusive `until`).
fn day(field: &'static str, text: &str, next: bool) -> ApiResult<String> {
    let date = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| ApiError::invalid(field, "a day as YYYY-MM-DD"))?;
    let date = if next {
        date.succ_opt().unwrap_or(date)
    } else {
        date
    };
    Ok(date.format("%Y-%m-%d").to_string())
}

/// `GET /api/gallery`: every job output, newest first, keyset-paged; filters by template, backend, status and
/// day; `q` searches the prompts.
#[utoipa::path(get, path = "/api/gallery", tag = "jobs", params(GalleryParams),
    responses((status = 200, description = "A page of outputs", body = GalleryPage),
        (status = 422, description = "An unknown status or backend, a limit out of range, a day not YYYY-MM-DD", body = crate::error::ErrorBody)))]
pub async fn gallery(
    State(state): State<AppState>,
    Query(params): Query<GalleryParams>,
) -> ApiResult<Json<GalleryPage>> {
    let limit = match params.limit.as_deref() {
        None => 24,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", "a whole number from 1 to 100"))?,
    };
    let status = match params.status.as_deref() {
        None => None,
        Some(text) => Some(
            JobStatus::parse(text)
                .ok_or_else(|| ApiError::invalid("status", format!("unknown status {text:?}")))?,
        ),
    };
    let backend = match params.backend.as_deref() {
        None => None,
        Some(text @ ("comfy" | "flux")) => Some(text.to_owned()),
        Some(_) => return Err(ApiError::invalid("backend", "comfy or flux")),
    };
    let nonempty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    let query = GalleryQuery {
        template: nonempty(params.template),
        backend,
        status,
        since: params.since.map(|d| day("since", &d, false)).transpose()?,
        until: params.until.map(|d| day("until", &d, true)).transpose()?,
        text: nonempty(params.q),
        cursor: nonempty(params.cursor),
        limit,
    };
    let page = state
        .jobs
        .store()
        .gallery(&query)
        .await
        .map_err(ApiError::internal)?;
    let items = page
        .jobs
        .iter()
        .flat_map(|job| {
            job.outputs.iter().map(move |output| GalleryItem {
                job_id: job.id.clone(),
                name: output.name.clone(),
                url: output.url.clone(),
                thumbnail_url: has_thumbnail(&output.content_type)
                    .then(|| format!("{}/thumbnail", output.url)),
                content_type: output.content_type.clone(),
                template: job.template.clone(),
                backend: job.backend,
                status: job.status,
                created_at: job.created_at.clone(),
                prompt: crate::model::prompt_text(&job.params, &serde_json::Value::Null),
            })
        })
        .collect();
    Ok(Json(GalleryPage {
        items,
        next_cursor: page.next_cursor,
    }))
}

/// `GET /api/jobs/{id}/outputs/{name}/thumbnail`: a still image output scaled to fit 320×320, as JPEG; made once,
/// then read from disk. An image too large to decode (or one the decoder cannot read) has a placeholder picture.
#[utoipa::path(get, path = "/api/jobs/{id}/outputs/{name}/thumbnail", tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), ("name" = String, Path, description = "An output's name, as the job lists it")),
    responses((status = 200, description = "The thumbnail", content_type = "image/jpeg", body = Vec<u8>),
        (status = 404, description = "No such job or output, or one without a thumbnail (video, audio, not on this instance)", body = crate::error::ErrorBody)))]
pub async fn thumbnail(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    request: Request,
) -> ApiResult<Response> {
    let job = find(&state, &id).await?;
    let not_found = || ApiError::OutputNotFound {
        name: name.chars().take(128).collect(),
    };
    let output = job
        .outputs
        .iter()
        .find(|o| o.name == name && has_thumbnail(&o.content_type))
        .ok_or_else(not_found)?;
    let path = match state.jobs.thumbnails().of(&job.id, &output.name).await {
        Ok(Some(path)) => path,
        Ok(None) => return Err(not_found()),
        Err(error) => {
            tracing::warn!(job = %job.id, %error, "cannot make a thumbnail");
            return Err(not_found());
        }
    };
    let thumb_name = format!("{}.jpg", output.name);
    super::files::serve(&path, "image/jpeg", &thumb_name, request).await
}

/// `DELETE /api/jobs/{id}`: a job that has ended, with its files (outputs and thumbnails). A paid job keeps its
/// record (without outputs): its charge still counts against the day's budget.
#[utoipa::path(delete, path = "/api/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "The job's id")),
    responses((status = 204, description = "Deleted, files included"),
        (status = 404, description = "No such job", body = crate::error::ErrorBody),
        (status = 409, description = "`job_running`: it has not ended yet", body = crate::error::ErrorBody)))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    use crate::store::Deleted;
    match state.jobs.delete(&id).await.map_err(ApiError::internal)? {
        Deleted::Removed | Deleted::OutputsForgotten => Ok(StatusCode::NO_CONTENT.into_response()),
        Deleted::Running(status) => Err(ApiError::JobRunning {
            status: status.as_str(),
        }),
        Deleted::NotFound => Err(ApiError::JobNotFound {
            id: id.chars().take(64).collect(),
        }),
    }
}

/// `POST /api/jobs/{id}/again`: a template's job once more, with its parameters and a new seed: its stored
/// workflow (input images still named by their assets) with the seed's inputs rewritten; 202 with the new job, as
/// `POST /api/jobs` answers.
#[utoipa::path(post, path = "/api/jobs/{id}/again", tag = "jobs", params(("id" = String, Path, description = "The job's id")),
    responses((status = 202, description = "The new job, queued", body = crate::http::jobs::Accepted),
        (status = 404, description = "No such job", body = crate::error::ErrorBody),
        (status = 422, description = "`validation_failed`: not a template's job, or a FLUX job (asked for again through `POST /api/flux/generate`, with its confirmation)", body = crate::error::ErrorBody)))]
pub async fn again(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let submitted = crate::jobs::intake::again(&state.jobs, &state.templates, &id)
        .await
        .map_err(super::jobs::job_error)?;
    Ok(super::jobs::submitted_response(submitted))
}
