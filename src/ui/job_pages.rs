//! The job pages: `/jobs`, the list, and `/jobs/{id}`, one job.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::i18n::Tr;
use super::{error_page, render, tr};
use crate::app::AppState;
use crate::model::{Job, JobStatus};

#[derive(Debug, Deserialize)]
pub(super) struct JobsQuery {
    status: Option<String>,
    cursor: Option<String>,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    t: Tr,
    page: &'static str,
    filter: String,
    /// Each status, and whether it is the one shown.
    statuses: Vec<(&'static str, bool)>,
    jobs: Vec<Job>,
    next_cursor: Option<String>,
}

/// `/jobs`: the newest jobs, 50 a page, optionally of one status.
pub(super) async fn jobs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<JobsQuery>,
) -> Response {
    let t = tr(&headers);
    let status = query.status.as_deref().and_then(JobStatus::parse);
    let page = match state
        .store
        .list_jobs(status, 50, query.cursor.as_deref())
        .await
    {
        Ok(page) => page,
        Err(error) => {
            tracing::error!(%error, "cannot list jobs");
            return error_page(t, StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    let page = JobsPage {
        t,
        page: "jobs",
        filter: status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        // Every status, in the order of a job's life.
        statuses: JobStatus::ALL
            .iter()
            .map(|s| (s.as_str(), Some(*s) == status))
            .collect(),
        jobs: page.jobs,
        next_cursor: page.next_cursor,
    };
    render(&page, t)
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    t: Tr,
    page: &'static str,
    job: Job,
    params_json: String,
    error_json: String,
    /// The paid nodes by name, and the job's estimated and actual cost, as shown (empty when none).
    paid_nodes: String,
    estimated: String,
    actual: String,
    /// Whether "generate again" applies: an ended job of a template.
    again: bool,
    /// The templates that take an input image, for "use as input".
    input_templates: Vec<(String, String)>,
}

/// Whether a template takes an input image.
fn takes_image(manifest: &crate::jobs::templates::Manifest) -> bool {
    manifest
        .params
        .values()
        .any(|p| p.kind == crate::jobs::templates::ParamKind::Image)
}

/// `/jobs/{id}`: one job, its outputs, cost and parameters.
pub(super) async fn job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let t = tr(&headers);
    match state.store.job(&id).await {
        Ok(Some(job)) => {
            let approval = job.approval.clone().unwrap_or_default();
            let paid_nodes = approval["paidNodes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    format!(
                        "{} ({})",
                        n["display_name"].as_str().unwrap_or_default(),
                        n["class_type"].as_str().unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let dollars = |usd: Option<f64>| usd.map(|v| format!("${v:.3}")).unwrap_or_default();
            // A FLUX job is asked for again through FLUX, with its confirmation; "again" is for ComfyUI's.
            let again = job.status.is_final()
                && job.template.is_some()
                && job.backend == crate::model::Backend::Comfy;
            let input_templates = state
                .templates
                .manifests()
                .filter(|m| takes_image(m))
                .map(|m| (m.name.clone(), m.title.clone()))
                .collect();
            let page = JobPage {
                t,
                page: "job",
                again,
                input_templates,
                paid_nodes,
                estimated: dollars(job.cost_usd.or(approval["estimatedCost"]["usd"].as_f64())),
                actual: dollars(job.actual_cost_usd),
                params_json: serde_json::to_string_pretty(&job.params).unwrap_or_default(),
                error_json: job
                    .error
                    .as_ref()
                    .map(|e| serde_json::to_string_pretty(e).unwrap_or_default())
                    .unwrap_or_default(),
                job,
            };
            render(&page, t)
        }
        Ok(None) => error_page(t, StatusCode::NOT_FOUND),
        Err(error) => {
            tracing::error!(%error, "cannot read a job");
            error_page(t, StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}
