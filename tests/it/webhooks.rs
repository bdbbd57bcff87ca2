//! Webhooks: `JOB_WEBHOOK_URL` gets one signed JSON POST for every job that ends, from the store's outbox; a
//! receiver that is down gets every delivery once it is back, across an Orchestrator restart; one that hangs slows
//! nothing else.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;
use tokio::net::TcpListener;

use crate::support::{TestApp, wait_until};

const SECRET: &str = "the-receivers-shared-secret";

/// One POST the receiver got: its headers and body.
type Received = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A receiver on `listener` that records every POST and answers 204 (or, with `hang`, never answers).
fn receiver(listener: TcpListener, received: Received, hang: bool) -> tokio::task::JoinHandle<()> {
    async fn take(
        State((received, hang)): State<(Received, bool)>,
        headers: HeaderMap,
        body: String,
    ) -> StatusCode {
        received.lock().unwrap().push((headers, body));
        if hang {
            std::future::pending::<()>().await;
        }
        StatusCode::NO_CONTENT
    }
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(take))
        .with_state((received, hang));
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    })
}

async fn spawn(comfy: &FakeComfy, hook: &str, data: Option<String>) -> TestApp {
    let hook = hook.to_owned();
    TestApp::spawn_with(&comfy.url(), move |s| {
        s.job_webhook_url = Some(hook);
        s.job_webhook_secret = Some(SECRET.into());
        s.job_webhook_retry_ms = "50".into();
        if let Some(data) = data {
            s.data_dir = data;
        }
    })
    .await
}

/// Runs a no-model job (each `colour` a different workflow) to its end; answers its id.
async fn run_job(app: &TestApp, colour: u64) -> String {
    let mut workflow = testkit::fake_comfy::no_model_workflow();
    workflow["1"]["inputs"]["color"] = json!(colour);
    let (status, job) = app
        .post_json("/api/jobs", &json!({ "workflow": workflow }))
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    app.wait_for_job(&id, "succeeded").await;
    id
}

/// The server answers as ever: each of ten requests within half a second.
async fn answers_at_once(app: &TestApp) {
    for _ in 0..10 {
        let health = tokio::time::timeout(Duration::from_millis(500), app.get_json("/api/health"))
            .await
            .expect("/api/health answers within 500 ms");
        assert_eq!(health["status"], "ok");
    }
}

/// The body of a delivery whose signature verifies; panics on a bad one.
fn verified(headers: &HeaderMap, body: &str) -> Value {
    let timestamp = headers["x-orchestrator-timestamp"].to_str().unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let signed = format!("{timestamp}.{body}");
    let signature = headers["x-orchestrator-signature"].to_str().unwrap();
    let tag = hex::decode(signature.strip_prefix("sha256=").expect("sha256=<hex>")).unwrap();
    ring::hmac::verify(&key, signed.as_bytes(), &tag)
        .expect("the signature verifies with the secret");
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "a fresh timestamp: {age} s old");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-orchestrator-event"], "job.finished");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["type"], "job.finished");
    assert_eq!(
        body["delivery"],
        headers["x-orchestrator-delivery"].to_str().unwrap()
    );
    body
}

fn delivered_jobs(received: &Received) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(headers, body)| {
            verified(headers, body)["job"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

async fn wait_for_deliveries(received: &Received, count: usize) {
    wait_until(
        Duration::from_secs(30),
        &format!("{count} deliveries"),
        || async { received.lock().unwrap().len() >= count },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_that_ends_is_one_signed_post() {
    let comfy = FakeComfy::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let received = Received::default();
    let _receiver = receiver(listener, received.clone(), false);
    let app = spawn(&comfy, &hook, None).await;

    let first = run_job(&app, 1).await;
    let second = run_job(&app, 2).await;
    // A failed job ends too: ComfyUI refuses a workflow with a missing link.
    let mut bad = testkit::fake_comfy::no_model_workflow();
    bad["3"]["inputs"].as_object_mut().unwrap().remove("images");
    let (status, refused) = app
        .post_json("/api/jobs", &json!({ "workflow": bad }))
        .await;
    assert_eq!(status, 422, "{refused}");
    let failed = refused["error"]["details"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_deliveries(&received, 3).await;
    // One more, delivered after the others: nothing before it came twice.
    let last = run_job(&app, 3).await;
    wait_for_deliveries(&received, 4).await;

    let mut jobs = delivered_jobs(&received);
    assert_eq!(jobs.pop().as_deref(), Some(last.as_str()));
    jobs.sort();
    let mut expected = vec![first.clone(), second, failed.clone()];
    expected.sort();
    assert_eq!(jobs, expected, "each ended job once");
    let bodies: Vec<Value> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(h, b)| verified(h, b))
        .collect();
    let of = |id: &str| {
        bodies
            .iter()
            .find(|b| b["job"]["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(of(&first)["job"]["status"], "succeeded");
    assert!(
        of(&first)["job"]["outputs"][0]["url"].is_string(),
        "{}",
        of(&first)
    );
    assert_eq!(of(&failed)["job"]["status"], "failed");
    assert_eq!(received.lock().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_was_down_gets_every_delivery_after_a_restart() {
    let comfy = FakeComfy::start().await;
    // The receiver's port, with nothing listening on it yet: every attempt is refused.
    let reserved = crate::support::reserved_port();
    let port = reserved.addr;
    let hook = format!("http://{port}/hook");
    let data = tempfile::tempdir().unwrap();
    let folder = data.path().display().to_string();
    let app = spawn(&comfy, &hook, Some(folder.clone())).await;
    let first = run_job(&app, 11).await;
    let second = run_job(&app, 12).await;
    // Meanwhile the server answers as ever.
    answers_at_once(&app).await;
    app.stop().await;

    // Orchestrator comes back first, then the receiver.
    let app = spawn(&comfy, &hook, Some(folder)).await;
    let received = Received::default();
    let listener = TcpListener::bind(port).await.unwrap();
    let _receiver = receiver(listener, received.clone(), false);
    wait_for_deliveries(&received, 2).await;
    let mut jobs = delivered_jobs(&received);
    jobs.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(jobs, expected);
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_slows_nothing_else() {
    let comfy = FakeComfy::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let received = Received::default();
    let _receiver = receiver(listener, received.clone(), true);
    let app = spawn(&comfy, &hook, None).await;
    run_job(&app, 21).await;
    wait_for_deliveries(&received, 1).await;
    // The delivery hangs; jobs run and requests are answered as before.
    tokio::time::timeout(Duration::from_secs(5), run_job(&app, 22))
        .await
        .expect("a job runs to its end within 5 s while a delivery hangs");
    answers_at_once(&app).await;
}
