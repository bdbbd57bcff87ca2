//! `/api/v2/assets…`: upload (blake3 computed on the way in, dedup by content), the dedup fast path, metadata,
//! the bytes (with `Range`, by tower-http's file serving), delete.

use axum::Json;
use axum::extract::{Multipart, Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::keys::{self, Outcome, Prior};
use super::render;
use super::{V2Error, V2Result, base};
use crate::app::AppState;
use crate::assets::{Found, Placement, valid_hash};
use crate::codes::Code;

/// The largest upload, as ComfyUI's own default (`--max-upload-size`).
pub const MAX_UPLOAD: u64 = 100 * 1024 * 1024;
/// The other parts of an upload are short texts.
const MAX_FIELD: usize = 64 * 1024;
const MAX_TAGS: usize = 64;
/// The parts of one upload: the file, its four fields and its tags.
const MAX_PARTS: usize = MAX_TAGS + 8;
/// The whole multipart body: the file and what its other parts may hold.
pub const MAX_BODY: usize = MAX_UPLOAD as usize + MAX_PARTS * MAX_FIELD;
const SCOPE: &str = "v2.assets";

/// A multipart body that cannot be read as the upload's parts.
fn unprocessable(message: String) -> V2Error {
    V2Error::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        Code::InvalidRequest,
        message,
    )
}

/// A text part, at most [`MAX_FIELD`] bytes.
async fn small_text(field: axum::extract::multipart::Field<'_>) -> V2Result<String> {
    let name = field.name().unwrap_or_default().to_owned();
    let mut text = Vec::new();
    let mut chunks = field;
    while let Some(chunk) = chunks
        .chunk()
        .await
        .map_err(|e| unprocessable(format!("the part {name:?} cannot be read: {e}")))?
    {
        if text.len() + chunk.len() > MAX_FIELD {
            return Err(unprocessable(format!(
                "the part {name:?} is longer than {MAX_FIELD} bytes"
            )));
        }
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text)
        .map(|t| t.trim().to_owned())
        .map_err(|_| unprocessable(format!("the part {name:?} is not UTF-8 text")))
}

/// A placement path: relative, no `..`, no empty segment, no control character, at most 255 bytes.
fn check_path(path: &str) -> V2Result<()> {
    let fine = !path.is_empty()
        && path.len() <= 255
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..");
    if fine {
        Ok(())
    } else {
        Err(V2Error::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::InvalidRequest,
            format!("file_path {path:?} must be a relative path without '..' (e.g. photo.png)"),
        ))
    }
}

fn answer(status: StatusCode, asset: Value) -> Response {
    (status, Json(asset)).into_response()
}

/// `POST /api/v2/assets`: a multipart upload (`file`, `content_type`, `file_path`, optional `expected_hash` and
/// `tags`). 201: new bytes; 200: bytes already held, a new asset over them.
#[utoipa::path(post, path = "/api/v2/assets", tag = "v2",
    request_body(content_type = "multipart/form-data", content = Object, description = "`file` (the bytes), `content_type`, `file_path`, optional `expected_hash` (`blake3:<hex>`) and `tags` (repeated)"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and bytes: the first asset again")),
    responses((status = 201, description = "New bytes stored; the asset", body = Object),
        (status = 200, description = "The bytes were held already; an asset over them", body = Object),
        (status = 400, description = "`invalid_request`: a bad `Idempotency-Key`", body = crate::error::ErrorBody),
        (status = 409, description = "`hash_mismatch`: `expected_hash` is not the hash of the bytes; nothing kept. Or `idempotency_conflict`", body = crate::error::ErrorBody),
        (status = 413, description = "Over 100 MiB", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_request` (a part missing or wrong), `idempotency_key_reuse`", body = crate::error::ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> V2Result<Response> {
    let key = keys::key_of(&headers)?;
    let mut multipart = multipart.map_err(|e| {
        V2Error::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::InvalidRequest,
            format!("expected multipart/form-data: {}", e.body_text()),
        )
    })?;
    let assets = state.jobs.assets();
    let (mut received, mut part_type) = (None, None);
    let (mut content_type, mut file_path, mut expected, mut tags) = (None, None, None, Vec::new());
    for part in 0.. {
        let field =
            multipart
                .next_field()
                .await
                .map_err(|e| match crate::comfy::body::timed_out(&e) {
                    Some(after) => V2Error::body_timeout(after),
                    None if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                        crate::assets::AssetError::TooLarge {
                            limit: MAX_BODY as u64,
                        }
                        .into()
                    }
                    None => unprocessable(format!("the multipart body cannot be read: {e}")),
                })?;
        let Some(field) = field else { break };
        if part == MAX_PARTS {
            return Err(unprocessable(format!(
                "an upload has at most {MAX_PARTS} parts (file, content_type, file_path, expected_hash, tags)"
            )));
        }
        match field.name().unwrap_or_default() {
            "file" if received.is_some() => {
                return Err(unprocessable("one upload is one \"file\" part".into()));
            }
            "file" => {
                part_type = field.content_type().map(str::to_owned);
                let bytes = field;
                received = Some(assets.receive(Box::pin(bytes), MAX_UPLOAD).await?);
            }
            "content_type" => content_type = Some(small_text(field).await?),
            "file_path" => file_path = Some(small_text(field).await?),
            "expected_hash" => expected = Some(small_text(field).await?),
            "tags" if tags.len() < MAX_TAGS => tags.push(small_text(field).await?),
            _ => {
                small_text(field).await?;
            }
        }
    }
    let received = received.ok_or_else(|| unprocessable("the part \"file\" is missing".into()))?;
    let file_path = file_path
        .filter(|p| !p.is_empty())
        .ok_or_else(|| unprocessable("the part \"file_path\" is missing".into()))?;
    check_path(&file_path)?;
    let content_type = match content_type.filter(|t| !t.is_empty()).or(part_type) {
        None => mime::APPLICATION_OCTET_STREAM.to_string(),
        Some(given) => crate::assets::media_type(&given)
            .ok_or_else(|| {
                let shown: String = given.chars().take(64).collect();
                unprocessable(format!(
                    "content_type {shown:?} is not a media type (e.g. image/png)"
                ))
            })?
            .essence_str()
            .to_owned(),
    };
    if let Some(expected) = expected.filter(|e| !e.is_empty())
        && !expected.eq_ignore_ascii_case(&received.hash)
    {
        return Err(crate::assets::AssetError::HashMismatch {
            expected,
            computed: received.hash.clone(),
        }
        .into());
    }
    let fingerprint = format!("{}|{file_path}|{content_type}", received.hash);
    let placement = Placement {
        content_type,
        file_path: Some(file_path),
        tags,
    };
    let base = base(&headers);
    // Claim, keep and settle in a task of their own, as a job's submit does (see `keys`).
    let work_state = state.clone();
    keys::detached(&state, async move {
        keep_once(&work_state, key, fingerprint, received, placement, &base).await
    })
    .await
}

async fn keep_once(
    state: &AppState,
    key: Option<String>,
    fingerprint: String,
    received: crate::assets::Received,
    placement: Placement,
    base: &str,
) -> V2Result<Response> {
    let assets = state.jobs.assets();
    // Held (the claim renewed) until the key is settled.
    let _claimed = match &key {
        None => None,
        Some(key) => match keys::prior(state, SCOPE, key, &fingerprint).await? {
            Prior::New(claimed) => Some(claimed),
            Prior::Made { id, status } => {
                if let Some(Found::Uploaded(record)) = assets.find(&id).await? {
                    let created = status == StatusCode::CREATED;
                    let body = render::uploaded(&record, base, Some(created));
                    return Ok(keys::replayed(answer(status, body)));
                }
                // Deleted since: the key has nothing to answer with, and the upload is kept anew below.
                None
            }
            Prior::Refused { status, body } => return Ok(keys::refusal(status, body)),
        },
    };
    let minted = assets.mint(received, placement).await;
    let outcome = match &minted {
        Ok((record, new_blob)) => Outcome::Made {
            id: &record.id,
            status: created_or_ok(*new_blob),
        },
        Err(_) => Outcome::Nothing,
    };
    keys::settle(state, SCOPE, key.as_deref(), outcome).await;
    let (record, new_blob) = minted?;
    Ok(answer(
        created_or_ok(new_blob),
        render::uploaded(&record, base, Some(new_blob)),
    ))
}

fn created_or_ok(new: bool) -> StatusCode {
    if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// `POST /api/v2/assets/from-hash`: an asset over bytes already held, named by their hash; nothing is uploaded.
#[utoipa::path(post, path = "/api/v2/assets/from-hash", tag = "v2", request_body(content = Object, description = "`{hash, file_path?, tags?}`"),
    responses((status = 201, description = "A new asset over the bytes", body = Object),
        (status = 200, description = "An asset with these bytes and this path existed; it is answered", body = Object),
        (status = 404, description = "`blob_not_found`", body = crate::error::ErrorBody),
        (status = 400, description = "`invalid_request`", body = crate::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not JSON", body = crate::error::ErrorBody)))]
pub async fn from_hash(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::http::extract::Body(body): crate::http::extract::Body<{ 64 * 1024 }>,
) -> V2Result<Response> {
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| V2Error::invalid(format!("the body is not JSON: {e}")))?;
    let hash = body["hash"]
        .as_str()
        .ok_or_else(|| V2Error::invalid("\"hash\" (blake3:<hex>) is missing"))?;
    let file_path = match &body["file_path"] {
        Value::Null => None,
        Value::String(path) => {
            check_path(path)?;
            Some(path.clone())
        }
        _ => return Err(V2Error::invalid("\"file_path\" must be a string")),
    };
    let tags = match &body["tags"] {
        Value::Null => Vec::new(),
        Value::Array(tags) if tags.len() <= MAX_TAGS && tags.iter().all(Value::is_string) => tags
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => {
            return Err(V2Error::invalid(
                "\"tags\" must be a list of at most 64 strings",
            ));
        }
    };
    let minted = state
        .jobs
        .assets()
        .mint_from_hash(hash, file_path, tags)
        .await?;
    let Some((record, created)) = minted else {
        return Err(V2Error::new(
            StatusCode::NOT_FOUND,
            Code::BlobNotFound,
            "no bytes with this hash are held here",
        ));
    };
    Ok(answer(
        created_or_ok(created),
        render::uploaded(&record, &base(&headers), Some(false)),
    ))
}

/// `HEAD /api/v2/assets/by-hash/{hash}`: 200 when bytes with this hash are held, 404 when not.
#[utoipa::path(head, path = "/api/v2/assets/by-hash/{hash}", tag = "v2", params(("hash" = String, Path, description = "`blake3:<hex>`")),
    responses((status = 200, description = "Held: `from-hash` mints an asset over them"), (status = 404, description = "Not held")))]
pub async fn by_hash(
    State(state): State<AppState>,
    Path(hash): Path<String>,
) -> V2Result<StatusCode> {
    let held = valid_hash(&hash) && state.jobs.assets().held(&hash).await?.is_some();
    Ok(if held {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

async fn found(state: &AppState, id: &str) -> V2Result<Found> {
    state
        .jobs
        .assets()
        .find(id)
        .await?
        .ok_or_else(|| V2Error::not_found("asset", id))
}

/// `GET /api/v2/assets/{id}`: an uploaded asset, or a job's output.
#[utoipa::path(get, path = "/api/v2/assets/{id}", tag = "v2", params(("id" = String, Path, description = "The asset's id (an output's: `<job id>.<n>`)")),
    responses((status = 200, description = "The asset, with its content URL", body = Object),
        (status = 404, description = "`not_found`", body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> V2Result<Json<Value>> {
    let base = base(&headers);
    Ok(Json(match found(&state, &id).await? {
        Found::Uploaded(record) => render::uploaded(&record, &base, None),
        Found::Output { job, index, file } => render::output_asset(&job, index, &file, &base),
    }))
}

/// `DELETE /api/v2/assets/{id}`: an uploaded asset's record, and its bytes when no other asset has them.
#[utoipa::path(delete, path = "/api/v2/assets/{id}", tag = "v2", params(("id" = String, Path, description = "The asset's id")),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`: a job's output goes with its job", body = crate::error::ErrorBody),
        (status = 404, description = "`not_found`", body = crate::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not JSON", body = crate::error::ErrorBody)))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> V2Result<StatusCode> {
    match found(&state, &id).await? {
        Found::Output { .. } => Err(V2Error::new(
            StatusCode::FORBIDDEN,
            Code::Forbidden,
            "a job's output is kept with its job and not deleted alone",
        )),
        Found::Uploaded(_) => {
            if state.jobs.assets().delete(&id).await? {
                Ok(StatusCode::NO_CONTENT)
            } else {
                Err(V2Error::not_found("asset", &id))
            }
        }
    }
}

/// `GET /api/v2/assets/{id}/content`: the bytes; a `Range` gets 206 (or 416 when it cannot be met).
#[utoipa::path(get, path = "/api/v2/assets/{id}/content", tag = "v2",
    params(("id" = String, Path, description = "The asset's id"), ("Range" = Option<String>, Header, description = "e.g. `bytes=0-1023`")),
    responses((status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "`not_found`", body = crate::error::ErrorBody),
        (status = 416, description = "The range is outside the content")))]
pub async fn content(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> V2Result<Response> {
    match found(&state, &id).await? {
        Found::Output { job, file, .. } => {
            Ok(crate::http::jobs::serve_output(&state, &job, &file, request).await?)
        }
        Found::Uploaded(record) => {
            let name = record
                .file_path
                .clone()
                .unwrap_or_else(|| record.id.clone());
            let path = state
                .jobs
                .assets()
                .path_of(&Found::Uploaded(record.clone()));
            match path {
                Some(path) if tokio::fs::try_exists(&path).await.unwrap_or(false) => Ok(
                    crate::http::files::serve(&path, &record.content_type, &name, request).await?,
                ),
                _ => Err(V2Error::not_found("asset content", &id)),
            }
        }
    }
}
