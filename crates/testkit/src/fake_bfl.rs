//! A local stand-in for Black Forest Labs' API that counts every request it gets, following `shared/CONTRACTS.md`
//! §2: `x-key` auth, `POST /v1/<model>` → `{id, polling_url}`, `GET /v1/get_result?id=` with BFL's status words
//! (spaces included), a signed-looking delivery URL on another path, `GET /v1/credits`, and FastAPI-style 422s.
//!
//! Switches make it refuse (402, 429), answer slowly, or drop the connection after reading a submit, the case
//! where the caller cannot know whether the task started.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;

/// How the next submits are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitMode {
    Accept,
    /// Answer with this HTTP status and a FastAPI-style body.
    Refuse(u16),
    /// Read the request, then close the connection without an answer.
    DropConnection,
    /// Accept after this long.
    Slow(Duration),
}

/// How a task ends once its pending polls are over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    Ready,
    RequestModerated,
    ContentModerated,
    Error,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

struct Shared {
    key: String,
    addr: SocketAddr,
    submits: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    mode: Mutex<SubmitMode>,
    end: Mutex<TaskEnd>,
    pending_polls: AtomicUsize,
    /// Task id → polls so far.
    tasks: Mutex<HashMap<String, usize>>,
    /// Times the key was sent where it must not go (the delivery URL).
    key_leaks: AtomicUsize,
    image: Vec<u8>,
}

pub struct FakeBfl {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<Notify>,
}

/// Closes the connection a request came on.
#[derive(Clone)]
struct Hangup(Arc<Notify>);

impl FakeBfl {
    /// Serves on a random loopback port, accepting `key`.
    pub async fn start(key: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let shared = Arc::new(Shared {
            key: key.to_owned(),
            addr,
            submits: AtomicUsize::new(0),
            requests: Mutex::default(),
            mode: Mutex::new(SubmitMode::Accept),
            end: Mutex::new(TaskEnd::Ready),
            pending_polls: AtomicUsize::new(1),
            tasks: Mutex::default(),
            key_leaks: AtomicUsize::new(0),
            image: tiny_jpeg(),
        });
        let router = Router::new()
            .route("/v1/credits", get(credits))
            .route("/v1/get_result", get(get_result))
            .route("/v1/{model}", post(submit))
            .route("/delivery/{file}", get(delivery))
            .with_state(shared.clone());
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let recorder = shared.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    () = stopped.notified() => return,
                };
                let router = router.clone();
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    let hangup = Arc::new(Notify::new());
                    let service = hyper::service::service_fn({
                        let hangup = hangup.clone();
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let router = router.clone();
                            let recorder = recorder.clone();
                            let hangup = hangup.clone();
                            async move {
                                let request = record(&recorder, request).await;
                                let mut request = request;
                                request.extensions_mut().insert(Hangup(hangup));
                                router.oneshot(request).await
                            }
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        () = hangup.notified() => {}
                    }
                });
            }
        });
        Self { addr, shared, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Submits received (`POST /v1/<model>`), whatever their answer.
    pub fn submits(&self) -> usize {
        self.shared.submits.load(Ordering::SeqCst)
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn set_submit_mode(&self, mode: SubmitMode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn set_task_end(&self, end: TaskEnd) {
        *self.shared.end.lock().unwrap() = end;
    }

    /// How many polls answer `Pending` before the task ends.
    pub fn set_pending_polls(&self, polls: usize) {
        self.shared.pending_polls.store(polls, Ordering::SeqCst);
    }

    pub fn key_leaks(&self) -> usize {
        self.shared.key_leaks.load(Ordering::SeqCst)
    }

    /// The bytes of the image every finished task delivers.
    pub fn image(&self) -> &[u8] {
        &self.shared.image
    }
}

impl Drop for FakeBfl {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

/// Records the request (its body read whole) and hands it on.
async fn record(shared: &Shared, request: hyper::Request<hyper::body::Incoming>) -> Request {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    shared.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    });
    Request::from_parts(parts, Body::from(bytes))
}

fn authorised(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    match headers.get("x-key").and_then(|v| v.to_str().ok()) {
        Some(key) if key == shared.key => Ok(()),
        _ => Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                Json(json!({ "detail": "Not authenticated" })),
            )
                .into_response(),
        )),
    }
}

const MODELS: [&str; 11] = [
    "flux-pro-1.1",
    "flux-pro-1.1-ultra",
    "flux-dev",
    "flux-pro",
    "flux-kontext-pro",
    "flux-kontext-max",
    "flux-2-klein-4b",
    "flux-2-klein-9b",
    "flux-2-pro",
    "flux-2-max",
    "flux-2-flex",
];

/// FLUX.2's credits by megapixel: (first, each further), as BFL bills them (the skills repository's table).
fn flux2_rate(model: &str) -> Option<(f64, f64)> {
    Some(match model {
        "flux-2-klein-4b" => (1.4, 0.1),
        "flux-2-klein-9b" => (1.5, 0.2),
        "flux-2-pro" => (3.0, 1.5),
        "flux-2-max" => (7.0, 3.0),
        "flux-2-flex" => (5.0, 5.0),
        _ => return None,
    })
}

async fn submit(
    State(shared): State<Arc<Shared>>,
    Path(model): Path<String>,
    Extension(hangup): Extension<Hangup>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> Response {
    shared.submits.fetch_add(1, Ordering::SeqCst);
    if let Err(refusal) = authorised(&shared, &headers) {
        return *refusal;
    }
    if !MODELS.contains(&model.as_str()) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "detail": "Not Found" })),
        )
            .into_response();
    }
    let mode = *shared.mode.lock().unwrap();
    match mode {
        SubmitMode::Refuse(status) => {
            let detail = match status {
                402 => "Insufficient credits",
                429 => "You have exceeded the number of active tasks",
                _ => "refused",
            };
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, Json(json!({ "detail": detail }))).into_response();
        }
        SubmitMode::DropConnection => {
            hangup.0.notify_one();
            std::future::pending::<()>().await;
        }
        SubmitMode::Slow(delay) => tokio::time::sleep(delay).await,
        SubmitMode::Accept => {}
    }
    let mut errors = Vec::new();
    let rate = flux2_rate(&model);
    for field in ["width", "height"] {
        let fits = |n: u64| match rate {
            Some(_) => n >= 64 && n.is_multiple_of(16),
            None => (256..=1440).contains(&n) && n.is_multiple_of(32),
        };
        if let Some(n) = payload[field].as_u64()
            && !fits(n)
        {
            errors.push(json!({ "loc": ["body", field], "msg": "not a size this model takes", "type": "value_error" }));
        }
    }
    if payload["prompt"].as_str().is_none_or(str::is_empty) {
        errors
            .push(json!({ "loc": ["body", "prompt"], "msg": "field required", "type": "missing" }));
    }
    if !errors.is_empty() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "detail": errors })),
        )
            .into_response();
    }
    let id = uuid::Uuid::new_v4().to_string();
    shared.tasks.lock().unwrap().insert(id.clone(), 0);
    // FLUX.2 answers with its cost; the fake's input images are small, a megapixel each.
    let (cost, input_mp, output_mp) = match rate {
        Some((first, each)) => {
            let pixels = payload["width"].as_f64().unwrap_or(1024.0)
                * payload["height"].as_f64().unwrap_or(1024.0);
            let output = pixels / (1024.0 * 1024.0);
            let inputs = payload
                .as_object()
                .map(|p| p.keys().filter(|k| k.starts_with("input_image")).count())
                .unwrap_or(0) as f64;
            let cost = first + (output.ceil().max(1.0) - 1.0 + inputs) * each;
            (json!(cost), json!(inputs), json!(output))
        }
        None => (Value::Null, Value::Null, Value::Null),
    };
    Json(json!({
        "id": id,
        "polling_url": format!("http://{}/v1/get_result?id={id}", shared.addr),
        "cost": cost,
        "input_mp": input_mp,
        "output_mp": output_mp,
    }))
    .into_response()
}

async fn get_result(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(refusal) = authorised(&shared, &headers) {
        return *refusal;
    }
    let id = query.get("id").cloned().unwrap_or_default();
    let polls = {
        let mut tasks = shared.tasks.lock().unwrap();
        match tasks.get_mut(&id) {
            Some(polls) => {
                *polls += 1;
                *polls
            }
            None => return Json(json!({ "id": id, "status": "Task not found" })).into_response(),
        }
    };
    let pending = shared.pending_polls.load(Ordering::SeqCst);
    if polls <= pending {
        let progress = polls as f64 / pending.saturating_add(1) as f64;
        return Json(
            json!({ "id": id, "status": "Pending", "result": null, "progress": progress }),
        )
        .into_response();
    }
    let end = *shared.end.lock().unwrap();
    let body = match end {
        TaskEnd::Ready => json!({
            "id": id, "status": "Ready", "progress": null,
            "result": { "sample": format!("http://{}/delivery/{id}.jpeg?se=2026-11-25T00%3A10%3A00Z&sig=fake", shared.addr),
                        "prompt": "recorded", "seed": 42 },
        }),
        TaskEnd::RequestModerated => {
            json!({ "id": id, "status": "Request Moderated", "result": null, "details": { "Moderation Reasons": ["Derivative Works Filter"] } })
        }
        TaskEnd::ContentModerated => {
            json!({ "id": id, "status": "Content Moderated", "result": null, "details": { "Moderation Reasons": ["NSFW"] } })
        }
        TaskEnd::Error => {
            json!({ "id": id, "status": "Error", "result": null, "details": "Internal generation error" })
        }
    };
    Json(body).into_response()
}

async fn delivery(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(_file): Path<String>,
) -> Response {
    if headers.contains_key("x-key") {
        shared.key_leaks.fetch_add(1, Ordering::SeqCst);
    }
    (
        [(axum::http::header::CONTENT_TYPE, "image/jpeg")],
        shared.image.clone(),
    )
        .into_response()
}

async fn credits(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(refusal) = authorised(&shared, &headers) {
        return *refusal;
    }
    Json(json!({ "credits": 1234.5 })).into_response()
}

/// A few bytes that image viewers take for a JPEG (start and end markers around a comment).
fn tiny_jpeg() -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x10];
    bytes.extend_from_slice(b"fake bfl image");
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    bytes
}
