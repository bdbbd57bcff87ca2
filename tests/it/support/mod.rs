//! Test support: the real server on a random port, raw-socket requests, and waiting on conditions.

#![allow(dead_code)]

pub mod served;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use orchestrator::client::{ApiClient, Event};
use orchestrator::config::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Settings as a fresh install has them, pointed at `comfy_url`, with data in `data_dir`.
pub fn settings(comfy_url: &str, data_dir: &std::path::Path) -> Settings {
    Settings {
        // Each test's own ports, data and ComfyUI; a supervised ComfyUI is started only by the tests that ask.
        bind: "127.0.0.1:0".into(),
        comfy_bind: "127.0.0.1:0".into(),
        data_dir: data_dir.display().to_string(),
        comfy_url: comfy_url.into(),
        service_backend: Some("supervised".into()),
        log_format: Some("json".into()),
        ..Settings::defaults()
    }
}

/// The variable that runs the suite with every app's store on PostgreSQL (`TEST_STORE=postgres`, on the cluster
/// `TEST_DATABASE_URL` names) instead of the embedded SQLite file.
pub const STORE_VARIABLE: &str = "TEST_STORE";

/// Whether this run puts the apps' stores on PostgreSQL.
pub fn on_postgres() -> bool {
    match std::env::var(STORE_VARIABLE).as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("{STORE_VARIABLE}={other}: expected sqlite or postgres"),
    }
}

/// The store URL of the app whose data folder is `data_dir`: the SQLite file in it, or on a PostgreSQL run a
/// database of its own, made the first time the folder is named, so an app restarted on the same folder (and a
/// test that opens the store beside it) finds the same rows.
pub fn database_for(data_dir: &std::path::Path) -> String {
    if !on_postgres() {
        return format!("sqlite://{}", data_dir.join("orchestrator.db").display());
    }
    static DATABASES: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());
    let mut databases = DATABASES.lock().unwrap();
    if let Some((_, url)) = databases.iter().find(|(dir, _)| dir == data_dir) {
        return url.clone();
    }
    let url = testkit::postgres::fresh_database_blocking().unwrap_or_else(|| {
        panic!(
            "{STORE_VARIABLE}=postgres needs the test cluster in {}",
            testkit::postgres::VARIABLE
        )
    });
    databases.push((data_dir.to_owned(), url.clone()));
    url
}

/// Orchestrator serving on a random loopback port, stopped when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    /// ComfyUI's editor, on its own origin.
    pub editor_addr: SocketAddr,
    pub data_dir: PathBuf,
    _data: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub http: reqwest::Client,
    /// Ports kept for processes this app's test started ([`TestApp::holding`]).
    reserved: Vec<ReservedPort>,
}

impl TestApp {
    pub async fn spawn(comfy_url: &str) -> Self {
        Self::spawn_with(comfy_url, |_| {}).await
    }

    pub async fn spawn_with(comfy_url: &str, adjust: impl FnOnce(&mut Settings)) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut settings = settings(comfy_url, data.path());
        adjust(&mut settings);
        if settings.database_url.is_none() && on_postgres() {
            settings.database_url = Some(database_for(std::path::Path::new(&settings.data_dir)));
        }
        let config = settings.validate(false).expect("test settings are valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let editor = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let editor_addr = editor.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            orchestrator::run_with_editor(config, listener, Some(editor), shutdown)
                .await
                .expect("server runs");
        });
        let http = client();
        let app = Self {
            addr,
            editor_addr,
            data_dir: data.path().to_owned(),
            _data: Some(data),
            stop: Some(stop),
            task: Some(task),
            http,
            reserved: Vec::new(),
        };
        let url = app.url("/api/health");
        let client = app.http.clone();
        wait_until(
            Duration::from_secs(10),
            "the server accepts requests",
            || {
                let client = client.clone();
                let url = url.clone();
                async move { client.get(url).send().await.is_ok() }
            },
        )
        .await;
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Keeps `port` reserved while this app lives (the ComfyUI it supervises listens there, restarts included).
    pub fn holding(mut self, port: ReservedPort) -> Self {
        self.reserved.push(port);
        self
    }

    /// `path` on ComfyUI's editor origin.
    pub fn editor_url(&self, path: &str) -> String {
        format!("http://{}{}", self.editor_addr, path)
    }

    /// GETs `path` and reads the answer as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Stops the server and waits until it has: its store closed and its background work ended.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the server stops within 30 s")
                .expect("the server task ends cleanly");
        }
    }

    /// Submits an API-format workflow and waits until the job has succeeded; answers the job's API path.
    pub async fn run_workflow(&self, workflow: serde_json::Value) -> String {
        let job = run_workflow_at(&self.http, &self.url(""), &workflow).await;
        format!("/api/jobs/{}", job["id"].as_str().expect("a job id"))
    }

    /// The API as the CLI and the MCP server call it.
    pub fn api(&self) -> ApiClient {
        ApiClient::for_server(self.addr, None)
    }

    /// POSTs to `path`: `body` as JSON (no body at all when `None`), with an `Idempotency-Key` when `key` is given.
    pub async fn post(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
        key: Option<&str>,
    ) -> Posted {
        post_to(&self.http, self.url(path), body, key).await
    }

    /// POSTs `body` as JSON; answers the status and the JSON body (`Null` when it is not JSON).
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.post_json_with_key(path, body, None).await
    }

    /// [`TestApp::post_json`] with an `Idempotency-Key` when `key` is given.
    pub async fn post_json_with_key(
        &self,
        path: &str,
        body: &serde_json::Value,
        key: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let posted = self.post(path, Some(body), key).await;
        (posted.status, posted.body)
    }

    /// Waits (30 s at most) until job `id` is `status`; answers the job.
    pub async fn wait_for_job(&self, id: &str, status: &str) -> serde_json::Value {
        let path = format!("/api/jobs/{id}");
        wait_until(
            Duration::from_secs(30),
            &format!("job {id} is {status}"),
            || async { self.get_json(&path).await["status"] == status },
        )
        .await;
        self.get_json(&path).await
    }

    /// Every event of the stream at `path` until it ends (30 s at most), resumed after `last_event_id`.
    pub async fn events(&self, path: &str, last_event_id: Option<&str>) -> Vec<Event> {
        let events = self
            .api()
            .events(path, last_event_id, Some(Duration::from_secs(30)))
            .await
            .unwrap_or_else(|reply| panic!("{path} answered {}: {}", reply.status, reply.body));
        events.collect().await
    }

    /// The origin the panel's own page has.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What a POST answered: its status, its JSON body (`Null` when it is not JSON) and its headers.
#[derive(Debug)]
pub struct Posted {
    pub status: u16,
    pub body: serde_json::Value,
    pub headers: reqwest::header::HeaderMap,
}

/// The suite's one POST, to `url`: `body` as JSON (no body at all when `None`), with an `Idempotency-Key` when
/// `key` is given. [`TestApp::post`] and its shapes go through it, and so does a test that talks to a server it
/// started itself (a fleet's processes).
pub async fn post_to(
    http: &reqwest::Client,
    url: String,
    body: Option<&serde_json::Value>,
    key: Option<&str>,
) -> Posted {
    let mut request = http.post(url);
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .json::<serde_json::Value>()
        .await
        .unwrap_or(serde_json::Value::Null);
    Posted {
        status,
        body,
        headers,
    }
}

/// An HTTP client for tests (rustls needs its crypto provider installed before the first client is built).
pub fn client() -> reqwest::Client {
    orchestrator::outbound::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Polls `condition` until it holds, failing the test at `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a streamed answer until it ends: the bytes received, and whether it ended with an error (cut) rather
/// than complete. Fails the test if no chunk comes for 5 s.
pub async fn read_until_cut(response: reqwest::Response) -> (usize, bool) {
    use futures_util::StreamExt;
    let started = Instant::now();
    let mut stream = response.bytes_stream();
    let mut received = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Err(_) => panic!("the stream was not cut after {:?}", started.elapsed()),
            Ok(Some(Ok(chunk))) => received += chunk.len(),
            Ok(Some(Err(_))) => return (received, true),
            Ok(None) => return (received, false),
        }
    }
}

/// A raw HTTP/1.1 exchange, for request shapes an HTTP client library would normalise away. Returns the status
/// and the whole response text (the request asks the server to close the connection).
pub async fn raw_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "no complete answer to {request:?}");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A loopback listener that only counts connections: the target SSRF tests must never reach.
pub struct Bait {
    pub addr: SocketAddr,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Bait {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((_socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        Self { addr, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A loopback port on which nothing listens, held for as long as the value lives: the socket is bound but never
/// listens, so connections are refused, and no other test can be handed the same port meanwhile (a port that is
/// merely released can be given to the next fake another test starts).
pub struct ClosedPort {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

impl std::fmt::Display for ClosedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

pub async fn closed_port() -> ClosedPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    ClosedPort {
        addr,
        _socket: socket,
    }
}

/// Submits an API-format workflow to the server at `base` and waits (30 s at most) until its job has succeeded;
/// answers the job.
pub async fn run_workflow_at(
    http: &reqwest::Client,
    base: &str,
    workflow: &serde_json::Value,
) -> serde_json::Value {
    let get = |url: String| async move {
        let response = http.get(url).send().await.unwrap();
        response.json::<serde_json::Value>().await.unwrap()
    };
    let created: serde_json::Value = http
        .post(format!("{base}/api/jobs"))
        .json(&serde_json::json!({ "workflow": workflow }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!(
        "{base}/api/jobs/{}",
        created["id"].as_str().expect("a job id")
    );
    wait_until(Duration::from_secs(30), "the job succeeds", || async {
        get(url.clone()).await["status"] == "succeeded"
    })
    .await;
    get(url).await
}

/// A loopback port kept for a process the test starts, for as long as the value lives: bound with `SO_REUSEADDR` and
/// never listening. A port merely released could be handed to the next `bind(…:0)` of another test (a fake, a
/// server) while the child is still starting, or between two of its restarts, and the test would then talk to a
/// stranger; Linux never hands out a port that has a bound socket, while the child's own bind and listen (std and
/// tokio set `SO_REUSEADDR`) succeed beside this one. Until the child listens, connections are refused.
pub struct ReservedPort {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

pub fn reserved_port() -> ReservedPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    ReservedPort {
        addr,
        _socket: socket,
    }
}

/// Asserts the shared error body and returns its code.
pub fn error_code(body: &serde_json::Value) -> String {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message in {body}"
    );
    assert!(error["details"].is_object(), "no details in {body}");
    error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {body}"))
        .to_owned()
}

/// A TCP relay in front of `upstream` that holds back every chunk a client sends containing `needle` (such as
/// `POST /prompt`) for `delay` before passing it on: a slow network or a busy ComfyUI at exactly one request, to
/// open the window a race needs. Answers the relay's address.
pub async fn delaying_relay(
    upstream: SocketAddr,
    needle: &'static [u8],
    delay: Duration,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if buffer[..n].windows(needle.len()).any(|w| w == needle) {
                            tokio::time::sleep(delay).await;
                        }
                        if server_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_write.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    let _ = client_write.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

/// The fake ComfyUI as a program, for the tests that supervise a real child process. It lives in the `testkit`
/// crate, whose binaries `cargo test` of this package does not build: it is built here once per test run (as the
/// `escargot` crate does), into the same target folder, and found beside the test binary.
pub fn fake_comfyui() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        // target/<profile>/deps/it-<hash> → target/<profile>
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target/");
        let release = profile_dir
            .file_name()
            .is_some_and(|name| name == "release");
        let mut build = std::process::Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "testkit", "--bin", "fake-comfyui"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // Without the variables cargo sets for a test process, so this build is the one `cargo build -p testkit`
        // makes (they would otherwise make build scripts run again, and the next plain build undo it).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if (name.starts_with("CARGO_") && name != "CARGO_HOME") || name == "OUT_DIR" {
                build.env_remove(name.as_ref());
            }
        }
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building fake-comfyui failed");
        let name = format!("fake-comfyui{}", std::env::consts::EXE_SUFFIX);
        profile_dir.join(name).display().to_string()
    })
}
