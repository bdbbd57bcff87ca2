//! A fake ComfyUI 0.3.64 built from the responses and WebSocket transcripts recorded from a real one
//! (`tests/fixtures/comfyui`, copied from the team's shared fixtures).
//!
//! It behaves like the real server where a client can tell: every route also under `/api`; the host/origin check
//! that answers 403 with an empty body; `/prompt` validated against the recorded node definitions with ComfyUI's
//! error shapes; a queue worked one prompt at a time whose run replays a recorded transcript, with ComfyUI's rules
//! for which socket gets which event; history written after `execution_success` and before the final
//! `executing {node: null}`; `/view` and `/upload/image` with their status codes.
//!
//! With a front-end root ([`FakeComfy::set_front_end_root`], ComfyUI's `--front-end-root`) it also serves the
//! real frontend as ComfyUI does: `GET /` is the folder's `index.html` and every other unprefixed path a file of
//! that folder (aiohttp's `web.static('/', root)`: 403 for a folder, 404 for a missing file or one outside), and
//! `/extensions` lists the folder's `extensions/**/*.js`. The routes the frontend calls at start-up answer as a
//! single-user ComfyUI 0.3.64 without custom nodes whose user folder exists and holds nothing yet
//! (`app/user_manager.py`, `app/app_settings.py`, `app/model_manager.py`, `app/custom_node_manager.py`):
//! `/users`, `/settings[/{id}]`, `/userdata` (in memory: only what was written to it), `/i18n`,
//! `/workflow_templates`, `/experiment/models[/{folder}]`. No workflow templates package is installed, so
//! `/templates/…` is 404.
//!
//! Switches for failure tests: [`FakeComfy::set_hang`] (accept connections, never answer), [`FakeComfy::stop`]
//! (connections refused), `/view?filename=large.bin&size=N` (a generated body of N bytes, streamed) and
//! `/view?filename=stall.bin` (64 KiB, then silence). The same switches are reachable over HTTP at `/__fake/*` for
//! the `fake-comfyui` binary. [`FakeComfy::open_connections`] counts the TCP connections open to it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
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
            "/../../tests/fixtures/comfyui/",
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
    /// The frontend's folder (ComfyUI's `--front-end-root`); without one, `/` and static paths are 404.
    front_end_root: Mutex<Option<PathBuf>>,
    /// The default user's folder (`user/default`), by path relative to it; `comfy.settings.json` holds the
    /// settings as ComfyUI keeps them.
    user_files: Mutex<BTreeMap<String, UserFile>>,
}

/// A file in the fake's user folder.
#[derive(Clone)]
struct UserFile {
    body: Bytes,
    /// Milliseconds since the epoch, as ComfyUI's `get_file_info` reports them.
    modified: u64,
    created: u64,
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
        for (folder, node, input) in orchestrator::comfy::models::SOURCES {
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
            front_end_root: Mutex::new(None),
            user_files: Mutex::new(BTreeMap::new()),
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

    /// Serves the frontend in `root` (ComfyUI's `--front-end-root`): `GET /` is its `index.html`, every other
    /// unprefixed path one of its files, and `/extensions` lists its `extensions/**/*.js`.
    pub fn set_front_end_root(&self, root: PathBuf) {
        *self.shared.front_end_root.lock().unwrap() = Some(root);
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
        .route("/extensions", get(extensions))
        .route("/users", get(users))
        .route("/settings", get(get_settings).post(post_settings))
        .route("/settings/{id}", get(get_setting).post(post_setting))
        .route("/userdata", get(list_userdata))
        .route(
            "/userdata/{file}",
            get(get_userdata)
                .post(post_userdata)
                .delete(delete_userdata),
        )
        .route("/i18n", get(|| async { axum::Json(json!({})) }))
        .route(
            "/workflow_templates",
            get(|| async { axum::Json(json!({})) }),
        )
        .route("/experiment/models", get(experiment_models))
        .route("/experiment/models/{folder}", get(experiment_models_in))
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
        // `GET /` is one of ComfyUI's routes, so it is also served at `/api/` (and `/api` falls to the files).
        .route("/", get(index_html))
        .route("/api/", get(index_html))
        .route("/__fake/control", post(control))
        .fallback(static_file)
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
                    let frame = orchestrator::jobs::price::text_frame(&node, &text);
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
                        .filter(|(id, n)| **id != node && is_saver(n))
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

/// The output nodes that write a file: SaveImage, and SaveSVGNode (`nodes_images.py`), which writes `.svg`.
fn is_saver(node: &Value) -> bool {
    matches!(
        node["class_type"].as_str(),
        Some("SaveImage" | "SaveSVGNode")
    )
}

/// An SVG as a workflow can write one: with a script, which must never run on the panel's origin.
pub const OUTPUT_SVG: &[u8] =
    b"<svg xmlns='http://www.w3.org/2000/svg' width='1' height='1'><script>alert(1)</script></svg>";

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
    // SaveSVGNode saves `<prefix>_00001_.svg` and reports it under `images`, as SaveImage does.
    let svg = nodes
        .get(node)
        .is_some_and(|n| n["class_type"] == "SaveSVGNode");
    let (extension, bytes) = if svg {
        ("svg", OUTPUT_SVG)
    } else {
        ("png", OUTPUT_PNG)
    };
    let filename = format!("{stem}_{counter:05}_.{extension}");
    shared
        .files
        .lock()
        .unwrap()
        .insert(file_key(subfolder, &filename), Bytes::from_static(bytes));
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
    orchestrator::comfy::credentials::strip(&mut prompt, None);
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

// --- The frontend's files and the routes it calls at start-up -------------------------------------------------

/// The Content-Type aiohttp's `FileResponse` sends for a file (Python's `mimetypes`), by extension.
fn content_type_of(path: &FsPath) -> &'static str {
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
fn empty_ok() -> Response {
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::empty(),
    )
        .into_response()
}

fn text_status(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

fn front_end_root(shared: &Shared) -> Option<PathBuf> {
    shared.front_end_root.lock().unwrap().clone()
}

/// A file of the frontend's folder as aiohttp's `FileResponse` answers it.
async fn send_file(path: &FsPath, extra: &[(header::HeaderName, &'static str)]) -> Response {
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
async fn index_html(State(shared): State<Arc<Shared>>) -> Response {
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
async fn static_file(
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
async fn extensions(State(shared): State<Arc<Shared>>) -> Response {
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
async fn users() -> Response {
    axum::Json(json!({"storage": "server", "migrated": true})).into_response()
}

const SETTINGS_FILE: &str = "comfy.settings.json";

/// The default user's settings (`comfy.settings.json`), `{}` when there are none or the file is not JSON.
fn read_settings(shared: &Shared) -> Map<String, Value> {
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
fn write_settings(shared: &Shared, settings: &Map<String, Value>) {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(settings, &mut serializer).expect("a JSON map serialises");
    write_user_file(shared, SETTINGS_FILE, Bytes::from(out));
}

fn write_user_file(shared: &Shared, path: &str, body: Bytes) -> UserFile {
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

async fn get_settings(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(Value::Object(read_settings(&shared))).into_response()
}

async fn get_setting(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    axum::Json(read_settings(&shared).remove(&id).unwrap_or(Value::Null)).into_response()
}

/// `POST /settings`: the body's keys merged over the stored ones; a body that is not a JSON object is a 500.
async fn post_settings(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(Value::Object(new)) = serde_json::from_slice::<Value>(&body) else {
        return server_error();
    };
    let mut settings = read_settings(&shared);
    settings.extend(new);
    write_settings(&shared, &settings);
    empty_ok()
}

async fn post_setting(
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
fn user_path(raw: &str) -> Option<String> {
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
fn user_dir_exists(files: &BTreeMap<String, UserFile>, dir: &str) -> bool {
    dir.is_empty()
        || files
            .keys()
            .any(|path| path.starts_with(&format!("{dir}/")))
}

fn file_info(path: &str, file: &UserFile) -> Value {
    json!({"path": path, "size": file.body.len(), "modified": file.modified, "created": file.created})
}

/// `GET /userdata?dir=D[&recurse=true][&full_info=true][&split=true]`: the files in the user's folder `D`;
/// 400 without `dir`, 403 outside the user's folder, 404 for a folder that does not exist.
async fn list_userdata(
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
async fn get_userdata(State(shared): State<Arc<Shared>>, Path(file): Path<String>) -> Response {
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
async fn post_userdata(
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

async fn delete_userdata(State(shared): State<Arc<Shared>>, Path(file): Path<String>) -> Response {
    let Some(path) = user_path(&file).filter(|p| !p.is_empty()) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    match shared.user_files.lock().unwrap().remove(&path) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Where this fake's ComfyUI lives, for the folder lists of `/experiment/models`.
const MODELS_DIR: &str = "/opt/ComfyUI/models";

/// A model folder's search paths as `folder_paths` sets them up (legacy folders second).
fn model_folder_paths(folder: &str) -> Vec<String> {
    let names: &[&str] = match folder {
        "text_encoders" => &["text_encoders", "clip"],
        "diffusion_models" => &["unet", "diffusion_models"],
        "controlnet" => &["controlnet", "t2i_adapter"],
        "custom_nodes" => return vec!["/opt/ComfyUI/custom_nodes".to_owned()],
        other => return vec![format!("{MODELS_DIR}/{other}")],
    };
    names.iter().map(|n| format!("{MODELS_DIR}/{n}")).collect()
}

fn model_folders() -> Vec<String> {
    serde_json::from_str(fixture!("models.json")).expect("recorded")
}

/// `GET /experiment/models`: every model folder but `configs` and `custom_nodes`, with its search paths.
async fn experiment_models() -> Response {
    let folders: Vec<Value> = model_folders()
        .into_iter()
        .filter(|f| f != "configs" && f != "custom_nodes")
        .map(|name| json!({"name": name, "folders": model_folder_paths(&name)}))
        .collect();
    axum::Json(folders).into_response()
}

/// `GET /experiment/models/{folder}`: the installed files as `{name, pathIndex}`; 404 for an unknown folder.
async fn experiment_models_in(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        orchestrator::flux::client::install_crypto_provider();
        reqwest::Client::new()
    }

    async fn get(url: &str) -> (u16, String, Bytes) {
        let response = client().get(url).send().await.expect("the fake answers");
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, kind, response.bytes().await.expect("a body"))
    }

    /// A frontend folder: index.html, a script, a style sheet, a font, an extension and a secret beside it.
    fn frontend() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let root = dir.path().join("static");
        std::fs::create_dir_all(root.join("assets")).unwrap();
        std::fs::create_dir_all(root.join("extensions/core/.hidden")).unwrap();
        std::fs::write(
            root.join("index.html"),
            "<!doctype html><title>ComfyUI</title>",
        )
        .unwrap();
        std::fs::write(root.join("assets/index-x.js"), "export {}").unwrap();
        std::fs::write(root.join("assets/a b.css"), "body{}").unwrap();
        std::fs::write(root.join("assets/f.woff2"), [0u8, 1]).unwrap();
        std::fs::write(root.join("assets/logo.svg"), "<svg/>").unwrap();
        std::fs::write(root.join("extensions/core/widgets.js"), "").unwrap();
        std::fs::write(root.join("extensions/core/.hidden/x.js"), "").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("assets/link.txt"))
            .unwrap();
        (dir, root)
    }

    #[tokio::test]
    async fn without_a_front_end_root_there_is_no_page() {
        let fake = FakeComfy::start().await;
        assert_eq!(get(&format!("{}/", fake.url())).await.0, 404);
        assert_eq!(get(&format!("{}/index.html", fake.url())).await.0, 404);
        assert_eq!(get(&format!("{}/extensions", fake.url())).await.2, "[]");
    }

    #[tokio::test]
    async fn serves_the_frontend_unprefixed_with_its_types_and_never_outside_its_folder() {
        let (_dir, root) = frontend();
        let fake = FakeComfy::start().await;
        fake.set_front_end_root(root);
        let url = fake.url();
        let (status, kind, body) = get(&format!("{url}/")).await;
        assert_eq!((status, kind.as_str()), (200, "text/html"));
        assert!(body.starts_with(b"<!doctype html>"));
        // `/` is a route, so ComfyUI serves it under /api too; the files are not.
        assert_eq!(get(&format!("{url}/api/")).await.0, 200);
        for (path, expected) in [
            ("/assets/index-x.js", "text/javascript"),
            ("/assets/a%20b.css", "text/css"),
            ("/assets/f.woff2", "font/woff2"),
            ("/assets/logo.svg", "image/svg+xml"),
            ("/extensions/core/widgets.js", "text/javascript"),
        ] {
            let (status, kind, _) = get(&format!("{url}{path}")).await;
            assert_eq!((status, kind.as_str()), (200, expected), "{path}");
        }
        for (path, expected) in [
            ("/api/assets/index-x.js", 404),
            ("/api", 404),
            ("/assets", 403),
            ("/assets/", 403),
            ("/assets/missing.js", 404),
            ("/assets/%2e%2e/%2e%2e/secret.txt", 404),
            ("/assets/..%2f..%2fsecret.txt", 404),
            ("/%2fetc%2fpasswd", 404),
            ("/assets/link.txt", 404),
        ] {
            assert_eq!(get(&format!("{url}{path}")).await.0, expected, "{path}");
        }
        let listed: Value = serde_json::from_slice(&get(&format!("{url}/api/extensions")).await.2)
            .expect("a JSON list");
        assert_eq!(listed, json!(["/extensions/core/widgets.js"]));
    }

    #[tokio::test]
    async fn keeps_settings_and_user_files_as_a_single_user_comfyui() {
        let fake = FakeComfy::start().await;
        let url = fake.url();
        let client = client();
        let users: Value =
            serde_json::from_slice(&get(&format!("{url}/api/users")).await.2).unwrap();
        assert_eq!(users, json!({"storage": "server", "migrated": true}));
        assert_eq!(get(&format!("{url}/api/settings")).await.2, "{}");
        let posted = client
            .post(format!("{url}/api/settings/Comfy.TutorialCompleted"))
            .body("true")
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 200);
        client
            .post(format!("{url}/settings"))
            .body(r#"{"Comfy.Locale": "en"}"#)
            .send()
            .await
            .unwrap();
        let settings: Value =
            serde_json::from_slice(&get(&format!("{url}/api/settings")).await.2).unwrap();
        assert_eq!(
            settings,
            json!({"Comfy.TutorialCompleted": true, "Comfy.Locale": "en"})
        );
        assert_eq!(
            get(&format!("{url}/api/settings/Comfy.Locale")).await.2,
            "\"en\""
        );
        assert_eq!(get(&format!("{url}/api/settings/Unknown")).await.2, "null");
        let stored = get(&format!("{url}/api/userdata/comfy.settings.json"))
            .await
            .2;
        assert!(String::from_utf8_lossy(&stored).contains("\n    \"Comfy.Locale\": \"en\""));

        let list =
            format!("{url}/api/userdata?dir=workflows&recurse=true&split=false&full_info=true");
        assert_eq!(get(&list).await.0, 404);
        assert_eq!(get(&format!("{url}/api/userdata")).await.0, 400);
        assert_eq!(get(&format!("{url}/api/userdata?dir=..%2F..")).await.0, 403);
        let saved = client
            .post(format!(
                "{url}/api/userdata/workflows%2Fa.json?overwrite=false"
            ))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(
            saved.json::<Value>().await.unwrap(),
            json!("workflows/a.json")
        );
        let again = client
            .post(format!(
                "{url}/api/userdata/workflows%2Fa.json?overwrite=false"
            ))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 409);
        let listed: Value = serde_json::from_slice(&get(&list).await.2).unwrap();
        assert_eq!(listed[0]["path"], "a.json");
        assert_eq!(listed[0]["size"], 2);
        let (status, kind, body) = get(&format!("{url}/api/userdata/workflows%2Fa.json")).await;
        assert_eq!(
            (status, kind.as_str(), &body[..]),
            (200, "application/json", &b"{}"[..])
        );
        assert_eq!(get(&format!("{url}/api/userdata/user.css")).await.0, 404);
        let deleted = client
            .delete(format!("{url}/api/userdata/workflows%2Fa.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 204);
    }

    #[tokio::test]
    async fn answers_the_frontends_other_start_up_routes() {
        let fake = FakeComfy::start_with_models(&[("checkpoints", "x.safetensors")]).await;
        let url = fake.url();
        assert_eq!(get(&format!("{url}/api/i18n")).await.2, "{}");
        assert_eq!(get(&format!("{url}/api/workflow_templates")).await.2, "{}");
        let folders: Value =
            serde_json::from_slice(&get(&format!("{url}/api/experiment/models")).await.2).unwrap();
        let names: Vec<&str> = folders
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["name"].as_str())
            .collect();
        assert!(
            names.contains(&"checkpoints")
                && !names.contains(&"configs")
                && !names.contains(&"custom_nodes")
        );
        let checkpoints: Value = serde_json::from_slice(
            &get(&format!("{url}/api/experiment/models/checkpoints"))
                .await
                .2,
        )
        .unwrap();
        assert_eq!(
            checkpoints,
            json!([{"name": "x.safetensors", "pathIndex": 0}])
        );
        assert_eq!(
            get(&format!("{url}/api/experiment/models/unet")).await.0,
            404
        );
    }
}
