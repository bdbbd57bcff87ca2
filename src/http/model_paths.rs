//! `/api/comfy/validate-paths`, `/api/comfy/create-default-paths` and `/api/comfy/restore-paths`: thin handlers
//! over [`crate::comfy::model_paths`] (file work runs on the blocking pool).

use std::path::PathBuf;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use crate::app::AppState;
use crate::codes::Code;
use crate::comfy::model_paths::{self, Created, Report, WriteError};
use crate::error::{ApiError, ApiResult};
use crate::problems::NotConfigured;

fn file(state: &AppState) -> ApiResult<PathBuf> {
    state
        .config
        .service
        .comfy_dir
        .as_deref()
        .map(model_paths::file_in)
        .ok_or(ApiError::NotConfigured(NotConfigured {
            code: Code::ComfyDirNotConfigured,
            what: "ComfyUI's folder (COMFY_DIR)",
        }))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)
}

/// `extra_model_paths.yaml` read the way ComfyUI reads it: sections, folders with file counts, problems.
#[utoipa::path(get, path = "/api/comfy/validate-paths", tag = "model paths",
    responses((status = 200, description = "The check", body = Report),
        (status = 503, description = "COMFY_DIR is not configured, so the file has no place", body = crate::error::ErrorBody)))]
pub async fn validate(State(state): State<AppState>) -> ApiResult<Json<Report>> {
    let file = file(&state)?;
    Ok(Json(blocking(move || model_paths::check(&file)).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The folder the section's paths are relative to (default `MODELS_DIR`); absolute.
    #[serde(alias = "basePath")]
    base_path: Option<String>,
    #[serde(default, alias = "createFolders")]
    create_folders: bool,
    /// Replace a file that cannot be read as ComfyUI reads it (after a backup).
    #[serde(default)]
    force: bool,
}

/// Writes Orchestrator's section of `extra_model_paths.yaml` (keeping the user's sections), after a backup.
#[utoipa::path(post, path = "/api/comfy/create-default-paths", tag = "model paths",
    request_body(content = CreateRequest, description = "`{}` for the defaults"),
    responses((status = 200, description = "Written", body = Created),
        (status = 409, description = "The file cannot be read as ComfyUI reads it; left as it is unless `force`", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "base_path is missing or relative", body = crate::error::ErrorBody),
        (status = 500, description = "The backup or the write failed; the old file is still there", body = crate::error::ErrorBody),
        (status = 503, description = "COMFY_DIR is not configured", body = crate::error::ErrorBody)))]
pub async fn create_default(
    State(state): State<AppState>,
    super::extract::Body(body): super::extract::Body,
) -> ApiResult<Json<Created>> {
    let file = file(&state)?;
    let request: CreateRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(
            "body",
            format!("a JSON object is expected ({{}} for the defaults): {e}"),
        )
    })?;
    let base = match request
        .base_path
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        Some(base) => PathBuf::from(base),
        None => state.config.models_dir.clone().ok_or_else(|| {
            ApiError::invalid(
                "base_path",
                "required: give a folder, or set MODELS_DIR on the server",
            )
        })?,
    };
    let created = blocking(move || {
        model_paths::create_default(&file, &base, request.create_folders, request.force)
    })
    .await?;
    created.map(Json).map_err(write_error)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// A backup written beside the file (`extra_model_paths.yaml.bak.YYYYMMDD-HHMMSS`).
    #[serde(alias = "backupPath")]
    backup_path: String,
}

/// Brings a backup of `extra_model_paths.yaml` back (the current file is backed up first).
#[utoipa::path(post, path = "/api/comfy/restore-paths", tag = "model paths", request_body = RestoreRequest,
    responses((status = 200, description = "Restored", body = Created),
        (status = 415, description = "The body is not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "Not a backup of this file", body = crate::error::ErrorBody),
        (status = 500, description = "The write failed; the old file is still there", body = crate::error::ErrorBody),
        (status = 503, description = "COMFY_DIR is not configured", body = crate::error::ErrorBody)))]
pub async fn restore(
    State(state): State<AppState>,
    super::extract::Body(body): super::extract::Body,
) -> ApiResult<Json<Created>> {
    let file = file(&state)?;
    let request: RestoreRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    let backup = PathBuf::from(request.backup_path);
    let restored = blocking(move || model_paths::restore(&file, &backup)).await?;
    restored.map(Json).map_err(write_error)
}

fn write_error(error: WriteError) -> ApiError {
    match error {
        WriteError::RelativeBase(_) => ApiError::invalid("base_path", error.to_string()),
        WriteError::NotABackup(_) => ApiError::invalid("backup_path", error.to_string()),
        WriteError::Unparsable(problems) => ApiError::ModelPathsUnparsable { problems },
        WriteError::Backup { .. } | WriteError::Write { .. } => {
            ApiError::PathsWrite(error.to_string())
        }
    }
}
