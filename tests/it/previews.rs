//! Live previews: ComfyUI's preview frames of a running job kept (the latest only) and served at
//! `/api/jobs/{id}/preview`, announced by `preview` events; gone once the job ends.

use std::time::Duration;

use serde_json::json;
use testkit::fake_comfy::FakeComfy;

use crate::support::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_jobs_latest_preview_is_served_and_announced_then_gone() {
    let comfy = FakeComfy::start_with_models(&[("checkpoints", "tiny-sd15.safetensors")]).await;
    // The recorded sampler run: four steps, each a progress message and a JPEG preview frame.
    comfy.set_step_delay(Duration::from_millis(150));
    let app = TestApp::spawn(&comfy.url()).await;
    let (status, job) = app
        .post_json(
            "/api/jobs",
            &json!({"workflow": testkit::fake_comfy::ksampler_workflow()}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let preview_path = format!("/api/jobs/{id}/preview");

    let mut events = app
        .api()
        .events(
            &format!("/api/jobs/{id}/events"),
            None,
            Some(Duration::from_secs(30)),
        )
        .await
        .unwrap_or_else(|reply| panic!("{}", reply.body));
    let mut seen = Vec::new();
    let mut announced = 0;
    let mut last = None;
    while let Some(event) = events.next().await {
        if event.kind.as_deref() == Some("preview") {
            announced += 1;
            let response = app.http.get(app.url(&preview_path)).send().await.unwrap();
            if response.status() == 200 {
                assert_eq!(response.headers()["content-type"], "image/jpeg");
                assert_eq!(response.headers()["cache-control"], "no-store");
                assert_eq!(response.headers()["x-content-type-options"], "nosniff");
                let number: u64 = response.headers()["x-preview-number"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let bytes = response.bytes().await.unwrap();
                assert_eq!(
                    &bytes[..3],
                    &[0xff, 0xd8, 0xff],
                    "a JPEG, as ComfyUI sent it"
                );
                seen.push((number, bytes));
            }
        }
        last = event.json();
    }
    assert_eq!(last.unwrap()["status"], "succeeded");
    assert!(announced >= 2, "{announced} preview events");
    assert!(
        announced <= 4,
        "at most one event per frame, and never more than two a second: {announced}"
    );
    assert!(
        seen.len() >= 2,
        "{} previews read while the job ran",
        seen.len()
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 != w[1].1),
        "each read is a newer, different image"
    );

    // Ended: nothing kept, and no error for a page that asks late; an unknown job is still a 404.
    let after = app.http.get(app.url(&preview_path)).send().await.unwrap();
    assert_eq!(after.status(), 204);
    let unknown = app
        .http
        .get(app.url("/api/jobs/0190d6a1-0000-7000-8000-000000000000/preview"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // A stream resumed from the start replays the stored preview events among the others.
    let replayed = app
        .events(&format!("/api/jobs/{id}/events"), Some("0"))
        .await;
    let kinds = replayed
        .iter()
        .filter(|e| e.kind.as_deref() == Some("preview"))
        .count();
    assert_eq!(kinds, announced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_stream_carries_the_previews_as_the_contract_says() {
    let comfy = FakeComfy::start_with_models(&[("checkpoints", "tiny-sd15.safetensors")]).await;
    comfy.set_step_delay(Duration::from_millis(150));
    let app = TestApp::spawn(&comfy.url()).await;
    let (status, job) = app
        .post_json(
            "/api/v2/jobs",
            &json!({"workflow": testkit::fake_comfy::ksampler_workflow()}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    let frames = app.events(&format!("/api/v2/jobs/{id}/events"), None).await;
    let previews: Vec<serde_json::Value> = frames
        .iter()
        .filter(|f| f.kind.as_deref() == Some("preview"))
        .map(|f| f.json().unwrap())
        .collect();
    assert!(previews.len() >= 2, "{} preview frames", previews.len());
    use base64::Engine as _;
    for preview in &previews {
        // PreviewEvent: exactly these fields.
        let keys: Vec<&String> = preview.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["content_type", "data_base64", "node_id"],
            "{preview}"
        );
        assert_eq!(preview["content_type"], "image/jpeg");
        assert!(preview["node_id"].is_string());
        let image = base64::engine::general_purpose::STANDARD
            .decode(preview["data_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(&image[..3], &[0xff, 0xd8, 0xff]);
    }
    assert_ne!(previews[0]["data_base64"], previews[1]["data_base64"]);
    let last = frames.last().unwrap().json().unwrap();
    assert_eq!(last["status"], "succeeded");
}
