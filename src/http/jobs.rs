//! `/api/jobs…`: submit, list, read, follow, cancel, download.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Query;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::jobs::runner::{JobError, safe_file_name};
use crate::jobs::submit::Submitted;
use crate::model::{Job, JobStatus};
use crate::money::confirm::TokenProblem;
use crate::money::refusal::Refusal;
use crate::problems::Invalid;

/// A template with parameters, or an API-format workflow: one of the two.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SubmitJob {
    /// Only `comfy` (the default).
    #[schema(example = "comfy")]
    backend: Option<String>,
    /// A template's name, from `GET /api/templates`.
    #[schema(example = "sdxl-t2i")]
    template: Option<String>,
    /// The template's parameters; image parameters may be `data:image/…;base64,…` URLs.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    /// A workflow in ComfyUI's API format ("Save (API)"): node id → `{class_type, inputs}`.
    #[schema(value_type = Option<Object>)]
    workflow: Option<Value>,
    /// `true`: answer the dry run (paid nodes, estimated cost, a `confirmToken` for a paid workflow) and send
    /// nothing.
    #[serde(default, rename = "dryRun", alias = "dry_run")]
    dry_run: Option<bool>,
    /// A workflow with paid ComfyUI nodes runs only with the `confirmToken` of a dry run of this very workflow.
    #[serde(default, rename = "confirmToken", alias = "confirm_token")]
    confirm_token: Option<String>,
    /// The most a paid run may spend, in dollars (at or above the estimate): the token of a dry run asked with
    /// it confirms this amount, and Orchestrator's Comfy.org egress stops the run there. Needed when the graph
    /// does not fix how many times a paid node runs (`openEnded` in the dry run).
    #[serde(default, rename = "maxUsd", alias = "max_usd")]
    max_usd: Option<f64>,
}

/// `POST /api/jobs/{id}/confirm`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ConfirmJob {
    /// From the 402 answer's `details.confirmToken` (ask without one to get it).
    #[serde(default, rename = "confirmToken", alias = "confirm_token")]
    confirm_token: Option<String>,
    /// The most the run may spend, in dollars, as for `POST /api/jobs` (ask with it to get a token for it).
    #[serde(default, rename = "maxUsd", alias = "max_usd")]
    max_usd: Option<f64>,
}

/// A job accepted for running.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Accepted {
    id: String,
    status: JobStatus,
}

/// One page of jobs, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobPage {
    jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; absent on the last one.
    next_cursor: Option<String>,
}

/// Every template's manifest.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TemplateList {
    templates: Vec<crate::jobs::templates::Manifest>,
}

/// `POST /api/jobs`: 202 `{id, status}` once ComfyUI has accepted the workflow.
#[utoipa::path(post, path = "/api/jobs", tag = "jobs", request_body = SubmitJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "For a paid workflow: repeats with the same key get the first answer and pay once")),
    responses((status = 200, description = "`dryRun: true`: the dry run (`paid`, `paidNodes`, `estimatedCost`, `confirmToken`); nothing was sent", body = Object),
        (status = 202, description = "Accepted: sent to ComfyUI, or queued until one answers", body = Accepted,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 402, description = "A workflow with paid nodes and no valid `confirmToken` (`confirmation_required`, `_expired`, `_mismatch`, `_used`: `details` hold the dry run with a new token), or `budget_exceeded`", body = crate::error::ErrorBody),
        (status = 403, description = "`generation_disabled`: the workflow has paid nodes (`details.paidNodes`) and ALLOW_GENERATION is off", body = crate::error::ErrorBody),
        (status = 409, description = "`idempotency_conflict`, with `Retry-After`: the first request under the key is still being answered after 30 s", body = crate::error::ErrorBody),
        (status = 413, description = "The body is larger than 72 MiB", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "A field is wrong (`details.fields` names each), or ComfyUI refused the workflow (`comfy_rejected`)", body = crate::error::ErrorBody),
        (status = 502, description = "ComfyUI answered with something unexpected", body = crate::error::ErrorBody),
        (status = 503, description = "No ComfyUI answers and the job has input images to upload or paid nodes; or `comfy_org_not_configured`", body = crate::error::ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    headers: http::HeaderMap,
    // Input images come inline as data: URLs.
    super::extract::Body(body): super::extract::Body<{ 72 * 1024 * 1024 }>,
) -> ApiResult<Response> {
    let request: SubmitJob =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    match request.backend.as_deref().unwrap_or("comfy") {
        "comfy" => {}
        other => {
            return Err(ApiError::invalid(
                "backend",
                format!("unknown backend {other:?}; expected \"comfy\""),
            ));
        }
    }
    // The models ComfyUI has, for a template's model fields (none when it does not answer).
    let lists = match request.template {
        Some(_) => state.models.get(&state.gateway, false).await.ok(),
        None => None,
    };
    let intake = crate::jobs::intake::Request {
        template: request.template,
        workflow: request.workflow,
        params: request.params,
        dry_run: request.dry_run.unwrap_or(false),
        token: request.confirm_token,
        max_usd: request.max_usd,
        idempotency_key: idempotency_key(&headers)?,
    };
    let submission =
        crate::jobs::intake::submission(&state.jobs, &state.templates, lists.as_deref(), intake)
            .await
            .map_err(job_error)?;
    let submitted = state.jobs.submit(submission).await.map_err(job_error)?;
    Ok(submitted_response(submitted))
}

pub(super) fn idempotency_key(headers: &http::HeaderMap) -> ApiResult<Option<String>> {
    crate::money::keys::key_of(headers)
        .map_err(|bad| ApiError::invalid("Idempotency-Key", bad.to_string()))
}

pub(super) fn submitted_response(submitted: Submitted) -> Response {
    match submitted {
        Submitted::DryRun(body) => (StatusCode::OK, Json(body)).into_response(),
        Submitted::Replayed(status, body) => {
            let mut response = (status, Json(body)).into_response();
            response.headers_mut().insert(
                "idempotent-replayed",
                http::HeaderValue::from_static("true"),
            );
            response
        }
        Submitted::Job(job) => {
            let location = format!("/api/jobs/{}", job.id);
            let body = Accepted {
                id: job.id,
                status: job.status,
            };
            (
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(body),
            )
                .into_response()
        }
    }
}

/// `POST /api/jobs/{id}/confirm`: a person approves a job that waits with paid nodes; it is then sent.
#[utoipa::path(post, path = "/api/jobs/{id}/confirm", tag = "jobs", request_body = ConfirmJob,
    params(("id" = String, Path, description = "The job's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeats with the same key get the first answer")),
    responses((status = 202, description = "Approved and sent to ComfyUI", body = Accepted),
        (status = 402, description = "`confirmation_required` (or `_expired`, `_mismatch`, `_used`): `details` hold the dry run with a new `confirmToken`; or `budget_exceeded`", body = crate::error::ErrorBody),
        (status = 403, description = "`generation_disabled`", body = crate::error::ErrorBody),
        (status = 404, description = "No such job", body = crate::error::ErrorBody),
        (status = 409, description = "`not_awaiting_confirmation`: the job does not wait for an approval; `idempotency_conflict` (with `Retry-After`): the first request under the key is still being answered after 30 s", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "A field is wrong", body = crate::error::ErrorBody),
        (status = 429, description = "`rate_limited`: too many paid requests from this client; see `Retry-After`", body = crate::error::ErrorBody),
        (status = 503, description = "`comfy_org_not_configured`, or its ComfyUI is offline", body = crate::error::ErrorBody)))]
pub async fn confirm(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: http::HeaderMap,
    super::extract::Body(body): super::extract::Body<{ 64 * 1024 }>,
) -> ApiResult<Response> {
    let request: ConfirmJob =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    let max_micros = crate::money::cap_micros(request.max_usd)?;
    let key = idempotency_key(&headers)?;
    let submitted = state
        .jobs
        .confirm(&id, request.confirm_token, max_micros, key)
        .await
        .map_err(job_error)?;
    Ok(submitted_response(submitted))
}

pub(super) fn job_error(error: JobError) -> ApiError {
    match error {
        JobError::Rejected {
            job,
            message,
            details,
        } => ApiError::ComfyRejected {
            message,
            job_id: job.id,
            details,
        },
        JobError::Comfy(error) => error.into(),
        JobError::Task(error) => ApiError::internal(error),
        JobError::Store(error) => ApiError::internal(error),
        JobError::Asset(error) => ApiError::internal(error),
        JobError::NotFound(id) => ApiError::JobNotFound { id },
        JobError::Finished(status) => ApiError::JobFinished { status },
        JobError::NotCancellable(backend) => ApiError::JobNotCancellable {
            backend,
            why: "BFL cannot stop a task once it is sent, and it is charged",
        },
        JobError::Refused(refusal) => ApiError::Refused(*refusal),
        JobError::MissingAssets(missing) => ApiError::Validation(Invalid::field(
            "workflow",
            format!("names assets that are not here: {}", missing.join(", ")),
        )),
        JobError::UnknownClasses(unknown) => {
            let fields = unknown
                .into_iter()
                .map(|(id, class)| {
                    (
                        format!("workflow.{id}.class_type"),
                        json!(format!("ComfyUI has no node class {class:?} (a custom node that is not installed?)")),
                    )
                })
                .collect();
            ApiError::Validation(Invalid(fields))
        }
        JobError::AwaitingConfirmation(job) => ApiError::Refused(Refusal::NeedsConfirmation {
            problem: TokenProblem::Missing,
            message: "The workflow has paid nodes on the ComfyUI it was going to; it waits for a person's \
                      confirmation (POST /api/jobs/{id}/confirm)"
                .into(),
            details: json!({ "job_id": job.id, "status": job.status, "approval": job.approval }),
        }),
    }
}

/// `GET /api/templates`: every template's manifest (name, title, output, parameters with types, ranges, defaults).
#[utoipa::path(get, path = "/api/templates", tag = "jobs",
    responses((status = 200, description = "The templates", body = TemplateList)))]
pub async fn templates(State(state): State<AppState>) -> Json<TemplateList> {
    let templates = state.templates.manifests().cloned().collect();
    Json(TemplateList { templates })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this state.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /api/jobs?status=&limit=&cursor=`: newest first, `next_cursor` for the next page.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, description = "A page of jobs", body = JobPage),
        (status = 422, description = "An unknown status, or a limit out of range", body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<JobPage>> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(
            JobStatus::parse(text)
                .ok_or_else(|| ApiError::invalid("status", format!("unknown status {text:?}")))?,
        ),
    };
    let limit = match query.limit.as_deref() {
        None => 50,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", "a whole number from 1 to 500"))?,
    };
    let page = state
        .jobs
        .store()
        .list_jobs(status, limit, query.cursor.as_deref())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(JobPage {
        jobs: page.jobs,
        next_cursor: page.next_cursor,
    }))
}

pub(super) async fn find(state: &AppState, id: &str) -> ApiResult<Job> {
    state
        .jobs
        .store()
        .job(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::JobNotFound {
            id: id.chars().take(64).collect(),
        })
}

/// One job: its state, progress, parameters, error and outputs.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job", body = Job), (status = 404, description = "No such job", body = crate::error::ErrorBody)))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(find(&state, &id).await?))
}

/// Cancels a job: removed from ComfyUI's queue if it waits, interrupted if it runs.
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job after the cancel", body = Job),
        (status = 404, description = "No such job", body = crate::error::ErrorBody),
        (status = 409, description = "The job has already ended, or its backend cannot cancel it", body = crate::error::ErrorBody),
        (status = 502, description = "ComfyUI did not take the cancel", body = crate::error::ErrorBody), (status = 504, description = "ComfyUI did not answer in time", body = crate::error::ErrorBody)))]
pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(state.jobs.cancel(&id).await.map_err(job_error)?))
}

/// `GET /api/jobs/{id}/outputs/{name}`: a job's file, streamed; only names the job recorded are served.
#[utoipa::path(get, path = "/api/jobs/{id}/outputs/{name}", tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), ("name" = String, Path, description = "An output's name, as the job lists it")),
    responses((status = 200, description = "The file, streamed", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such job, or no such output", body = crate::error::ErrorBody)))]
pub async fn output(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    request: axum::extract::Request,
) -> ApiResult<Response> {
    let job = find(&state, &id).await?;
    let Some(file) = job
        .outputs
        .iter()
        .find(|o| o.name == name && safe_file_name(&name) == name)
    else {
        return Err(ApiError::OutputNotFound {
            name: name.chars().take(128).collect(),
        });
    };
    serve_output(&state, &job, file, request).await
}

/// A job's output: from this instance's disk (with `Range`), or streamed whole from the instance of the fleet that
/// holds it.
pub(super) async fn serve_output(
    state: &AppState,
    job: &Job,
    file: &crate::model::OutputFile,
    request: axum::extract::Request,
) -> ApiResult<Response> {
    if let Some(path) = state.jobs.output_file(&job.id, &file.name)
        && tokio::fs::try_exists(&path).await.unwrap_or(false)
    {
        return super::files::serve(&path, &file.content_type, &file.name, request).await;
    }
    let (length, body) = from_another_instance(state, &job.id, file, request.headers()).await?;
    let mut response = (
        [
            (header::CONTENT_TYPE, file.content_type.clone()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response();
    super::files::named(&mut response, &file.name);
    Ok(response)
}

/// An output another instance of the fleet holds (it ran the job, with a data folder of its own): streamed from
/// that instance, the fetch authenticated with the fleet's token. A fetch from another instance is not passed on.
async fn from_another_instance(
    state: &AppState,
    job_id: &str,
    file: &crate::model::OutputFile,
    headers: &http::HeaderMap,
) -> ApiResult<(u64, Body)> {
    let not_found = || ApiError::OutputNotFound {
        name: file.name.clone(),
    };
    let Some(token) = &state.fleet_token else {
        return Err(not_found());
    };
    if headers.contains_key(super::guard::FLEET_HEADER) {
        return Err(not_found());
    }
    let holder = state
        .store
        .job_claimant(job_id)
        .await
        .map_err(ApiError::internal)?
        .filter(|holder| holder != state.jobs.instance())
        .ok_or_else(not_found)?;
    let instances = state.store.instances().await.map_err(ApiError::internal)?;
    let instance = instances
        .iter()
        .find(|i| i.id == holder)
        .ok_or_else(not_found)?;
    let name: String =
        percent_encoding::utf8_percent_encode(&file.name, percent_encoding::NON_ALPHANUMERIC)
            .collect();
    let url = format!(
        "{}/api/jobs/{job_id}/outputs/{name}",
        instance.url.trim_end_matches('/')
    );
    let answer = state
        .fleet_client
        .get(&url)
        .header(super::guard::FLEET_HEADER, token.expose())
        .send()
        .await
        .map_err(|error| {
            tracing::warn!(job = %job_id, instance = %holder, %error, "the instance holding an output does not answer");
            not_found()
        })?;
    if !answer.status().is_success() {
        return Err(not_found());
    }
    let length = answer.content_length().unwrap_or(file.size);
    Ok((length, Body::from_stream(answer.bytes_stream())))
}
