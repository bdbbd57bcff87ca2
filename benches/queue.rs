//! The job path against a deep queue: N prompts queued back to back at the fake ComfyUI, directly and through
//! Orchestrator (the release binary, as a child process), and the wall time until the last one finished; then 200
//! clients following `/api/events` while jobs run.
//!
//!   cargo bench --bench queue                 # N = 60, 400 and 1000; 200 watchers
//!   QUEUE_SIZES=60 STEP_MS=2 WATCHERS=50 cargo bench --bench queue
//!
//! For each N it prints: the wall-time ratio Orchestrator / direct, the sockets opened at the backend, p50/p99 of
//! `POST /api/jobs` (answered once ComfyUI has the prompt), and Orchestrator's peak RSS (`VmHWM`). The fake replays
//! its recorded run with `STEP_MS` (default 3) between messages, so each prompt takes some time, as a real one does.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::fake_comfy::{FakeComfy, no_model_workflow};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn workflow(n: usize) -> Value {
    let mut workflow = no_model_workflow();
    workflow["1"]["inputs"]["color"] = json!(n);
    workflow
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The release Orchestrator, on its own data folder, in front of `comfy`.
struct Orchestrator {
    child: Child,
    addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl Orchestrator {
    async fn start(comfy: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let addr = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ORCH_BIND", addr.to_string())
            .env("ORCH_COMFY_BIND", "off")
            .env("COMFY_URL", comfy)
            .env("DATA_DIR", data.path())
            .env("SERVICE_BACKEND", "external")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the orchestrator binary starts");
        let http = reqwest::Client::new();
        let health = format!("http://{addr}/api/health");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(&health).send().await.is_err() {
            assert!(Instant::now() < deadline, "Orchestrator did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            addr,
            _data: data,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Peak resident memory so far, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until ComfyUI's queue is empty and it has run `n` prompts.
async fn drained(http: &reqwest::Client, comfy: &FakeComfy, n: usize) {
    loop {
        let queue: Value = http
            .get(format!("{}/queue", comfy.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let pending = ["queue_running", "queue_pending"]
            .iter()
            .map(|k| queue[*k].as_array().map_or(0, Vec::len))
            .sum::<usize>();
        if pending == 0 && comfy.received_prompts().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// N prompts posted straight to the fake ComfyUI; the wall time until it ran them all.
async fn direct(n: usize, step: Duration) -> Duration {
    let comfy = FakeComfy::start().await;
    comfy.set_step_delay(step);
    let http = reqwest::Client::new();
    let started = Instant::now();
    for i in 0..n {
        http.post(format!("{}/prompt", comfy.url()))
            .json(&json!({ "prompt": workflow(i), "client_id": "bench" }))
            .send()
            .await
            .unwrap();
    }
    drained(&http, &comfy, n).await;
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Counts jobs in a final state through `/api/jobs`, keyset page by page.
async fn finished_jobs(http: &reqwest::Client, orch: &Orchestrator) -> usize {
    let mut count = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = orch.url("/api/jobs?limit=200");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        count += page["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|j| j["finished_at"].is_string())
            .count();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return count,
        }
    }
}

struct Through {
    wall: Duration,
    /// Opened in all, and open at most at once.
    sockets: (usize, usize),
    submits: Vec<Duration>,
    rss_mib: f64,
}

/// N jobs posted to Orchestrator; the wall time until every one finished there.
async fn through(n: usize, step: Duration) -> Through {
    let comfy = FakeComfy::start().await;
    comfy.set_step_delay(step);
    let orch = Orchestrator::start(&comfy.url()).await;
    let http = reqwest::Client::new();
    // The link to ComfyUI opens with the first job; one job first, so the figures are of a connected backend.
    let warm = http
        .post(orch.url("/api/jobs"))
        .json(&json!({ "workflow": workflow(16_000_000) }))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 202, "{:?}", warm.text().await);
    drained(&http, &comfy, 1).await;
    while finished_jobs(&http, &orch).await < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut submits = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let sent = Instant::now();
        let response = http
            .post(orch.url("/api/jobs"))
            .json(&json!({ "workflow": workflow(i) }))
            .send()
            .await
            .unwrap();
        submits.push(sent.elapsed());
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
    }
    while finished_jobs(&http, &orch).await < n + 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = started.elapsed();
    submits.sort();
    let sockets = (comfy.sockets_opened(), comfy.sockets_peak());
    Through {
        wall,
        sockets,
        submits,
        rss_mib: orch.peak_rss_mib(),
    }
}

/// `watchers` clients follow `/api/events` while `jobs` jobs run; each reads until it saw every job end.
async fn watched(watchers: usize, jobs: usize, step: Duration) -> (usize, Duration, f64, bool) {
    let comfy = FakeComfy::start().await;
    comfy.set_step_delay(step);
    comfy.set_progress_steps(20);
    let orch = Orchestrator::start(&comfy.url()).await;
    let api = orchestrator::client::ApiClient::new(format!("http://{}", orch.addr), None);
    let mut streams = Vec::new();
    for _ in 0..watchers {
        streams.push(
            api.events("/api/events", None, Some(Duration::from_secs(600)))
                .await
                .expect("the stream opens"),
        );
    }
    let started = Instant::now();
    let http = reqwest::Client::new();
    for i in 0..jobs {
        http.post(orch.url("/api/jobs"))
            .json(&json!({ "workflow": workflow(10_000 + i) }))
            .send()
            .await
            .unwrap();
    }
    let watch = |mut stream: orchestrator::client::Events| async move {
        let (mut ids, mut ended) = (Vec::new(), std::collections::HashSet::new());
        while ended.len() < jobs {
            let Some(event) = stream.next().await else {
                break;
            };
            if let Some(id) = event.id.as_deref().and_then(|id| id.parse::<i64>().ok()) {
                ids.push(id);
            }
            let job = event.json().unwrap_or(Value::Null);
            if job["finished_at"].is_string() {
                ended.insert(job["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        ids
    };
    let seen: Vec<Vec<i64>> = futures_util::future::join_all(streams.into_iter().map(watch)).await;
    let elapsed = started.elapsed();
    let every =
        seen.iter().all(|ids| ids == &seen[0]) && seen[0].windows(2).all(|w| w[1] == w[0] + 1);
    let delivered = seen.iter().map(Vec::len).sum();
    (delivered, elapsed, orch.peak_rss_mib(), every)
}

#[tokio::main]
async fn main() {
    orchestrator::outbound::install_crypto_provider();
    let sizes: Vec<usize> = std::env::var("QUEUE_SIZES")
        .unwrap_or_else(|_| "60,400,1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let step = Duration::from_millis(env_or("STEP_MS", 3));
    let watchers = env_or("WATCHERS", 200);
    println!("queue benchmark: the fake ComfyUI replays each run with {step:?} between messages");
    println!(
        "| queued jobs | direct | through Orchestrator | ratio | sockets at ComfyUI | submit p50 | submit p99 | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let alone = direct(n, step).await;
        let via = through(n, step).await;
        println!(
            "| {n} | {:.1} s | {:.1} s | {:.3} | {} opened, {} at once | {:.2} ms | {:.2} ms | {:.1} MiB |",
            alone.as_secs_f64(),
            via.wall.as_secs_f64(),
            via.wall.as_secs_f64() / alone.as_secs_f64(),
            via.sockets.0,
            via.sockets.1,
            percentile(&via.submits, 0.5).as_secs_f64() * 1e3,
            percentile(&via.submits, 0.99).as_secs_f64() * 1e3,
            via.rss_mib,
        );
    }
    if watchers > 0 {
        let jobs = 100;
        let (delivered, elapsed, rss, every) = watched(watchers, jobs, step).await;
        println!(
            "{watchers} watchers of /api/events, {jobs} jobs: {delivered} events delivered in {:.1} s ({:.0}/s), \
             every client got every event in order: {every}, peak RSS {rss:.1} MiB",
            elapsed.as_secs_f64(),
            delivered as f64 / elapsed.as_secs_f64(),
        );
    }
}
