//! `/view` and `/upload/image`: the files a run wrote and the inputs a client uploaded.

use super::*;

pub(super) async fn view(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(filename) = query.get("filename") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let kind = query.get("type").map(String::as_str).unwrap_or("output");
    if !matches!(kind, "output" | "input" | "temp")
        || filename.starts_with('/')
        || filename.contains("..")
    {
        return StatusCode::BAD_REQUEST.into_response();
    }
    if query
        .get("subfolder")
        .is_some_and(|s| s.contains("..") || s.starts_with('/'))
    {
        return StatusCode::FORBIDDEN.into_response();
    }
    match filename.as_str() {
        "large.bin" => {
            let size = query
                .get("size")
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(1 << 30);
            generated_body(size)
        }
        "stall.bin" => {
            let first = futures_util::stream::once(async {
                Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; GENERATED_CHUNK]))
            });
            let stream = first.chain(futures_util::stream::pending());
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                Body::from_stream(stream),
            )
                .into_response()
        }
        name => match shared.files.lock().unwrap().get(&file_key(
            query.get("subfolder").map(String::as_str).unwrap_or(""),
            name,
        )) {
            Some(bytes) => (
                [
                    // aiohttp's FileResponse: the type guessed from the name.
                    (
                        header::CONTENT_TYPE,
                        content_type_of(FsPath::new(name)).to_owned(),
                    ),
                    (header::CONTENT_DISPOSITION, format!("filename=\"{name}\"")),
                    (header::ACCEPT_RANGES, "bytes".to_owned()),
                ],
                bytes.clone(),
            )
                .into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
    }
}

/// `size` bytes of a fixed pattern, streamed in 64 KiB chunks that all share one allocation.
pub(super) fn generated_body(size: u64) -> Response {
    static CHUNK: OnceLock<Bytes> = OnceLock::new();
    let chunk = CHUNK
        .get_or_init(|| {
            Bytes::from(
                (0..GENERATED_CHUNK)
                    .map(|i| (i % 251) as u8)
                    .collect::<Vec<u8>>(),
            )
        })
        .clone();
    let stream = futures_util::stream::unfold(size, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk.len() as u64) as usize;
            Some((Ok::<_, std::io::Error>(chunk.slice(..n)), left - n as u64))
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

pub(super) async fn upload_image(
    State(shared): State<Arc<Shared>>,
    mut form: Multipart,
) -> Response {
    let (mut name, mut size, mut subfolder, mut kind) =
        (None, 0u64, String::new(), "input".to_owned());
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        };
        match field.name() {
            Some("image") => {
                let Some(file_name) = field.file_name().map(str::to_owned) else {
                    return StatusCode::BAD_REQUEST.into_response();
                };
                let mut field = field;
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            size += chunk.len() as u64;
                            if size > MAX_UPLOAD_BYTES {
                                return StatusCode::PAYLOAD_TOO_LARGE.into_response();
                            }
                        }
                        Ok(None) => break,
                        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
                    }
                }
                name = Some(file_name);
            }
            Some("subfolder") => subfolder = field.text().await.unwrap_or_default(),
            Some("type") => kind = field.text().await.unwrap_or_default(),
            _ => {}
        }
    }
    let Some(name) = name else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if subfolder.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    if !matches!(kind.as_str(), "input" | "temp" | "output") {
        // The real server fails with an UnboundLocalError here.
        return server_error();
    }
    shared.uploads.lock().unwrap().insert(name.clone(), size);
    axum::Json(json!({ "name": name, "subfolder": subfolder, "type": kind })).into_response()
}

pub(super) async fn websocket(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let sid = query
        .get("clientId")
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    upgrade.on_upgrade(move |socket| serve_socket(shared, socket, sid))
}

/// `/internal/logs`: the whole log as one JSON string, as ComfyUI's `get_logs` joins its entries.
pub(super) async fn internal_logs(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.log.lock().unwrap().clone()).into_response()
}
