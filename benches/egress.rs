//! The Comfy.org egress's cost per call: what Orchestrator adds (the job's key looked up, the call priced, metered
//! under the money lock, forwarded with the server's key, settled) over calling the Comfy.org API directly, on the
//! fake Comfy.org of the tests and the embedded SQLite store. `cargo bench --bench egress` (`EGRESS_CALLS` for
//! another count than 2,000 each). Prints the median and the 99th percentile of each way, and their difference.

use std::time::{Duration, Instant};

use orchestrator::config::Settings;
use orchestrator::jobs::egress::JobKey;
use orchestrator::model::Backend;
use orchestrator::store::{NewJob, PaidJob, Record, Reservation, Store};
use serde_json::json;
use testkit::fake_comfy_org::FakeComfyOrg;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let calls: usize = std::env::var("EGRESS_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let org = FakeComfyOrg::start().await;
    org.set_price(0.0);
    let data = tempfile::tempdir().expect("temp dir");
    let settings = Settings {
        bind: "127.0.0.1:0".into(),
        comfy_bind: "off".into(),
        data_dir: data.path().display().to_string(),
        // No ComfyUI is needed: the calls are made as its API nodes would make them.
        comfy_url: "http://127.0.0.1:9".into(),
        comfy_org_api_key: Some("comfy-org-bench-key".into()),
        comfy_org_api_base: org.url(),
        log_format: Some("json".into()),
        ..Settings::defaults()
    };
    let config = settings.validate(false).expect("valid settings");
    let key = running_job(config.database_url.expose()).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(orchestrator::run_with_editor(
        config,
        listener,
        None,
        async {
            let _ = stopped.await;
        },
    ));
    orchestrator::outbound::install_crypto_provider();
    let http = reqwest::Client::new();
    let egress = format!("http://{addr}/api/comfy-org");
    let direct = org.url();
    // Both ways warmed up: connections open, the store's pages in memory.
    for base in [&egress, &direct] {
        for _ in 0..50 {
            call(&http, base, &key, "GET").await;
            call(&http, base, &key, "POST").await;
        }
    }
    println!("{calls} calls each, one at a time (this machine)");
    for (what, method) in [
        ("a poll (GET, free)", "GET"),
        ("a generation (POST, metered)", "POST"),
    ] {
        let direct = timed(calls, || call(&http, &direct, &key, method)).await;
        let through = timed(calls, || call(&http, &egress, &key, method)).await;
        println!(
            "  {what}: direct p50 {:.0} µs p99 {:.0} µs; through the egress p50 {:.0} µs p99 {:.0} µs; \
             added p50 {:.0} µs p99 {:.0} µs",
            direct.0,
            direct.1,
            through.0,
            through.1,
            through.0 - direct.0,
            through.1 - direct.1
        );
    }
    let with_server_key = org
        .calls()
        .iter()
        .filter(|c| c.api_key.as_deref() == Some("comfy-org-bench-key"))
        .count();
    println!(
        "  calls through the egress that reached Comfy.org with the server's key: {with_server_key} of {}",
        100 + 2 * calls
    );
    let _ = stop.send(());
    let _ = server.await;
}

/// A paid job that may spend without end, `queued` (so its key opens the egress), with a key of its own.
async fn running_job(database_url: &str) -> JobKey {
    let store = Store::open(database_url).await.expect("the store opens");
    let workflow = json!({"1": {"class_type": "FluxProUltraImageNode", "inputs": {}}});
    let paid = PaidJob {
        record: Record::New {
            job: NewJob {
                backend: Backend::Comfy,
                template: None,
                params: &json!({}),
                workflow: &workflow,
                backend_url: None,
            },
            approval: None,
        },
        cost_micros: i64::MAX / 4,
        day: "2026-12-08",
        budget_micros: i64::MAX / 2,
        idempotency: None,
        token_id: "bench",
    };
    let Ok(Reservation::Reserved(job)) = store.reserve_paid_job(paid).await else {
        panic!("the job is reserved");
    };
    let key = JobKey::new();
    store
        .set_egress_key(&job.id, &key.hash())
        .await
        .expect("the key is kept");
    store.close().await;
    key
}

async fn call(http: &reqwest::Client, base: &str, key: &JobKey, method: &str) {
    let request = match method {
        "GET" => http.get(format!("{base}/proxy/bfl/get_result?id=1")),
        _ => http
            .post(format!("{base}/proxy/bfl/flux-pro-1.1-ultra/generate"))
            .json(&json!({"prompt": "a harbour at dawn", "aspect_ratio": "16:9"})),
    };
    let answer = request
        .header("X-API-KEY", key.expose())
        .send()
        .await
        .expect("an answer");
    // The fake answers GETs it does not know with 404; either way a whole answer came back.
    let _ = answer.bytes().await;
}

/// The median and the 99th percentile of `calls` runs of `one`, in microseconds.
async fn timed<F, Fut>(calls: usize, mut one: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut took: Vec<Duration> = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        one().await;
        took.push(start.elapsed());
    }
    took.sort();
    let at =
        |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)].as_micros() as f64;
    (at(0.5), at(0.99))
}
