//! ComfyUI's frontend files (`--front-end-root`) and the routes the frontend calls at start-up.

use super::*;

// --- The frontend's files and the routes it calls at start-up -------------------------------------------------

/// The Content-Type aiohttp's `FileResponse` sends for a file (Python's `mimetypes`), by extension.
pub(super) fn content_type_of(path: &FsPath) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match extension.as_str() {
        "html" | "htm" => "text/html",
        "js" | "mjs" => "text/javascript",
        "css" => "text/css",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/vnd.microsoft.icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        "txt" => "text/plain",
        "wasm" => "application/wasm",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "glb" => "model/gltf-binary",
        _ => "application/octet-stream",
    }
}

/// aiohttp's `web.Response(status=200)`: no body, and the Content-Type aiohttp gives a body it was not told the
/// type of.
pub(super) fn empty_ok() -> Response {
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::empty(),
    )
        .into_response()
}

pub(super) fn text_status(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

pub(super) fn front_end_root(shared: &Shared) -> Option<PathBuf> {
    shared.front_end_root.lock().unwrap().clone()
}

/// A file of the frontend's folder as aiohttp's `FileResponse` answers it.
pub(super) async fn send_file(
    path: &FsPath,
    extra: &[(header::HeaderName, &'static str)],
) -> Response {
    match tokio::fs::read(path).await {
        Ok(body) => {
            let mut response = (
                [(header::CONTENT_TYPE, content_type_of(path))],
                Bytes::from(body),
            )
                .into_response();
            for (name, value) in extra {
                response
                    .headers_mut()
                    .insert(name.clone(), header::HeaderValue::from_static(value));
            }
            response
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /`: the frontend's `index.html`, never cached (ComfyUI's `get_root`).
pub(super) async fn index_html(State(shared): State<Arc<Shared>>) -> Response {
    let Some(root) = front_end_root(&shared) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    send_file(
        &root.join("index.html"),
        &[
            (header::CACHE_CONTROL, "no-cache"),
            (header::PRAGMA, "no-cache"),
            (header::EXPIRES, "0"),
        ],
    )
    .await
}

/// Every path no route took: a file of the frontend's folder (aiohttp's `web.static('/', web_root)`), never under
/// `/api`; 403 for a folder, 404 for a missing file, a name that leaves the folder (`..`, a link pointing out) or
/// when no frontend is set.
pub(super) async fn static_file(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: http::Uri,
) -> Response {
    let path = uri.path();
    let Some(root) = front_end_root(&shared) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !matches!(method, Method::GET | Method::HEAD) || path == "/api" || path.starts_with("/api/")
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Ok(name) = percent_encoding::percent_decode_str(path).decode_utf8() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let name = name.trim_start_matches('/').trim_end_matches('/');
    let Some(file) = orchestrator::fs_safe::resolve_within(&root, name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if file.is_dir() {
        return StatusCode::FORBIDDEN.into_response();
    }
    send_file(&file, &[]).await
}

/// `/extensions`: the URL paths of the frontend's `extensions/**/*.js` (none without a frontend; no custom nodes).
pub(super) async fn extensions(State(shared): State<Arc<Shared>>) -> Response {
    let mut found = Vec::new();
    if let Some(root) = front_end_root(&shared) {
        let mut folders = vec![root.join("extensions")];
        while let Some(folder) = folders.pop() {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                // Python's glob skips hidden names.
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|e| e == "js")
                    && let Ok(relative) = path.strip_prefix(&root)
                {
                    let parts: Vec<String> = relative
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    found.push(format!("/{}", parts.join("/")));
                }
            }
        }
    }
    found.sort();
    axum::Json(found).into_response()
}

/// `GET /users` in single-user mode: settings live on the server, and the default user's folder exists (this
/// fake is a ComfyUI that was opened before).
pub(super) async fn users() -> Response {
    axum::Json(json!({"storage": "server", "migrated": true})).into_response()
}

pub(super) const SETTINGS_FILE: &str = "comfy.settings.json";

/// The default user's settings (`comfy.settings.json`), `{}` when there are none or the file is not JSON.
pub(super) fn read_settings(shared: &Shared) -> Map<String, Value> {
    shared
        .user_files
        .lock()
        .unwrap()
        .get(SETTINGS_FILE)
        .and_then(|file| serde_json::from_slice::<Value>(&file.body).ok())
        .and_then(|value| match value {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default()
}

/// Writes the settings as ComfyUI does (`json.dumps(settings, indent=4)`).
pub(super) fn write_settings(shared: &Shared, settings: &Map<String, Value>) {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(settings, &mut serializer).expect("a JSON map serialises");
    write_user_file(shared, SETTINGS_FILE, Bytes::from(out));
}

pub(super) fn write_user_file(shared: &Shared, path: &str, body: Bytes) -> UserFile {
    let now = now_ms();
    let mut files = shared.user_files.lock().unwrap();
    let created = files.get(path).map_or(now, |old| old.created);
    let file = UserFile {
        body,
        modified: now,
        created,
    };
    files.insert(path.to_owned(), file.clone());
    file
}

pub(super) async fn get_settings(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(Value::Object(read_settings(&shared))).into_response()
}

pub(super) async fn get_setting(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    axum::Json(read_settings(&shared).remove(&id).unwrap_or(Value::Null)).into_response()
}

/// `POST /settings`: the body's keys merged over the stored ones; a body that is not a JSON object is a 500.
pub(super) async fn post_settings(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(Value::Object(new)) = serde_json::from_slice::<Value>(&body) else {
        return server_error();
    };
    let mut settings = read_settings(&shared);
    settings.extend(new);
    write_settings(&shared, &settings);
    empty_ok()
}

pub(super) async fn post_setting(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return server_error();
    };
    let mut settings = read_settings(&shared);
    settings.insert(id, value);
    write_settings(&shared, &settings);
    empty_ok()
}

/// A path inside the user's folder as ComfyUI's `get_request_user_filepath` reads it (`%`-decoded once more,
/// then joined and normalised): relative, `""` for the folder itself; `None` when it leaves the folder.
pub(super) fn user_path(raw: &str) -> Option<String> {
    let decoded = match raw.contains('%') {
        true => percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned(),
        false => raw.to_owned(),
    };
    if decoded.starts_with('/') || decoded.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// Whether `dir` is a folder of the user's folder: the folder itself, or a parent of a file in it.
pub(super) fn user_dir_exists(files: &BTreeMap<String, UserFile>, dir: &str) -> bool {
    dir.is_empty()
        || files
            .keys()
            .any(|path| path.starts_with(&format!("{dir}/")))
}

pub(super) fn file_info(path: &str, file: &UserFile) -> Value {
    json!({"path": path, "size": file.body.len(), "modified": file.modified, "created": file.created})
}

/// `GET /userdata?dir=D[&recurse=true][&full_info=true][&split=true]`: the files in the user's folder `D`;
/// 400 without `dir`, 403 outside the user's folder, 404 for a folder that does not exist.
pub(super) async fn list_userdata(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let directory = query.get("dir").map(String::as_str).unwrap_or_default();
    if directory.is_empty() {
        return text_status(StatusCode::BAD_REQUEST, "Directory not provided");
    }
    let Some(dir) = user_path(directory) else {
        return text_status(StatusCode::FORBIDDEN, "Invalid directory");
    };
    let flag = |key: &str| {
        query
            .get(key)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    };
    let (recurse, full_info, split) = (flag("recurse"), flag("full_info"), flag("split"));
    let files = shared.user_files.lock().unwrap();
    if !user_dir_exists(&files, &dir) {
        return text_status(StatusCode::NOT_FOUND, "Directory not found");
    }
    let prefix = match dir.is_empty() {
        true => String::new(),
        false => format!("{dir}/"),
    };
    let listed: Vec<Value> = files
        .iter()
        .filter_map(|(path, file)| {
            let relative = path.strip_prefix(&prefix)?;
            (recurse || !relative.contains('/')).then_some((relative, file))
        })
        .map(|(relative, file)| match (full_info, split) {
            (true, _) => file_info(relative, file),
            (false, true) => {
                let mut parts = vec![json!(relative)];
                parts.extend(relative.split('/').map(|p| json!(p)));
                Value::Array(parts)
            }
            (false, false) => json!(relative),
        })
        .collect();
    axum::Json(listed).into_response()
}

/// `GET /userdata/{file}` (`file` with its `/` as `%2F`): the file, 404 when it does not exist.
pub(super) async fn get_userdata(
    State(shared): State<Arc<Shared>>,
    Path(file): Path<String>,
) -> Response {
    let Some(path) = user_path(&file).filter(|p| !p.is_empty()) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    match shared.user_files.lock().unwrap().get(&path) {
        Some(found) => (
            [(header::CONTENT_TYPE, content_type_of(FsPath::new(&path)))],
            found.body.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `POST /userdata/{file}[?overwrite=false][&full_info=true]`: writes the body; 409 when the file exists and
/// `overwrite=false`; answers the file's path, or its information with `full_info=true`.
pub(super) async fn post_userdata(
    State(shared): State<Arc<Shared>>,
    Path(file): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(path) = user_path(&file).filter(|p| !p.is_empty()) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let overwrite = query.get("overwrite").map(String::as_str) != Some("false");
    let full_info = query
        .get("full_info")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !overwrite && shared.user_files.lock().unwrap().contains_key(&path) {
        return text_status(StatusCode::CONFLICT, "File already exists");
    }
    let written = write_user_file(&shared, &path, body);
    match full_info {
        true => axum::Json(file_info(&path, &written)).into_response(),
        false => axum::Json(json!(path)).into_response(),
    }
}

pub(super) async fn delete_userdata(
    State(shared): State<Arc<Shared>>,
    Path(file): Path<String>,
) -> Response {
    let Some(path) = user_path(&file).filter(|p| !p.is_empty()) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    match shared.user_files.lock().unwrap().remove(&path) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Where this fake's ComfyUI lives, for the folder lists of `/experiment/models`.
pub(super) const MODELS_DIR: &str = "/opt/ComfyUI/models";

/// A model folder's search paths as `folder_paths` sets them up (legacy folders second).
pub(super) fn model_folder_paths(folder: &str) -> Vec<String> {
    let names: &[&str] = match folder {
        "text_encoders" => &["text_encoders", "clip"],
        "diffusion_models" => &["unet", "diffusion_models"],
        "controlnet" => &["controlnet", "t2i_adapter"],
        "custom_nodes" => return vec!["/opt/ComfyUI/custom_nodes".to_owned()],
        other => return vec![format!("{MODELS_DIR}/{other}")],
    };
    names.iter().map(|n| format!("{MODELS_DIR}/{n}")).collect()
}

pub(super) fn model_folders() -> Vec<String> {
    serde_json::from_str(fixture!("models.json")).expect("recorded")
}

/// `GET /experiment/models`: every model folder but `configs` and `custom_nodes`, with its search paths.
pub(super) async fn experiment_models() -> Response {
    let folders: Vec<Value> = model_folders()
        .into_iter()
        .filter(|f| f != "configs" && f != "custom_nodes")
        .map(|name| json!({"name": name, "folders": model_folder_paths(&name)}))
        .collect();
    axum::Json(folders).into_response()
}

/// `GET /experiment/models/{folder}`: the installed files as `{name, pathIndex}`; 404 for an unknown folder.
pub(super) async fn experiment_models_in(
    State(shared): State<Arc<Shared>>,
    Path(folder): Path<String>,
) -> Response {
    if !model_folders().contains(&folder) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let files: Vec<Value> = shared
        .models
        .get(&folder)
        .into_iter()
        .flatten()
        .map(|name| json!({"name": name, "pathIndex": 0}))
        .collect();
    axum::Json(files).into_response()
}

/// The recorded `/system_stats`, its `argv` with the `--comfy-api-base` this fake was given, as ComfyUI shows the
/// command line it was started with.
pub(super) fn system_stats(shared: &Shared) -> Response {
    let recorded = fixture!("system_stats.json");
    let Some(base) = shared.comfy_api_base.lock().unwrap().clone() else {
        return raw_json(recorded);
    };
    let mut stats: Value = serde_json::from_str(recorded).unwrap_or_default();
    if let Some(argv) = stats["system"]["argv"].as_array_mut() {
        argv.extend([json!("--comfy-api-base"), json!(base)]);
    }
    axum::Json(stats).into_response()
}
