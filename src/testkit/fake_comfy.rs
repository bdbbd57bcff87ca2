//! A fake ComfyUI 0.3.64 built from the responses and WebSocket transcripts recorded from a real one
//! (`tests/fixtures/comfyui`, copied from the team's shared fixtures).
//!
//! It behaves like the real server where a client can tell: every route also under `/api`; the host/origin check
//! that answers 403 with an empty body; `/prompt` validated against the recorded node definitions with ComfyUI's
//! error shapes; a queue worked one prompt at a time whose run replays a recorded transcript, with ComfyUI's rules
//! for which socket gets which event; history written after `execution_success` and before the final
//! `executing {node: null}`; `/view` and `/upload/image` with their status codes.
//!
//! Switches for failure tests: [`FakeComfy::set_hang`] (accept connections, never answer), [`FakeComfy::stop`]
//! (connections refused), `/view?filename=large.bin&size=N` (a generated body of N bytes, streamed) and
//! `/view?filename=stall.bin` (64 KiB, then silence). The same switches are reachable over HTTP at `/__fake/*` for
//! the `fake-comfyui` binary. [`FakeComfy::open_connections`] counts the TCP connections open to it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State, WebSocketUpgrade};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/comfyui/",
            $name
        ))
    };
}

/// ComfyUI's default `--max-upload-size`, applied to every body.
pub const MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;
const GENERATED_CHUNK: usize = 64 * 1024;
const KEPT_REQUESTS: usize = 1000;
/// A 1×1 PNG: what a finished run's SaveImage "wrote".
pub const OUTPUT_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
    0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0x00,
    0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
    0x44, 0xae, 0x42, 0x60, 0x82,
];

fn recorded_object_info() -> &'static Value {
    static INFO: OnceLock<Value> = OnceLock::new();
    INFO.get_or_init(|| {
        serde_json::from_str(fixture!("object_info.json")).expect("recorded object_info parses")
    })
}

fn transcript(ksampler: bool) -> &'static Vec<Value> {
    static PLAIN: OnceLock<Vec<Value>> = OnceLock::new();
    static SAMPLER: OnceLock<Vec<Value>> = OnceLock::new();
    let (cell, raw) = match ksampler {
        false => (&PLAIN, fixture!("ws_transcript_no_model_workflow.json")),
        true => (&SAMPLER, fixture!("ws_transcript_ksampler.json")),
    };
    cell.get_or_init(|| serde_json::from_str(raw).expect("recorded transcript parses"))
}

/// The recorded WebSocket run of `workflow_no_model.json`, for tests that compare what they receive with it.
pub fn recorded_no_model_transcript() -> &'static Vec<Value> {
    transcript(false)
}

/// `workflow_no_model.json`: EmptyImage → ImageInvert → SaveImage, runs without model files.
pub fn no_model_workflow() -> Value {
    serde_json::from_str(fixture!("workflow_no_model.json")).expect("recorded workflow parses")
}

/// `workflow_ksampler.json`: the default text-to-image graph on `tiny-sd15.safetensors`.
pub fn ksampler_workflow() -> Value {
    serde_json::from_str(fixture!("workflow_ksampler.json")).expect("recorded workflow parses")
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

#[derive(Debug, Clone)]
struct QueueItem {
    number: u64,
    prompt_id: String,
    prompt: Value,
    extra_data: Value,
    outputs: Vec<String>,
}

impl QueueItem {
    fn to_json(&self) -> Value {
        json!([
            self.number,
            self.prompt_id,
            self.prompt,
            self.extra_data,
            self.outputs
        ])
    }
    fn client_id(&self) -> Option<String> {
        self.extra_data
            .get("client_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

#[derive(Default)]
struct Queue {
    running: Option<QueueItem>,
    pending: VecDeque<QueueItem>,
}

struct Shared {
    /// Whether `/__fake/control {"exit": code}` may end the process (only the stand-alone binary allows it).
    exit_allowed: AtomicBool,
    /// The recorded node definitions with this instance's installed models in the loaders' lists.
    object_info: Value,
    /// Installed model files by folder (the recording had none).
    models: HashMap<String, Vec<String>>,
    hang: AtomicBool,
    /// While on, runs go on but no WebSocket message is sent (a socket that stays open and goes quiet).
    silent: AtomicBool,
    step_delay_ms: AtomicU64,
    /// When non-zero, a sampler's recorded progress is replaced by this many steps, one a millisecond.
    progress_steps: AtomicU64,
    number: AtomicU64,
    /// SaveImage's counters, per subfolder and file name stem.
    file_counters: Mutex<HashMap<(String, String), u64>>,
    /// Set by `/interrupt`; the worker checks it between events.
    interrupt: AtomicBool,
    requests: Mutex<VecDeque<RecordedRequest>>,
    request_count: AtomicU64,
    /// TCP connections open right now (counted by the listener, so idle pooled ones too).
    open_connections: Arc<AtomicUsize>,
    sockets: Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>,
    queue: Mutex<Queue>,
    history: Mutex<Map<String, Value>>,
    files: Mutex<HashMap<String, Bytes>>,
    uploads: Mutex<HashMap<String, u64>>,
    work: mpsc::UnboundedSender<()>,
    /// Where paid API nodes call (ComfyUI's `--comfy-api-base`).
    comfy_api_base: Mutex<Option<String>>,
    /// The body of every `POST /prompt` that was queued, as received.
    prompts: Mutex<Vec<Value>>,
}

/// A running fake ComfyUI on a loopback port.
pub struct FakeComfy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl FakeComfy {
    /// Starts on a random loopback port, with no model files installed (as recorded).
    pub async fn start() -> Self {
        Self::start_with_models(&[]).await
    }

    /// Starts with model files installed: `(folder, file name)` pairs such as `("checkpoints", "x.safetensors")`.
    pub async fn start_with_models(models: &[(&str, &str)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        Self::start_on_with_models(listener, models)
    }

    pub fn start_on(listener: TcpListener) -> Self {
        Self::start_on_with_models(listener, &[])
    }

    pub fn start_on_with_models(listener: TcpListener, installed: &[(&str, &str)]) -> Self {
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let mut models: HashMap<String, Vec<String>> = HashMap::new();
        for (folder, name) in installed {
            models
                .entry((*folder).to_owned())
                .or_default()
                .push((*name).to_owned());
        }
        let mut object_info = recorded_object_info().clone();
        for (folder, node, input) in crate::comfy::models::SOURCES {
            if let Some(files) = models.get(folder) {
                let spec = &mut object_info[node]["input"]["required"][input];
                match spec[0].is_array() {
                    true => spec[0] = json!(files),
                    false => spec[1]["options"] = json!(files),
                }
            }
        }
        if let Some(files) = models.get("checkpoints") {
            object_info["ImageOnlyCheckpointLoader"]["input"]["required"]["ckpt_name"][0] =
                json!(files);
        }
        let (work, work_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            exit_allowed: AtomicBool::new(false),
            object_info,
            models,
            hang: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            step_delay_ms: AtomicU64::new(2),
            progress_steps: AtomicU64::new(0),
            number: AtomicU64::new(0),
            file_counters: Mutex::new(HashMap::new()),
            interrupt: AtomicBool::new(false),
            requests: Mutex::new(VecDeque::new()),
            request_count: AtomicU64::new(0),
            open_connections: Arc::new(AtomicUsize::new(0)),
            sockets: Mutex::new(HashMap::new()),
            queue: Mutex::new(Queue::default()),
            history: Mutex::new(Map::new()),
            files: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            work,
            comfy_api_base: Mutex::new(None),
            prompts: Mutex::new(Vec::new()),
        });
        tokio::spawn(worker(shared.clone(), work_rx));
        let app = router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = CountingListener {
            inner: listener,
            open: shared.open_connections.clone(),
        };
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app.into_make_service());
            tokio::select! {
                _ = serve => {}
                _ = stopped => {}
            }
        });
        Self {
            addr,
            shared,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets `POST /__fake/control {"exit": code}` end the whole process, as a crashing ComfyUI would.
    pub fn allow_exit_on_request(&self) {
        self.shared.exit_allowed.store(true, Ordering::SeqCst);
    }

    /// While on, the WebSocket stays open but carries nothing: runs finish and are written to the history unseen.
    pub fn set_silent(&self, on: bool) {
        self.shared.silent.store(on, Ordering::SeqCst);
    }

    /// While on, every HTTP request and upgrade is accepted and never answered.
    pub fn set_hang(&self, on: bool) {
        self.shared.hang.store(on, Ordering::SeqCst);
    }

    /// A sampler that reports `steps` progress events (one a millisecond) instead of the recorded ones, like a
    /// long real run.
    pub fn set_progress_steps(&self, steps: u64) {
        self.shared.progress_steps.store(steps, Ordering::SeqCst);
    }

    /// Pause between two replayed events of a run.
    /// The body of every prompt it queued, in order (the test's view of what reached ComfyUI).
    pub fn received_prompts(&self) -> Vec<Value> {
        self.shared.prompts.lock().unwrap().clone()
    }

    /// The Comfy.org API base paid API nodes call (ComfyUI's `--comfy-api-base`).
    pub fn set_comfy_api_base(&self, base: &str) {
        *self.shared.comfy_api_base.lock().unwrap() = Some(base.trim_end_matches('/').to_owned());
    }

    pub fn set_step_delay(&self, delay: Duration) {
        self.shared
            .step_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stops listening and drops every connection: from now on connections are refused.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// The last requests received (at most 1000), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect()
    }

    /// How many TCP connections to the fake are open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// How many requests arrived since start.
    pub fn request_count(&self) -> u64 {
        self.shared.request_count.load(Ordering::SeqCst)
    }

    /// The client ids with an open WebSocket.
    pub fn connected_clients(&self) -> Vec<String> {
        self.shared
            .sockets
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// Closes every open WebSocket from the server side with `code` and `reason`.
    pub fn close_sockets(&self, code: u16, reason: &str) {
        let frame = axum::extract::ws::CloseFrame {
            code,
            reason: reason.into(),
        };
        for tx in self.shared.sockets.lock().unwrap().values() {
            let _ = tx.send(Message::Close(Some(frame.clone())));
        }
    }

    /// Sizes of the files received through `/upload/image`, by name.
    pub fn uploads(&self) -> HashMap<String, u64> {
        self.shared.uploads.lock().unwrap().clone()
    }
}

impl Drop for FakeComfy {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The fake's listener: counts the connections open at any moment.
struct CountingListener {
    inner: TcpListener,
    open: Arc<AtomicUsize>,
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (inner, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        self.open.fetch_add(1, Ordering::SeqCst);
        let open = self.open.clone();
        (CountedStream { inner, open }, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection that leaves the count when it is dropped.
struct CountedStream {
    inner: tokio::net::TcpStream,
    open: Arc<AtomicUsize>,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl tokio::io::AsyncRead for CountedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let routes = Router::new()
        .route(
            "/system_stats",
            get(|| async { raw_json(fixture!("system_stats.json")) }),
        )
        .route(
            "/features",
            get(|| async { raw_json(fixture!("features.json")) }),
        )
        .route(
            "/object_info",
            get(|shared: State<Arc<Shared>>| async move { axum::Json(shared.object_info.clone()) }),
        )
        .route("/object_info/{class}", get(object_info_one))
        .route(
            "/embeddings",
            get(|| async { raw_json(fixture!("embeddings.json")) }),
        )
        .route("/extensions", get(|| async { axum::Json(json!([])) }))
        .route(
            "/models",
            get(|| async { raw_json(fixture!("models.json")) }),
        )
        .route("/models/{folder}", get(models_in_folder))
        .route("/prompt", get(prompt_info).post(post_prompt))
        .route("/queue", get(get_queue).post(post_queue))
        .route("/interrupt", post(interrupt))
        .route("/history", get(get_history).post(post_history))
        .route("/history/{id}", get(history_one))
        .route("/view", get(view))
        .route("/upload/image", post(upload_image))
        .route("/ws", any(websocket));
    Router::new()
        .merge(routes.clone())
        .nest("/api", routes)
        .route("/__fake/control", post(control))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(shared.clone(), origin_check))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            record_and_hang,
        ))
        .with_state(shared)
}

fn raw_json(body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

fn json_status(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// aiohttp's answer to an unhandled exception.
fn server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "500 Internal Server Error\n\nServer got itself in trouble",
    )
        .into_response()
}

async fn record_and_hang(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    shared.request_count.fetch_add(1, Ordering::SeqCst);
    {
        let mut requests = shared.requests.lock().unwrap();
        if requests.len() == KEPT_REQUESTS {
            requests.pop_front();
        }
        requests.push_back(RecordedRequest {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            query: request.uri().query().map(str::to_owned),
            headers: request.headers().clone(),
        });
    }
    if shared.hang.load(Ordering::SeqCst) && !request.uri().path().starts_with("/__fake") {
        std::future::pending::<()>().await;
    }
    next.run(request).await
}

/// ComfyUI's `create_origin_only_middleware`: every OPTIONS gets an empty 200; a request carrying both `Host` and
/// `Origin` to a loopback host must have matching host and origin, or it gets 403 with an empty body.
async fn origin_check(request: Request, next: Next) -> Response {
    if request.method() == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    let headers = request.headers();
    if let (Some(host), Some(origin)) = (
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
    ) {
        let host = host.to_ascii_lowercase();
        let host_name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
        let loopback = host_name == "localhost"
            || host_name
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            let netloc = origin
                .split_once("://")
                .map_or("", |(_, rest)| rest)
                .to_ascii_lowercase();
            let strip = |s: &str| {
                s.rsplit_once(':')
                    .map_or(s.to_owned(), |(h, _)| h.to_owned())
            };
            let matches = if host.contains(':') && netloc.contains(':') {
                host == netloc
            } else {
                strip(&host) == strip(&netloc)
            };
            if !matches {
                return StatusCode::FORBIDDEN.into_response();
            }
        }
    }
    next.run(request).await
}

async fn control(
    State(shared): State<Arc<Shared>>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(hang) = body.get("hang").and_then(Value::as_bool) {
        shared.hang.store(hang, Ordering::SeqCst);
    }
    if let Some(code) = body.get("exit").and_then(Value::as_i64)
        && shared.exit_allowed.load(Ordering::SeqCst)
    {
        eprintln!("fake-comfyui: exiting with code {code} on request");
        std::process::exit(code as i32);
    }
    if let Some(ms) = body.get("step_delay_ms").and_then(Value::as_u64) {
        shared.step_delay_ms.store(ms, Ordering::SeqCst);
    }
    if let Some(base) = body.get("comfy_api_base").and_then(Value::as_str) {
        *shared.comfy_api_base.lock().unwrap() = Some(base.trim_end_matches('/').to_owned());
    }
    axum::Json(json!({ "hang": shared.hang.load(Ordering::SeqCst), "requests": shared.request_count.load(Ordering::SeqCst) }))
        .into_response()
}

async fn object_info_one(State(shared): State<Arc<Shared>>, Path(class): Path<String>) -> Response {
    match shared.object_info.get(&class) {
        Some(info) => axum::Json(json!({ class: info })).into_response(),
        // The real server answers an unknown class with `{}` and 200.
        None => axum::Json(json!({})).into_response(),
    }
}

async fn models_in_folder(
    State(shared): State<Arc<Shared>>,
    Path(folder): Path<String>,
) -> Response {
    let known: Vec<String> = serde_json::from_str(fixture!("models.json")).expect("recorded");
    // Legacy names `unet` and `clip` are looked up before they are mapped, so they are 404 too.
    match known.contains(&folder) {
        true => axum::Json(shared.models.get(&folder).cloned().unwrap_or_default()).into_response(),
        false => StatusCode::NOT_FOUND.into_response(),
    }
}

fn queue_remaining(shared: &Shared) -> usize {
    let queue = shared.queue.lock().unwrap();
    queue.pending.len() + usize::from(queue.running.is_some())
}

async fn prompt_info(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({ "exec_info": { "queue_remaining": queue_remaining(&shared) } }))
        .into_response()
}

async fn post_prompt(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return server_error();
    };
    let Some(prompt) = body.get("prompt").cloned() else {
        let error = json!({"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}});
        return json_status(
            StatusCode::BAD_REQUEST,
            json!({ "error": error, "node_errors": {} }),
        );
    };
    let outputs = match validate_prompt(&shared.object_info, &prompt) {
        Ok(outputs) => outputs,
        Err(answer) => return json_status(StatusCode::BAD_REQUEST, answer),
    };
    let prompt_id = body
        .get("prompt_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    shared.prompts.lock().unwrap().push(body.clone());
    let number = shared.number.fetch_add(1, Ordering::SeqCst);
    let mut extra_data = body.get("extra_data").cloned().unwrap_or_else(|| json!({}));
    if let Some(client_id) = body.get("client_id").and_then(Value::as_str)
        && let Some(extra) = extra_data.as_object_mut()
    {
        extra.insert("client_id".into(), json!(client_id));
    }
    let item = QueueItem {
        number,
        prompt_id: prompt_id.clone(),
        prompt,
        extra_data,
        outputs,
    };
    shared.queue.lock().unwrap().pending.push_back(item);
    broadcast_status(&shared);
    let _ = shared.work.send(());
    axum::Json(json!({ "prompt_id": prompt_id, "number": number, "node_errors": {} }))
        .into_response()
}

/// ComfyUI's `validate_prompt`, for what a client can observe: unknown classes, missing outputs, per-node input
/// errors with the outputs that depend on them. Returns the output node ids to execute.
fn validate_prompt(info: &Value, prompt: &Value) -> Result<Vec<String>, Value> {
    let Some(nodes) = prompt.as_object() else {
        return Err(top_error(
            "invalid_prompt",
            "Cannot execute because the prompt is not an object.",
            "",
            json!({}),
        ));
    };
    for (id, node) in nodes {
        let class = node.get("class_type").and_then(Value::as_str);
        match class {
            Some(class) if info.get(class).is_some() => {}
            Some(class) => {
                let message = format!("Cannot execute because node {class} does not exist.");
                return Err(top_error(
                    "invalid_prompt",
                    &message,
                    &format!("Node ID '#{id}'"),
                    json!({}),
                ));
            }
            None => {
                let message = "Cannot execute because a node is missing the class_type property.";
                return Err(top_error(
                    "invalid_prompt",
                    message,
                    &format!("Node ID '#{id}'"),
                    json!({}),
                ));
            }
        }
    }
    let outputs: Vec<String> = nodes
        .iter()
        .filter(|(_, node)| {
            let class = node["class_type"].as_str().unwrap_or_default();
            info[class]["output_node"].as_bool().unwrap_or(false)
        })
        .map(|(id, _)| id.clone())
        .collect();
    if outputs.is_empty() {
        return Err(top_error(
            "prompt_no_outputs",
            "Prompt has no outputs",
            "",
            json!({}),
        ));
    }

    let mut node_errors = Map::new();
    for (id, node) in nodes {
        let errors = validate_node(info, nodes, node);
        if !errors.is_empty() {
            node_errors.insert(id.clone(), json!({ "errors": errors, "class_type": node["class_type"], "dependent_outputs": [] }));
        }
    }
    let mut failed_outputs = Vec::new();
    for output in &outputs {
        for upstream in reachable(nodes, output) {
            if let Some(entry) = node_errors.get_mut(&upstream) {
                entry["dependent_outputs"]
                    .as_array_mut()
                    .expect("built above")
                    .push(json!(output));
                if !failed_outputs.contains(output) {
                    failed_outputs.push(output.clone());
                }
            }
        }
    }
    node_errors.retain(|_, entry| {
        !entry["dependent_outputs"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    if !node_errors.is_empty() && failed_outputs.len() == outputs.len() {
        let mut answer = top_error(
            "prompt_outputs_failed_validation",
            "Prompt outputs failed validation",
            "",
            json!({}),
        );
        answer["node_errors"] = Value::Object(node_errors);
        return Err(answer);
    }
    Ok(outputs
        .into_iter()
        .filter(|o| !failed_outputs.contains(o))
        .collect())
}

fn top_error(kind: &str, message: &str, details: &str, extra: Value) -> Value {
    json!({ "error": { "type": kind, "message": message, "details": details, "extra_info": extra }, "node_errors": {} })
}

fn reachable(nodes: &Map<String, Value>, from: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(inputs) = nodes
            .get(&id)
            .and_then(|n| n.get("inputs"))
            .and_then(Value::as_object)
        {
            for value in inputs.values() {
                if let Some(source) = link_source(value) {
                    stack.push(source.to_owned());
                }
            }
        }
    }
    seen
}

fn link_source(value: &Value) -> Option<&str> {
    match value.as_array().map(Vec::as_slice) {
        Some([Value::String(id), Value::Number(_)]) => Some(id),
        _ => None,
    }
}

fn validate_node(info: &Value, nodes: &Map<String, Value>, node: &Value) -> Vec<Value> {
    let class = node["class_type"].as_str().unwrap_or_default();
    let Some(required) = info[class]["input"]["required"].as_object() else {
        return vec![];
    };
    let inputs = node.get("inputs").and_then(Value::as_object);
    let mut errors = Vec::new();
    for (name, spec) in required {
        let Some(value) = inputs.and_then(|i| i.get(name)) else {
            errors.push(json!({
                "type": "required_input_missing", "message": "Required input is missing",
                "details": name, "extra_info": { "input_name": name }
            }));
            continue;
        };
        if let Some(source) = link_source(value) {
            if !nodes.contains_key(source) {
                errors.push(json!({
                    "type": "exception_during_validation", "message": "Exception when validating node",
                    "details": format!("'{source}'"), "extra_info": { "input_name": name }
                }));
            }
            continue;
        }
        let kind = &spec[0];
        let options = &spec[1];
        if let Some(choices) = kind.as_array() {
            // LoadImage validates its file itself (VALIDATE_INPUTS), so the list check is skipped for it.
            if class == "LoadImage" {
                continue;
            }
            if !choices.contains(value) {
                let shown: Vec<String> = choices
                    .iter()
                    .map(|c| format!("'{}'", c.as_str().unwrap_or_default()))
                    .collect();
                errors.push(json!({
                    "type": "value_not_in_list", "message": "Value not in list",
                    "details": format!("{name}: '{}' not in [{}]", value.as_str().unwrap_or_default(), shown.join(", ")),
                    "extra_info": { "input_name": name, "input_config": spec, "received_value": value }
                }));
            }
            continue;
        }
        if matches!(kind.as_str(), Some("INT" | "FLOAT")) {
            let Some(number) = value.as_f64() else {
                errors.push(json!({
                    "type": "invalid_input_type", "message": "Failed to convert an input value to a number",
                    "details": format!("{name}, {value}"), "extra_info": { "input_name": name, "received_value": value }
                }));
                continue;
            };
            if let Some(min) = options.get("min").and_then(Value::as_f64)
                && number < min
            {
                errors.push(json!({
                    "type": "value_smaller_than_min", "message": format!("Value {number} smaller than min of {min}"),
                    "details": name, "extra_info": { "input_name": name, "input_config": spec, "received_value": value }
                }));
            }
            if let Some(max) = options.get("max").and_then(Value::as_f64)
                && number > max
            {
                errors.push(json!({
                    "type": "value_bigger_than_max", "message": format!("Value {number} bigger than max of {max}"),
                    "details": name, "extra_info": { "input_name": name, "input_config": spec, "received_value": value }
                }));
            }
        }
    }
    errors
}

async fn get_queue(State(shared): State<Arc<Shared>>) -> Response {
    let queue = shared.queue.lock().unwrap();
    let running: Vec<Value> = queue.running.iter().map(QueueItem::to_json).collect();
    let pending: Vec<Value> = queue.pending.iter().map(QueueItem::to_json).collect();
    axum::Json(json!({ "queue_running": running, "queue_pending": pending })).into_response()
}

async fn post_queue(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return server_error();
    };
    {
        let mut queue = shared.queue.lock().unwrap();
        if body.get("clear").and_then(Value::as_bool) == Some(true) {
            queue.pending.clear();
        }
        if let Some(ids) = body.get("delete").and_then(Value::as_array) {
            queue.pending.retain(|item| {
                !ids.iter()
                    .any(|id| id.as_str() == Some(item.prompt_id.as_str()))
            });
        }
    }
    broadcast_status(&shared);
    StatusCode::OK.into_response()
}

async fn interrupt(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    // An empty or invalid body interrupts whatever runs; a prompt_id only that prompt, if it is the one running.
    let target = serde_json::from_slice::<Value>(&body).ok().and_then(|b| {
        b.get("prompt_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let running = shared
        .queue
        .lock()
        .unwrap()
        .running
        .as_ref()
        .map(|item| item.prompt_id.clone());
    if running.is_some() && (target.is_none() || target == running) {
        shared.interrupt.store(true, Ordering::SeqCst);
    }
    StatusCode::OK.into_response()
}

async fn get_history(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let parse = |key: &str| query.get(key).map(|v| v.parse::<usize>());
    let (max_items, offset) = match (parse("max_items"), parse("offset")) {
        (Some(Err(_)), _) | (_, Some(Err(_))) => return server_error(),
        (max, off) => (max.map(Result::unwrap), off.map(Result::unwrap)),
    };
    let history = shared.history.lock().unwrap();
    let len = history.len();
    let start = match (offset, max_items) {
        (Some(offset), _) => offset.min(len),
        (None, Some(max)) => len.saturating_sub(max),
        (None, None) => 0,
    };
    let take = max_items.unwrap_or(usize::MAX);
    let page: Map<String, Value> = history
        .iter()
        .skip(start)
        .take(take)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    axum::Json(Value::Object(page)).into_response()
}

async fn post_history(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return server_error();
    };
    let mut history = shared.history.lock().unwrap();
    if body.get("clear").and_then(Value::as_bool) == Some(true) {
        history.clear();
    }
    if let Some(ids) = body.get("delete").and_then(Value::as_array) {
        for id in ids.iter().filter_map(Value::as_str) {
            history.remove(id);
        }
    }
    StatusCode::OK.into_response()
}

async fn history_one(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let history = shared.history.lock().unwrap();
    match history.get(&id) {
        Some(entry) => axum::Json(json!({ id: entry })).into_response(),
        None => axum::Json(json!({})).into_response(),
    }
}

async fn view(
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
                    (header::CONTENT_TYPE, "image/png".to_owned()),
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
fn generated_body(size: u64) -> Response {
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

async fn upload_image(State(shared): State<Arc<Shared>>, mut form: Multipart) -> Response {
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

async fn websocket(
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

async fn serve_socket(shared: Arc<Shared>, socket: WebSocket, sid: String) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    // As ComfyUI: the socket is registered under its id first, then greeted; a client that waits for the
    // greeting knows that events for its id will reach it.
    shared
        .sockets
        .lock()
        .unwrap()
        .insert(sid.clone(), tx.clone());
    let hello = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": queue_remaining(&shared)}}, "sid": sid}});
    let _ = tx.send(Message::text(hello.to_string()));
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || closing {
                break;
            }
        }
    });
    let mut first = true;
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Text(text) = &message
            && first
            && serde_json::from_str::<Value>(text.as_str())
                .is_ok_and(|m| m["type"] == "feature_flags")
        {
            let reply = json!({"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": MAX_UPLOAD_BYTES}});
            let _ = tx.send(Message::text(reply.to_string()));
        }
        first = false;
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
    // Faithful to ComfyUI: the id is popped when a socket closes, even if a newer socket registered it since.
    shared.sockets.lock().unwrap().remove(&sid);
    writer.abort();
}

fn broadcast_status(shared: &Shared) {
    let status = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": queue_remaining(shared)}}}});
    send(shared, None, Message::text(status.to_string()));
}

/// Sends to one client's socket, or to every socket when `client` is `None`.
fn send(shared: &Shared, client: Option<&str>, message: Message) {
    if shared.silent.load(Ordering::SeqCst) {
        return;
    }
    let sockets = shared.sockets.lock().unwrap();
    match client {
        Some(client) => {
            if let Some(tx) = sockets.get(client) {
                let _ = tx.send(message);
            }
        }
        None => {
            for tx in sockets.values() {
                let _ = tx.send(message.clone());
            }
        }
    }
}

/// Works the queue one prompt at a time, replaying a recorded run for each.
async fn worker(shared: Arc<Shared>, mut wake: mpsc::UnboundedReceiver<()>) {
    loop {
        let item = {
            let mut queue = shared.queue.lock().unwrap();
            let next = queue.pending.pop_front();
            queue.running = next.clone();
            next
        };
        let Some(item) = item else {
            if wake.recv().await.is_none() {
                return;
            }
            continue;
        };
        shared.interrupt.store(false, Ordering::SeqCst);
        // ComfyUI announces the queue change when the worker takes a prompt, as it did when the prompt was put.
        broadcast_status(&shared);
        run_prompt(&shared, &item).await;
        shared.queue.lock().unwrap().running = None;
        broadcast_status(&shared);
        send_event(
            &shared,
            &item,
            json!({"type": "executing", "data": {"node": null, "prompt_id": item.prompt_id}}),
        );
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn send_event(shared: &Shared, item: &QueueItem, event: Value) {
    let kind = event["type"].as_str().unwrap_or_default().to_owned();
    let client = item.client_id();
    let broadcast_without_client = matches!(
        kind.as_str(),
        "progress" | "progress_state" | "execution_interrupted"
    );
    // ComfyUI: `status` goes to everyone; the rest to the prompt's client, or, for a prompt without one, only the
    // progress events to everyone and the others to no one.
    let message = Message::text(event.to_string());
    match (&client, kind.as_str()) {
        (_, "status") => send(shared, None, message),
        (Some(client), _) => send(shared, Some(client), message),
        (None, _) if broadcast_without_client => send(shared, None, message),
        (None, _) => {}
    }
}

/// Replays the recorded run that fits the prompt, with this prompt's id, and records its history.
async fn run_prompt(shared: &Shared, item: &QueueItem) {
    let nodes = item.prompt.as_object().cloned().unwrap_or_default();
    let samples = nodes.values().any(|n| n["class_type"] == "KSampler");
    let recorded = transcript(samples);
    let recorded_id = recorded
        .iter()
        .find_map(|m| m["data"]["data"]["prompt_id"].as_str())
        .unwrap_or_default()
        .to_owned();
    let delay = Duration::from_millis(shared.step_delay_ms.load(Ordering::SeqCst));
    let mut messages = Vec::new();
    let mut outputs = Map::new();
    let mut synthetic_done = false;

    let paid = super::fake_api_nodes::paid_nodes(&shared.object_info, &nodes);
    if !paid.is_empty() {
        let base = shared.comfy_api_base.lock().unwrap().clone();
        match super::fake_api_nodes::run(
            &shared.object_info,
            base.as_deref(),
            &paid,
            &item.extra_data,
        )
        .await
        {
            Ok(texts) => {
                for (node, text) in texts {
                    let frame = crate::jobs::price::text_frame(&node, &text);
                    send(
                        shared,
                        item.client_id().as_deref(),
                        Message::Binary(Bytes::from(frame)),
                    );
                }
            }
            Err(failure) => {
                let data = json!({"prompt_id": item.prompt_id, "node_id": failure.node_id, "node_type": failure.node_type,
                    "executed": [], "exception_message": failure.message, "exception_type": "Exception",
                    "traceback": [], "current_inputs": failure.current_inputs, "current_outputs": [], "timestamp": now_ms()});
                messages.push(json!(["execution_error", data]));
                record_history(shared, item, Map::new(), messages, false);
                send_event(
                    shared,
                    item,
                    json!({"type": "execution_error", "data": data}),
                );
                return;
            }
        }
    }

    // Entry 0 is the greeting a socket gets on connect; the queue-change statuses were sent by post_prompt.
    for entry in recorded.iter().skip(1) {
        if shared.interrupt.swap(false, Ordering::SeqCst) {
            let event = json!({"type": "execution_interrupted", "data": {
                "prompt_id": item.prompt_id, "node_id": "", "node_type": "", "executed": [], "timestamp": now_ms()}});
            messages.push(json!(["execution_interrupted", event["data"]]));
            record_history(shared, item, Map::new(), messages, false);
            send_event(shared, item, event);
            return;
        }
        match entry["kind"].as_str() {
            Some("text")
                if entry["data"]["type"] == "progress"
                    && shared.progress_steps.load(Ordering::SeqCst) > 0 =>
            {
                // The first recorded progress event stands for the whole sampler; the rest are skipped.
                if !std::mem::replace(&mut synthetic_done, true) {
                    let steps = shared.progress_steps.load(Ordering::SeqCst);
                    let node = entry["data"]["data"]["node"].clone();
                    for value in 1..=steps {
                        let event = json!({"type": "progress", "data": {
                            "value": value, "max": steps, "prompt_id": item.prompt_id, "node": node}});
                        send_event(shared, item, event);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                continue;
            }
            Some("text") => {
                let raw = entry["data"]
                    .to_string()
                    .replace(&recorded_id, &item.prompt_id);
                let mut event: Value =
                    serde_json::from_str(&raw).expect("re-serialised JSON parses");
                let kind = event["type"].as_str().unwrap_or_default().to_owned();
                if kind == "status" {
                    continue;
                }
                if let Some(ts) = event["data"].get_mut("timestamp") {
                    *ts = json!(now_ms());
                }
                if kind == "executed" {
                    let node = event["data"]["node"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    // The recorded run has one SaveImage; any other SaveImage of this workflow saves too, each
                    // with its own `executed` message, as ComfyUI runs every output node.
                    let mut savers: Vec<String> = nodes
                        .iter()
                        .filter(|(id, n)| **id != node && n["class_type"] == "SaveImage")
                        .map(|(id, _)| id.clone())
                        .collect();
                    savers.sort();
                    for other in savers {
                        let mut extra = event.clone();
                        extra["data"]["node"] = json!(other);
                        extra["data"]["display_node"] = json!(other);
                        let output = save_output(shared, &nodes, &other);
                        extra["data"]["output"] = output.clone();
                        outputs.insert(other, output);
                        send_event(shared, item, extra);
                    }
                    let output = save_output(shared, &nodes, &node);
                    event["data"]["output"] = output.clone();
                    outputs.insert(node, output);
                }
                if matches!(
                    kind.as_str(),
                    "execution_start" | "execution_cached" | "execution_success"
                ) {
                    messages.push(json!([kind, event["data"]]));
                }
                if kind == "execution_success" {
                    send_event(shared, item, event);
                    // The real server writes history after execution_success and before `executing` null.
                    record_history(shared, item, outputs.clone(), messages.clone(), true);
                    return;
                }
                send_event(shared, item, event);
            }
            Some("binary") => {
                let mut frame = hex(entry["head_hex"].as_str().unwrap_or_default());
                frame.extend(hex(entry["image_magic_hex"].as_str().unwrap_or_default()));
                frame.resize(entry["len"].as_u64().unwrap_or(8) as usize, 0);
                let message = Message::Binary(Bytes::from(frame));
                send(shared, item.client_id().as_deref(), message);
            }
            _ => continue,
        }
        tokio::time::sleep(delay).await;
    }
}

/// What a SaveImage node writes, as ComfyUI's `get_save_image_path`: a prefix "a/b" saves `b_00001_.png` in the
/// subfolder "a", the counter counting per folder and name, so two prefixes "a/x" and "b/x" both give
/// `x_00001_.png`, in different subfolders.
fn save_output(shared: &Shared, nodes: &Map<String, Value>, node: &str) -> Value {
    let prefix = nodes
        .get(node)
        .and_then(|n| n["inputs"]["filename_prefix"].as_str())
        .unwrap_or("ComfyUI");
    let (subfolder, stem) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    let counter = {
        let mut counters = shared.file_counters.lock().unwrap();
        let counter = counters
            .entry((subfolder.to_owned(), stem.to_owned()))
            .or_insert(0);
        *counter += 1;
        *counter
    };
    let filename = format!("{stem}_{counter:05}_.png");
    shared.files.lock().unwrap().insert(
        file_key(subfolder, &filename),
        Bytes::from_static(OUTPUT_PNG),
    );
    json!({"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}]})
}

/// Where the fake keeps a file: its name, under its subfolder when it has one.
fn file_key(subfolder: &str, filename: &str) -> String {
    if subfolder.is_empty() {
        filename.to_owned()
    } else {
        format!("{subfolder}/{filename}")
    }
}

fn record_history(
    shared: &Shared,
    item: &QueueItem,
    outputs: Map<String, Value>,
    messages: Vec<Value>,
    ok: bool,
) {
    let meta: Map<String, Value> = outputs
        .keys()
        .map(|id| {
            (
                id.clone(),
                json!({"node_id": id, "display_node": id, "parent_node": null, "real_node_id": id}),
            )
        })
        .collect();
    // ComfyUI keeps the prompt in its history without the Comfy.org credentials (`task_done`); `/queue` has them.
    let mut prompt = item.to_json();
    crate::comfy::credentials::strip(&mut prompt, None);
    let entry = json!({
        "prompt": prompt,
        "outputs": outputs,
        "status": {"status_str": if ok { "success" } else { "error" }, "completed": ok, "messages": messages},
        "meta": meta,
    });
    shared
        .history
        .lock()
        .unwrap()
        .insert(item.prompt_id.clone(), entry);
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}
