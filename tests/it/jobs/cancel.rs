//! Cancelling a job: queued, running, or while it is being sent to ComfyUI.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;

use super::{job, submit, workflow};
use crate::support::{TestApp, error_code, wait_until};

/// A cancel that arrives while the dispatcher is posting the job to ComfyUI: the job ends `cancelled` and stays so
/// (no `submitted` afterwards), and ComfyUI's copy is deleted from its queue or interrupted, never run to its end.
#[tokio::test]
async fn a_cancel_during_the_submit_stays_cancelled_and_comfy_drops_its_copy() {
    let fake = FakeComfy::start().await;
    fake.set_step_delay(Duration::from_millis(100));
    let upstream: std::net::SocketAddr = fake.url().trim_start_matches("http://").parse().unwrap();
    let relay =
        crate::support::delaying_relay(upstream, b"POST /prompt", Duration::from_millis(1500))
            .await;
    let app = TestApp::spawn(&format!("http://{relay}")).await;

    let submitting = tokio::spawn({
        let http = app.http.clone();
        let url = app.url("/api/jobs");
        async move {
            http.post(url)
                .json(&json!({ "workflow": workflow(11) }))
                .send()
                .await
                .unwrap()
        }
    });
    wait_until(Duration::from_secs(10), "the job is recorded", || async {
        app.get_json("/api/jobs").await["jobs"][0]["id"].is_string()
    })
    .await;
    let id = app.get_json("/api/jobs").await["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancelled: Value = app
        .http
        .post(app.url(&format!("/api/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(
        fake.received_prompts().is_empty(),
        "cancelled before ComfyUI had it"
    );

    // The submit comes back from ComfyUI with a prompt id: it does not bring the job back.
    let answer = tokio::time::timeout(Duration::from_secs(15), submitting)
        .await
        .expect("the submit ends")
        .unwrap();
    assert_ne!(answer.status(), 202, "the job was not submitted after all");
    assert_eq!(fake.received_prompts().len(), 1, "the POST was on its way");
    let deleted = fake
        .requests()
        .iter()
        .any(|r| r.path == "/queue" && r.method == "POST");
    assert!(deleted, "ComfyUI was told to delete its copy");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.path == "/interrupt" && r.method == "POST"),
        "and to interrupt it if it had started"
    );
    let history: Value = crate::support::client()
        .get(format!("{}/history", fake.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        history
            .as_object()
            .unwrap()
            .values()
            .all(|entry| entry["status"]["status_str"] != "success"),
        "ComfyUI did not run it to its end: {history}"
    );
    let job = job(&app, &id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let states: Vec<String> = app
        .events(&format!("/api/jobs/{id}/events"), Some("0"))
        .await
        .iter()
        .filter_map(|event| event.json())
        .map(|job| job["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("cancelled"),
        "{states:?}"
    );
    assert!(!states.iter().any(|s| s == "submitted"), "{states:?}");
}

#[tokio::test]
async fn cancel_removes_a_queued_job_and_interrupts_a_running_one() {
    let fake = FakeComfy::start().await;
    fake.set_step_delay(Duration::from_millis(150));
    let app = TestApp::spawn(&fake.url()).await;
    let running: Value = submit(&app, json!({ "workflow": workflow(3) }))
        .await
        .json()
        .await
        .unwrap();
    let queued: Value = submit(&app, json!({ "workflow": workflow(4) }))
        .await
        .json()
        .await
        .unwrap();
    let (running, queued) = (
        running["id"].as_str().unwrap().to_owned(),
        queued["id"].as_str().unwrap().to_owned(),
    );
    app.wait_for_job(&running, "running").await;

    let cancelled: Value = app
        .http
        .post(app.url(&format!("/api/jobs/{queued}/cancel")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let queue: Value = crate::support::client()
        .get(format!("{}/queue", fake.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        queue["queue_pending"],
        json!([]),
        "removed from ComfyUI's queue"
    );

    let response = app
        .http
        .post(app.url(&format!("/api/jobs/{running}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.wait_for_job(&running, "cancelled").await;
    assert!(fake.requests().iter().any(|r| r.path == "/interrupt"));

    let again = app
        .http
        .post(app.url(&format!("/api/jobs/{running}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(error_code(&again.json().await.unwrap()), "job_finished");
}
