//! `/api/v2/jobs…`: submit, list, read, the workflow, cancel.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value, json};

use super::keys::{self, Outcome, Prior};
use super::render;
use super::{V2Error, V2Result, base};
use crate::app::AppState;
use crate::codes::Code;
use crate::jobs::intake::{NodeProblem, Shape};
use crate::jobs::runner::JobError;
use crate::jobs::submit::{Submission, Submitted};
use crate::model::{Job, JobStatus};
use crate::store::JobFilter;

/// The scope of v2 submissions' idempotency keys (apart from `/api/jobs`', whose bodies differ).
const SCOPE: &str = "v2.jobs";
/// The largest submission body: a workflow, never bytes (those are assets).
const MAX_BODY: usize = 16 * 1024 * 1024;

pub(super) async fn find(state: &AppState, id: &str) -> V2Result<Job> {
    state
        .jobs
        .store()
        .job(id)
        .await
        .map_err(V2Error::internal)?
        .ok_or_else(|| V2Error::not_found("job", id))
}

fn unprocessable(code: Code, message: impl Into<String>) -> V2Error {
    V2Error::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// The body of `POST /api/v2/jobs`: the workflow, labels, and (Orchestrator's addition) the confirmation of a paid
/// workflow's price.
struct Request {
    workflow: Value,
    metadata: Map<String, Value>,
    confirm_token: Option<String>,
}

fn parse(body: &[u8]) -> V2Result<Request> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| V2Error::invalid(format!("the body is not JSON: {e}")))?;
    let Value::Object(mut body) = body else {
        return Err(V2Error::invalid("the body must be a JSON object"));
    };
    for reserved in ["webhook_url", "inputs"] {
        if body.get(reserved).is_some_and(|v| !v.is_null()) {
            return Err(unprocessable(
                Code::InvalidWorkflow,
                format!("{reserved:?} is reserved and not accepted yet"),
            ));
        }
    }
    if body.get("extra_data").is_some_and(|v| !v.is_null()) {
        // The first rule: a paid node runs only with Orchestrator's key, after a person confirmed its price.
        return Err(V2Error::invalid(
            "\"extra_data\" is not accepted: Orchestrator pays for API nodes with its own Comfy.org key, once a \
             person confirmed the price (send the 402 answer's details.confirmToken as \"confirm_token\")",
        ));
    }
    let workflow = match body.remove("workflow") {
        Some(workflow @ Value::Object(_)) => workflow,
        _ => {
            return Err(unprocessable(
                Code::InvalidWorkflow,
                "\"workflow\" (the API-format graph) is missing or not an object",
            ));
        }
    };
    let shape = Shape::of(&workflow);
    if shape.ui_export {
        return Err(unprocessable(
            Code::WorkflowFormatUi,
            "this is the editor's export (nodes and links); export the workflow in API format instead",
        ));
    }
    // The contract's words: one problem per node, its class first.
    let mut node_errors = Map::new();
    for (id, problem) in &shape.nodes {
        let error = match problem {
            NodeProblem::NoClass => json!([{ "field": "class_type", "reason": "missing" }]),
            NodeProblem::InputsNotAnObject => {
                json!([{ "field": "inputs", "reason": "not_an_object" }])
            }
        };
        node_errors.entry(id.clone()).or_insert(error);
    }
    if !shape.is_sound() {
        return Err(unprocessable(
            Code::InvalidWorkflow,
            "the workflow is not a non-empty map of nodes, each with a class_type and inputs",
        )
        .with_details(json!({ "node_errors": node_errors })));
    }
    let metadata = match body.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(labels)) => check_labels(labels)?,
        Some(_) => {
            return Err(unprocessable(
                Code::MetadataInvalid,
                "\"metadata\" must be a map of string labels",
            ));
        }
    };
    let confirm_token = match body.remove("confirm_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) => Some(token),
        Some(_) => return Err(V2Error::invalid("\"confirm_token\" must be a string")),
    };
    Ok(Request {
        workflow,
        metadata,
        confirm_token,
    })
}

/// At most 16 labels; a key of 1 to 40 of `A-Z a-z 0-9 _ - .`, a value of at most 256 bytes without control or
/// bidirectional formatting characters (the contract's rules).
fn check_labels(labels: Map<String, Value>) -> V2Result<Map<String, Value>> {
    let refuse = |message: String| Err(unprocessable(Code::MetadataInvalid, message));
    if labels.len() > 16 {
        return refuse(format!("{} labels; at most 16 are kept", labels.len()));
    }
    for (key, value) in &labels {
        let key_ok = (1..=40).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !key_ok {
            return refuse(format!("label key {key:?}: 1 to 40 of A-Z a-z 0-9 _ - ."));
        }
        let Some(text) = value.as_str() else {
            return refuse(format!("label {key:?}: the value must be a string"));
        };
        let bad = |c: char| {
            c.is_control()
                || ('\u{202A}'..='\u{202E}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        };
        if text.len() > 256 || text.chars().any(bad) {
            return refuse(format!(
                "label {key:?}: at most 256 bytes, without control or bidirectional formatting characters"
            ));
        }
    }
    Ok(labels)
}

fn created(job: &Job, base: &str) -> Response {
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v2/jobs/{}", job.id))],
        Json(render::job(job, base, false)),
    )
        .into_response()
}

/// `POST /api/v2/jobs`: an API-format workflow, validated, recorded and queued; 201 with the job.
#[utoipa::path(post, path = "/api/v2/jobs", tag = "v2", request_body(content = Object,
        description = "`{workflow, metadata?, confirm_token?}`: the API-format graph verbatim (`core/ASSET` references where input files go), string labels, and for a workflow with paid nodes the `confirmToken` of the 402 answer"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the first answer again (`Idempotency-Replayed: true`); another body: 422 `idempotency_key_reuse`; while the first is answered: 409 `idempotency_conflict`")),
    responses((status = 201, description = "The job, recorded and queued", body = Object),
        (status = 400, description = "`invalid_request`: the body is not a JSON object, a bad `Idempotency-Key`, `extra_data` given", body = crate::error::ErrorBody),
        (status = 402, description = "A paid workflow: `confirmation_required` (details: the dry run and a `confirmToken`), or `insufficient_credits`", body = crate::error::ErrorBody),
        (status = 403, description = "`generation_disabled`: paid nodes and ALLOW_GENERATION is off", body = crate::error::ErrorBody),
        (status = 409, description = "`idempotency_conflict`, with `Retry-After`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_workflow` (details.node_errors), `workflow_format_ui`, `missing_asset`, `metadata_invalid`, `idempotency_key_reuse`", body = crate::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not JSON", body = crate::error::ErrorBody),
        (status = 503, description = "No ComfyUI answers and the workflow names assets (they are uploaded to the one that runs it)", body = crate::error::ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::http::extract::Body(body): crate::http::extract::Body<MAX_BODY>,
) -> V2Result<Response> {
    let key = keys::key_of(&headers)?;
    let request = parse(&body)?;
    let base = base(&headers);
    // Claim, submit and settle in a task of their own: a client that hangs up in between cannot leave its key
    // claimed without an answer (see `keys`).
    let work_state = state.clone();
    keys::detached(&state, async move {
        submit_once(&work_state, key, request, &base).await
    })
    .await
}

async fn submit_once(
    state: &AppState,
    key: Option<String>,
    request: Request,
    base: &str,
) -> V2Result<Response> {
    let fingerprint = crate::money::keys::fingerprint(
        crate::jobs::gate::canonical(
            &json!({ "workflow": request.workflow, "metadata": request.metadata }),
        )
        .as_bytes(),
    );
    // Held (the claim renewed) until the key is settled.
    let _claimed = match &key {
        None => None,
        Some(key) => match keys::prior(state, SCOPE, key, &fingerprint).await? {
            Prior::New(claimed) => Some(claimed),
            Prior::Made { id, .. } => {
                return Ok(keys::replayed(created(&find(state, &id).await?, base)));
            }
            Prior::Refused { status, body } => return Ok(keys::refusal(status, body)),
        },
    };
    let key = key.as_deref();
    match make(state, request).await {
        Ok(job) => {
            let made = Outcome::Made {
                id: &job.id,
                status: StatusCode::CREATED,
            };
            keys::settle(state, SCOPE, key, made).await;
            Ok(created(&job, base))
        }
        Err((error, made_job)) => {
            let outcome = if made_job {
                Outcome::Refused(&error)
            } else {
                Outcome::Nothing
            };
            keys::settle(state, SCOPE, key, outcome).await;
            Err(error)
        }
    }
}

/// The job the request makes; on a refusal, whether a job was recorded before it.
async fn make(state: &AppState, request: Request) -> Result<Job, (V2Error, bool)> {
    let missing = state
        .jobs
        .assets()
        .missing(&request.workflow)
        .await
        .map_err(|e| (V2Error::from(e), false))?;
    if !missing.is_empty() {
        return Err((missing_assets(missing), false));
    }
    let params = if request.metadata.is_empty() {
        json!({})
    } else {
        json!({ "metadata": request.metadata })
    };
    let submission = Submission {
        template: None,
        params,
        workflow: request.workflow,
        dry_run: false,
        token: request.confirm_token,
        max_micros: None,
        // Claimed by `submit`, for free and paid workflows alike; a confirmation pays for one job whatever the key.
        idempotency_key: None,
    };
    match state.jobs.submit(submission).await {
        Ok(Submitted::Job(job)) => Ok(*job),
        Ok(Submitted::DryRun(_) | Submitted::Replayed(..)) => Err((
            V2Error::internal("a v2 submit was answered as a dry run"),
            false,
        )),
        Err(error) => {
            let made_job = matches!(
                error,
                JobError::Rejected { .. } | JobError::AwaitingConfirmation(_)
            );
            Err((job_error(error), made_job))
        }
    }
}

fn missing_assets(missing: Vec<String>) -> V2Error {
    unprocessable(
        Code::MissingAsset,
        format!(
            "the workflow names assets that are not here: {}",
            missing.join(", ")
        ),
    )
    .with_details(json!({ "missing_ids": missing }))
}

fn job_error(error: JobError) -> V2Error {
    match error {
        JobError::MissingAssets(missing) => missing_assets(missing),
        JobError::Rejected {
            message, details, ..
        } => unprocessable(Code::InvalidWorkflow, message)
            .with_details(json!({ "node_errors": details["node_errors"], "comfy": details })),
        JobError::UnknownClasses(unknown) => {
            let node_errors: Map<String, Value> = unknown
                .into_iter()
                .map(|(id, class)| {
                    (id, json!([{ "field": "class_type", "reason": "unknown_class", "class_type": class }]))
                })
                .collect();
            unprocessable(
                Code::InvalidWorkflow,
                "the workflow uses node classes ComfyUI does not have",
            )
            .with_details(json!({ "node_errors": node_errors }))
        }
        other => crate::http::jobs::job_error(other).into(),
    }
}

/// `GET /api/v2/jobs?limit=&cursor=&metadata[k]=v&status=`: jobs newest first, a page at a time.
#[utoipa::path(get, path = "/api/v2/jobs", tag = "v2",
    params(("limit" = Option<u32>, Query, description = "1 to 100 (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("status" = Option<String>, Query, description = "Comma-separated v2 statuses to keep"),
        ("metadata[key]" = Option<String>, Query, description = "Keep jobs whose label `key` is this value (up to 3)")),
    responses((status = 200, description = "`{jobs, next_cursor}`; `next_cursor` is absent on the last page", body = Object),
        (status = 400, description = "`invalid_request`, `invalid_cursor` or `invalid_metadata_filter`", body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> V2Result<Json<Value>> {
    let query = ListQuery::read(query.as_deref())?;
    let base = base(&headers);
    let page = state
        .jobs
        .store()
        .list_filtered(&query.filter(), query.limit as u32, query.cursor.as_deref())
        .await
        .map_err(V2Error::internal)?;
    let jobs: Vec<Value> = page.jobs.iter().map(|job| summary(job, &base)).collect();
    let next = page.next_cursor;
    let mut body = json!({ "jobs": jobs });
    if let Some(next) = next {
        body["next_cursor"] = json!(next);
    }
    Ok(Json(body))
}

/// The statuses `status=` may name: v2's.
const STATUSES: [&str; 7] = [
    "queued",
    "running",
    "succeeded",
    "canceling",
    "canceled",
    "failed",
    "expired",
];

/// The query of `GET /api/v2/jobs`, read.
struct ListQuery {
    limit: usize,
    cursor: Option<String>,
    /// The statuses to keep; `None` keeps every one.
    statuses: Option<Vec<String>>,
    /// `metadata[key]=value` filters: the labels a kept job has.
    labels: Vec<(String, String)>,
}

impl ListQuery {
    /// Every parameter checked in the order given; the first bad one refuses the request.
    fn read(query: Option<&str>) -> V2Result<Self> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| V2Error::invalid(format!("the query cannot be read: {e}")))?;
        let mut limit = 50usize;
        let mut cursor = None;
        let mut statuses: Option<Vec<String>> = None;
        let mut labels: Vec<(String, String)> = Vec::new();
        for (name, value) in pairs {
            match name.as_str() {
                "limit" => {
                    limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| {
                            V2Error::invalid("limit must be a whole number from 1 to 100")
                        })?;
                }
                "cursor" => {
                    if !value.contains('~') {
                        return Err(V2Error::new(
                            StatusCode::BAD_REQUEST,
                            Code::InvalidCursor,
                            "this cursor was not issued here",
                        ));
                    }
                    cursor = Some(value);
                }
                "status" => {
                    let wanted: Vec<String> = value
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect();
                    if let Some(bad) = wanted.iter().find(|s| !STATUSES.contains(&s.as_str())) {
                        return Err(V2Error::invalid(format!("unknown status {bad:?}")));
                    }
                    statuses = Some(wanted);
                }
                _ => match name
                    .strip_prefix("metadata[")
                    .and_then(|n| n.strip_suffix(']'))
                {
                    Some(key) if !key.is_empty() && labels.len() < 3 => {
                        labels.push((key.to_owned(), value))
                    }
                    Some(_) => {
                        return Err(V2Error::new(
                            StatusCode::BAD_REQUEST,
                            Code::InvalidMetadataFilter,
                            "at most 3 metadata filters, each metadata[<key>]=<value>",
                        ));
                    }
                    None => {
                        return Err(V2Error::invalid(format!(
                            "unknown query parameter {name:?}"
                        )));
                    }
                },
            }
        }
        Ok(Self {
            limit,
            cursor,
            statuses,
            labels,
        })
    }

    /// The store's filter: the stored statuses that show as the v2 statuses asked for (`canceling` is never
    /// stored: a cancel shows as it while the run stops), and the labels.
    fn filter(&self) -> JobFilter {
        let statuses = self.statuses.as_ref().map(|wanted| {
            JobStatus::ALL
                .into_iter()
                .filter(|status| wanted.iter().any(|w| w == render::status(*status)))
                .collect()
        });
        JobFilter {
            statuses,
            labels: self.labels.clone(),
        }
    }
}

/// A list item: the job, with the summary fields the SDK reads.
fn summary(job: &Job, base: &str) -> Value {
    let mut item = render::job(job, base, false);
    item["create_time"] = json!(job.created_at);
    item["update_time"] = json!(
        job.finished_at
            .as_deref()
            .or(job.started_at.as_deref())
            .unwrap_or(&job.created_at)
    );
    item
}

/// `GET /api/v2/jobs/{id}`: the job's status, latest progress and outputs.
#[utoipa::path(get, path = "/api/v2/jobs/{id}", tag = "v2", params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job", body = Object),
        (status = 404, description = "`not_found`", body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> V2Result<Json<Value>> {
    let job = find(&state, &id).await?;
    Ok(Json(render::job(&job, &base(&headers), false)))
}

/// `GET /api/v2/jobs/{id}/workflow`: the workflow as submitted (`format: api`; asset references kept).
#[utoipa::path(get, path = "/api/v2/jobs/{id}/workflow", tag = "v2", params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "`{workflow, format: \"api\"}`", body = Object),
        (status = 404, description = "`not_found`", body = crate::error::ErrorBody)))]
pub async fn workflow(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> V2Result<Json<Value>> {
    let workflow = state
        .jobs
        .store()
        .workflow(&id)
        .await
        .map_err(V2Error::internal)?
        .ok_or_else(|| V2Error::not_found("job", &id))?;
    Ok(Json(json!({ "workflow": workflow, "format": "api" })))
}

/// `POST /api/v2/jobs/{id}/cancel`: idempotent; `canceling` while a running job stops, or its terminal state.
#[utoipa::path(post, path = "/api/v2/jobs/{id}/cancel", tag = "v2", params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job: `canceled`, `canceling` or the state it had already ended in", body = Object),
        (status = 404, description = "`not_found`", body = crate::error::ErrorBody),
        (status = 409, description = "`job_not_cancellable`: a FLUX job cannot be stopped once sent", body = crate::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not JSON", body = crate::error::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> V2Result<Json<Value>> {
    let base = base(&headers);
    match state.jobs.cancel(&id).await {
        Ok(job) => {
            let stopping = !job.status.is_final() && job.status != JobStatus::AwaitingConfirmation;
            Ok(Json(render::job(&job, &base, stopping)))
        }
        Err(JobError::Finished(_)) => {
            Ok(Json(render::job(&find(&state, &id).await?, &base, false)))
        }
        Err(JobError::NotFound(_)) => Err(V2Error::not_found("job", &id)),
        Err(other) => Err(job_error(other)),
    }
}
