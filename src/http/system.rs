//! `/api/system/*` and `/api/logs/comfy`: ComfyUI's service, Ignite and the log viewer.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::service::ignite::{self, Progress};
use crate::service::{ServiceStatus, logs};

/// The health probe's time budget.
const PROBE_WITHIN: Duration = Duration::from_secs(2);

pub async fn status(State(state): State<AppState>) -> Json<ServiceStatus> {
    Json(current_status(&state).await)
}

async fn current_status(state: &AppState) -> ServiceStatus {
    crate::status::service_status(state).await
}

/// `GET /api/status`: the whole report, within 2.5 s whatever hangs.
pub async fn full_status(State(state): State<AppState>) -> Json<crate::status::Report> {
    Json(crate::status::report(&state).await)
}

pub async fn services_status(State(state): State<AppState>) -> Json<crate::status::Services> {
    Json(crate::status::services(&state).await)
}

pub async fn comfy_status(State(state): State<AppState>) -> Json<crate::status::Comfy> {
    Json(crate::status::comfy(&state).await)
}

/// `GET /api/status/models`: model files per folder as ComfyUI lists them, and the extra_model_paths.yaml check.
pub async fn models_status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let (comfy, paths) = tokio::join!(
        crate::status::comfy(&state),
        crate::status::model_paths(&state)
    );
    Json(json!({ "comfy": comfy.status, "folders": comfy.models, "model_paths": paths }))
}

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

pub async fn stop(State(state): State<AppState>) -> ApiResult<Json<ServiceStatus>> {
    state.service.stop().await?;
    Ok(Json(current_status(&state).await))
}

/// `POST /api/system/ignite`: JSON with the outcome, or, for `Accept: text/event-stream`, each phase as an event
/// (`event: progress`) and the outcome last (`event: done`).
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

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    lines: Option<String>,
    /// `empty`: a log not written yet is an empty answer (`exists: false`) instead of a 404, for the panel.
    missing: Option<String>,
}

/// `GET /api/logs/comfy?lines=N`: the last N lines (default 100, clamped to 1..=5000).
pub async fn comfy_log(
    State(state): State<AppState>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Json<serde_json::Value>> {
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
        Ok(lines) => Ok(Json(
            json!({ "path": shown, "exists": true, "lines": lines }),
        )),
        Err(error)
            if error.kind() == std::io::ErrorKind::NotFound
                && query.missing.as_deref() == Some("empty") =>
        {
            Ok(Json(json!({ "path": shown, "exists": false, "lines": [] })))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(ApiError::LogNotFound { path: shown })
        }
        Err(error) => Err(ApiError::internal(error)),
    }
}
