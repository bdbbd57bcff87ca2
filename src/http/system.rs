//! `/api/system/*` and `/api/logs/comfy`: ComfyUI's service, Ignite and the log viewer.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::extract::Query;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::service::ignite::{self, Progress};
use crate::service::{ServiceStatus, logs};

/// The health probe's time budget.
const PROBE_WITHIN: Duration = Duration::from_secs(2);

/// ComfyUI's service: its state, pid, restarts and how its last run ended.
#[utoipa::path(get, path = "/api/system/comfy/status", tag = "service",
    responses((status = 200, description = "The service's status", body = ServiceStatus)))]
pub async fn status(State(state): State<AppState>) -> Json<ServiceStatus> {
    Json(current_status(&state).await)
}

async fn current_status(state: &AppState) -> ServiceStatus {
    crate::app::status::service_status(state).await
}

/// `GET /api/status`: the whole report, within 2.5 s whatever hangs.
#[utoipa::path(get, path = "/api/status", tag = "status",
    responses((status = 200, description = "Services, ComfyUI, database, external APIs and model paths", body = crate::app::status::Report)))]
pub async fn full_status(State(state): State<AppState>) -> Json<crate::app::status::Report> {
    Json(crate::app::status::report(&state).await)
}

/// The services part of the report.
#[utoipa::path(get, path = "/api/status/services", tag = "status",
    responses((status = 200, description = "ComfyUI's service, the panel's mode and the worker", body = crate::app::status::Services)))]
pub async fn services_status(State(state): State<AppState>) -> Json<crate::app::status::Services> {
    Json(crate::app::status::services(&state).await)
}

/// The ComfyUI part of the report.
#[utoipa::path(get, path = "/api/status/comfy", tag = "status",
    responses((status = 200, description = "Whether ComfyUI answers, its version, devices and queue", body = crate::app::status::Comfy)))]
pub async fn comfy_status(State(state): State<AppState>) -> Json<crate::app::status::Comfy> {
    Json(crate::app::status::comfy(&state).await)
}

/// `GET /api/status/models`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ModelsStatus {
    /// ComfyUI's state: `online`, `offline` or `unresponsive`.
    #[schema(value_type = String)]
    comfy: &'static str,
    /// Model files per folder, as ComfyUI lists them (none while it is offline).
    #[schema(value_type = Option<Object>)]
    folders: Option<serde_json::Value>,
    /// The `extra_model_paths.yaml` check.
    #[schema(value_type = Object)]
    model_paths: serde_json::Value,
}

/// `GET /api/status/models`: model files per folder as ComfyUI lists them, and the extra_model_paths.yaml check.
#[utoipa::path(get, path = "/api/status/models", tag = "status",
    responses((status = 200, description = "Models per folder and the model-paths check", body = ModelsStatus)))]
pub async fn models_status(State(state): State<AppState>) -> Json<ModelsStatus> {
    let (comfy, paths) = tokio::join!(
        crate::app::status::comfy(&state),
        crate::app::status::model_paths(&state)
    );
    Json(ModelsStatus {
        comfy: comfy.status,
        folders: comfy.models,
        model_paths: paths,
    })
}

/// Starts ComfyUI (a no-op when it runs; a ComfyUI already answering is adopted, not doubled).
#[utoipa::path(post, path = "/api/system/comfy/start", tag = "service",
    responses((status = 200, description = "The service's status after the start", body = ServiceStatus),
        (status = 409, description = "ComfyUI is external, not installed, or has no start command", body = crate::error::ErrorBody),
        (status = 502, description = "The service manager refused", body = crate::error::ErrorBody),
        (status = 500, description = "The service could not be started", body = crate::error::ErrorBody)))]
pub async fn start(State(state): State<AppState>) -> ApiResult<Json<ServiceStatus>> {
    // A ComfyUI already answering on the address is adopted: a second one would only fail to bind its port.
    let ours = state.service.status().await.status == crate::service::ServiceState::Running;
    if !ours
        && !matches!(*state.service, crate::service::ServiceControl::External)
        && state.gateway.probe(PROBE_WITHIN).await
    {
        return Ok(Json(current_status(&state).await));
    }
    state.service.start().await?;
    Ok(Json(current_status(&state).await))
}

/// Stops ComfyUI: politely first, then by force after the grace period.
#[utoipa::path(post, path = "/api/system/comfy/stop", tag = "service",
    responses((status = 200, description = "The service's status after the stop", body = ServiceStatus),
        (status = 409, description = "ComfyUI is external or not installed", body = crate::error::ErrorBody),
        (status = 502, description = "The service manager refused", body = crate::error::ErrorBody),
        (status = 500, description = "The service could not be stopped", body = crate::error::ErrorBody)))]
pub async fn stop(State(state): State<AppState>) -> ApiResult<Json<ServiceStatus>> {
    state.service.stop().await?;
    Ok(Json(current_status(&state).await))
}

/// `POST /api/system/ignite`: JSON with the outcome, or, for `Accept: text/event-stream`, each phase as an event
/// (`event: progress`) and the outcome last (`event: done`).
#[utoipa::path(post, path = "/api/system/ignite", tag = "service",
    responses((status = 200, description = "The outcome as JSON; with `Accept: text/event-stream`, each phase as an `event: progress` (IgniteProgress) and the outcome last as `event: done`",
        content((crate::service::ignite::Outcome = "application/json"), (String = "text/event-stream")))))]
pub async fn ignite(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let wants_events = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let (progress, mut updates) = mpsc::unbounded_channel::<Progress>();
    let deadline = state.config.service.ignite_timeout;
    let run = {
        let state = state.clone();
        async move {
            let probe = || state.gateway.probe(PROBE_WITHIN);
            ignite::ignite(&state.service, probe, deadline, progress).await
        }
    };
    if !wants_events {
        return Json(run.await).into_response();
    }
    let (events, stream) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let mut outcome = std::pin::pin!(run);
        let outcome = loop {
            tokio::select! {
                Some(update) = updates.recv() => {
                    let _ = events.send(Event::default().event("progress").json_data(&update).unwrap_or_default());
                }
                outcome = &mut outcome => break outcome,
            }
        };
        while let Ok(update) = updates.try_recv() {
            let _ = events.send(
                Event::default()
                    .event("progress")
                    .json_data(&update)
                    .unwrap_or_default(),
            );
        }
        let _ = events.send(
            Event::default()
                .event("done")
                .json_data(&outcome)
                .unwrap_or_default(),
        );
    });
    let stream = futures_util::stream::unfold(stream, |mut stream| async move {
        stream
            .recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), stream))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// How many lines, 1 to 5000 (default 100).
    #[param(value_type = Option<String>)]
    lines: Option<String>,
    /// `empty`: a log not written yet is an empty answer (`exists: false`) instead of a 404, for the panel.
    #[param(value_type = Option<String>)]
    missing: Option<String>,
}

/// The tail of ComfyUI's log.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct LogTail {
    path: String,
    exists: bool,
    lines: Vec<String>,
}

/// `GET /api/logs/comfy?lines=N`: the last N lines (default 100, clamped to 1..=5000).
#[utoipa::path(get, path = "/api/logs/comfy", tag = "service", params(LogQuery),
    responses((status = 200, description = "The last lines, oldest first", body = LogTail),
        (status = 404, description = "No log at the configured path (unless `missing=empty`)", body = crate::error::ErrorBody)))]
pub async fn comfy_log(
    State(state): State<AppState>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Json<LogTail>> {
    let lines = query
        .lines
        .as_deref()
        .and_then(|n| n.trim().parse::<i64>().ok())
        .unwrap_or(100)
        .clamp(1, 5000) as usize;
    let path = state.config.service.log_file.clone();
    let shown = path.display().to_string();
    let read = tokio::task::spawn_blocking(move || logs::tail(&path, lines))
        .await
        .map_err(ApiError::internal)?;
    match read {
        Ok(lines) => Ok(Json(LogTail {
            path: shown,
            exists: true,
            lines: logs::masked(lines, &state.secret_values()),
        })),
        Err(error)
            if error.kind() == std::io::ErrorKind::NotFound
                && query.missing.as_deref() == Some("empty") =>
        {
            Ok(Json(LogTail {
                path: shown,
                exists: false,
                lines: Vec::new(),
            }))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(ApiError::LogNotFound { path: shown })
        }
        Err(error) => Err(ApiError::internal(error)),
    }
}
