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
use std::sync::{Arc, Mutex, OnceLock, RwLock};
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

mod classes;
mod files;
mod frontend;
mod origin;
mod pictures;
mod prompt;
mod run;
#[cfg(test)]
mod tests;

use classes::*;
use files::*;
use frontend::*;
pub use pictures::{OUTPUT_PNG, OUTPUT_SVG, OUTPUT_WEBM, output_picture, preview_jpeg};
use prompt::*;
use run::*;

/// ComfyUI's default `--max-upload-size`, applied to every body.
pub const MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;
const GENERATED_CHUNK: usize = 64 * 1024;
const KEPT_REQUESTS: usize = 1000;

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
    /// The recorded node definitions with this instance's installed models in the loaders' lists, and the classes
    /// a test added.
    object_info: RwLock<Arc<Value>>,
    /// Installed model files by folder (the recording had none).
    models: HashMap<String, Vec<String>>,
    hang: AtomicBool,
    /// While on, runs go on but no WebSocket message is sent (a socket that stays open and goes quiet).
    silent: AtomicBool,
    step_delay_ms: AtomicU64,
    /// While on, SaveImage writes a 256×256 picture per run instead of OUTPUT_PNG.
    pictures: AtomicBool,
    /// When set, what SaveImage writes (a PNG), before `pictures` and OUTPUT_PNG.
    output_png: Mutex<Option<Bytes>>,
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
    /// WebSockets opened since start, and the most open at once.
    sockets_opened: AtomicUsize,
    sockets_peak: AtomicUsize,
    queue: Mutex<Queue>,
    history: Mutex<Map<String, Value>>,
    files: Mutex<HashMap<String, Bytes>>,
    uploads: Mutex<HashMap<String, u64>>,
    work: mpsc::UnboundedSender<()>,
    /// Where paid API nodes call (ComfyUI's `--comfy-api-base`).
    comfy_api_base: Mutex<Option<String>>,
    /// ComfyUI's log as `/internal/logs` answers it: what a test says nodes printed.
    log: Mutex<String>,
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
            object_info: RwLock::new(Arc::new(object_info)),
            models,
            hang: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            step_delay_ms: AtomicU64::new(2),
            pictures: AtomicBool::new(false),
            output_png: Mutex::new(None),
            progress_steps: AtomicU64::new(0),
            number: AtomicU64::new(0),
            file_counters: Mutex::new(HashMap::new()),
            interrupt: AtomicBool::new(false),
            requests: Mutex::new(VecDeque::new()),
            request_count: AtomicU64::new(0),
            open_connections: Arc::new(AtomicUsize::new(0)),
            sockets: Mutex::new(HashMap::new()),
            sockets_opened: AtomicUsize::new(0),
            sockets_peak: AtomicUsize::new(0),
            queue: Mutex::new(Queue::default()),
            history: Mutex::new(Map::new()),
            files: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            work,
            comfy_api_base: Mutex::new(None),
            log: Mutex::default(),
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

    /// SaveImage writes a real picture per run (for screenshots) rather than the 1×1 OUTPUT_PNG.
    pub fn set_pictures(&self, on: bool) {
        self.shared.pictures.store(on, Ordering::SeqCst);
    }

    /// A line in ComfyUI's log, as a custom node's `print` puts one there.
    pub fn log_line(&self, line: &str) {
        self.shared
            .log
            .lock()
            .unwrap()
            .push_str(&format!("{line}\n"));
    }

    /// SaveImage writes `png` for every run (a picture of the size a test needs).
    pub fn set_output_png(&self, png: Bytes) {
        *self.shared.output_png.lock().unwrap() = Some(png);
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

    /// WebSockets opened since start.
    pub fn sockets_opened(&self) -> usize {
        self.shared.sockets_opened.load(Ordering::SeqCst)
    }

    /// The most WebSockets open at once since start.
    pub fn sockets_peak(&self) -> usize {
        self.shared.sockets_peak.load(Ordering::SeqCst)
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
    let routes =
        Router::new()
            .route(
                "/system_stats",
                get(|shared: State<Arc<Shared>>| async move { frontend::system_stats(&shared) }),
            )
            .route(
                "/features",
                get(|| async { raw_json(fixture!("features.json")) }),
            )
            .route(
                "/object_info",
                get(|shared: State<Arc<Shared>>| async move {
                    axum::Json((*shared.object_info()).clone())
                }),
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
            .route("/internal/logs", get(files::internal_logs))
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
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            origin::origin_check,
        ))
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
