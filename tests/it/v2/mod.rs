//! The Comfy API v2 on Orchestrator's port: assets, jobs, events, the money rules, failover; against the real
//! server, its store and the fake ComfyUI. The official SDK drives the same server in `sdk.rs`.

mod assets;
mod jobs;
mod sdk;

use serde_json::{Value, json};

use crate::support::TestApp;

/// A multipart upload as the SDK sends it: the text parts, then the file.
pub fn multipart(bytes: &[u8], file_path: &str, fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "orchestrator-test-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_path}\"\r\n\
             Content-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Uploads `bytes` as `file_path`; answers the status and the body.
pub async fn upload(
    app: &TestApp,
    bytes: &[u8],
    file_path: &str,
    fields: &[(&str, &str)],
) -> (u16, Value) {
    let mut all = vec![("content_type", "image/png"), ("file_path", file_path)];
    all.extend_from_slice(fields);
    let (content_type, body) = multipart(bytes, file_path, &all);
    let response = app
        .http
        .post(app.url("/api/v2/assets"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST /api/v2/jobs`; answers the status, the `Idempotency-Replayed` header and the body.
pub async fn submit(
    app: &TestApp,
    body: &Value,
    key: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = app.http.post(app.url("/api/v2/jobs")).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotency-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        replayed,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Polls `GET /api/v2/jobs/{id}` until its status is `status` (30 s at most).
pub async fn wait_v2(app: &TestApp, id: &str, status: &str) -> Value {
    let path = format!("/api/v2/jobs/{id}");
    crate::support::wait_until(
        std::time::Duration::from_secs(30),
        &format!("v2 job {id} is {status}"),
        || async { app.get_json(&path).await["status"] == status },
    )
    .await;
    app.get_json(&path).await
}

/// A graph that loads an input image and saves it: `LoadImage` takes the asset reference.
pub fn loads(asset: &Value) -> Value {
    json!({
        "10": {"class_type": "LoadImage", "inputs": {"image": asset}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "v2", "images": ["10", 0]}},
    })
}

/// The `core/ASSET` reference to an uploaded asset.
pub fn reference(asset: &Value) -> Value {
    json!({"__type": "core/ASSET", "info": {"id": asset["id"], "hash": asset["hash"], "file_path": asset["file_path"]}})
}

/// A small PNG's bytes (any bytes do: ComfyUI's fake does not decode its inputs).
pub fn image(seed: u8) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..4096u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    bytes
}
