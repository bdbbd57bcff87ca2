//! `/api/models`: model lists read from ComfyUI's node definitions, cached.

use serde_json::Value;
use testkit::fake_comfy::FakeComfy;

use crate::support::{TestApp, closed_port, error_code};

const FOLDERS: [&str; 9] = [
    "checkpoints",
    "loras",
    "controlnet",
    "vae",
    "upscale_models",
    "clip",
    "clip_vision",
    "diffusion_models",
    "embeddings",
];

#[tokio::test]
async fn lists_every_folder_from_object_info() {
    let fake = FakeComfy::start_with_models(&[
        ("checkpoints", "sd_xl_base_1.0.safetensors"),
        ("upscale_models", "4x-UltraSharp.pth"),
        ("loras", "detail.safetensors"),
    ])
    .await;
    let app = TestApp::spawn(&fake.url()).await;
    let body: Value = app.get_json("/api/models").await;
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = FOLDERS.to_vec();
    expected.sort();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort();
    assert_eq!(keys_sorted, expected);
    assert_eq!(
        body["checkpoints"],
        serde_json::json!(["sd_xl_base_1.0.safetensors"])
    );
    assert_eq!(
        body["upscale_models"],
        serde_json::json!(["4x-UltraSharp.pth"]),
        "a V3 combo"
    );
    assert_eq!(body["loras"], serde_json::json!(["detail.safetensors"]));
    assert_eq!(
        body["vae"],
        serde_json::json!([]),
        "pixel_space is not a file"
    );
}

#[tokio::test]
async fn answers_from_cache_until_refresh() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let count_object_info = || {
        fake.requests()
            .iter()
            .filter(|r| r.path == "/object_info")
            .count()
    };

    for _ in 0..3 {
        let response = app.http.get(app.url("/api/models")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        count_object_info(),
        1,
        "later calls are served from the cache"
    );
    app.http
        .get(app.url("/api/models?refresh=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(count_object_info(), 2, "refresh rescans");
}

#[tokio::test]
async fn comfy_offline_is_503_with_a_code() {
    let down = closed_port().await;
    let app = TestApp::spawn(&format!("http://{down}")).await;
    let response = app.http.get(app.url("/api/models")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(error_code(&response.json().await.unwrap()), "comfy_offline");
}
