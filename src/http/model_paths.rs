//! `/api/comfy/validate-paths`, `/api/comfy/create-default-paths` and `/api/comfy/restore-paths`: thin handlers
//! over [`crate::comfy::model_paths`] (file work runs on the blocking pool).

use std::path::PathBuf;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;

use crate::AppState;
use crate::comfy::model_paths::{self, Created, Report, WriteError};
use crate::error::{ApiError, ApiResult};

fn file(state: &AppState) -> ApiResult<PathBuf> {
    state
        .config
        .service
        .comfy_dir
        .as_deref()
        .map(model_paths::file_in)
        .ok_or(ApiError::NotConfigured {
            code: "comfy_dir_not_configured",
            what: "ComfyUI's folder (COMFY_DIR)",
        })
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)
}

pub async fn validate(State(state): State<AppState>) -> ApiResult<Json<Report>> {
    let file = file(&state)?;
    Ok(Json(blocking(move || model_paths::check(&file)).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    #[serde(alias = "basePath")]
    base_path: Option<String>,
    #[serde(default, alias = "createFolders")]
    create_folders: bool,
    /// Replace a file that cannot be read as ComfyUI reads it (after a backup).
    #[serde(default)]
    force: bool,
}

pub async fn create_default(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<Created>> {
    let file = file(&state)?;
    let request: CreateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CreateRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", e.to_string()))?
    };
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    #[serde(alias = "backupPath")]
    backup_path: String,
}

pub async fn restore(State(state): State<AppState>, body: Bytes) -> ApiResult<Json<Created>> {
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
