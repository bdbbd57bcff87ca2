//! Bad input never loses data: on every route that writes, a body that is too large, not JSON, malformed or of the
//! wrong shape gets a JSON error with its code, and the store, the outputs folder and extra_model_paths.yaml stay
//! exactly as they were.

use std::path::Path;
use std::time::Duration;

use orchestrator::testkit::fake_comfy::{FakeComfy, no_model_workflow};
use serde_json::{Value, json};

use crate::support::{TestApp, wait_until};

const USER_FILE: &str = "mine:\n    base_path: /srv/models\n    checkpoints: checkpoints\n";

fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

async fn state(app: &TestApp, comfy_dir: &Path) -> (Value, Value, Vec<(String, Vec<u8>)>) {
    let mut files = tree(&app.data_dir.join("outputs"));
    files.extend(tree(comfy_dir));
    (
        app.get_json("/api/jobs?limit=500").await,
        app.get_json("/api/builder/messages").await,
        files,
    )
}

#[tokio::test]
async fn oversized_malformed_and_mistyped_bodies_change_nothing() {
    let fake = FakeComfy::start().await;
    let comfy_dir = tempfile::tempdir().unwrap();
    std::fs::write(comfy_dir.path().join("extra_model_paths.yaml"), USER_FILE).unwrap();
    let dir = comfy_dir.path().display().to_string();
    let app = TestApp::spawn_with(&fake.url(), move |s| {
        s.comfy_dir = Some(dir);
        s.models_dir = Some("/srv/models".into());
        s.v0_api_key = Some("v0-key-for-bad-input".into());
        s.v0_base_url = "http://127.0.0.1:9".into();
    })
    .await;
    let created: Value = app
        .http
        .post(app.url("/api/jobs"))
        .json(&json!({ "workflow": no_model_workflow() }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = format!("/api/jobs/{}", created["id"].as_str().unwrap());
    wait_until(
        Duration::from_secs(20),
        "the first job succeeds",
        || async { app.get_json(&job).await["status"] == "succeeded" },
    )
    .await;
    let before = state(&app, comfy_dir.path()).await;

    let routes = [
        ("/api/jobs", 72 * 1024 * 1024),
        ("/api/flux/generate", 32 * 1024 * 1024),
        ("/api/comfy/create-default-paths", 2 * 1024 * 1024),
        ("/api/comfy/restore-paths", 2 * 1024 * 1024),
        ("/api/builder/messages", 2 * 1024 * 1024),
    ];
    for (route, limit) in routes {
        let too_large = vec![b' '; limit + 1024];
        let bodies: [(&str, Vec<u8>, u16, &str); 6] = [
            ("application/json", too_large, 413, "payload_too_large"),
            ("text/plain", b"{}".to_vec(), 415, "unsupported_media_type"),
            ("application/json", b"{\"a\": ".to_vec(), 422, "validation_failed"),
            ("application/json", b"[1, 2, 3]".to_vec(), 422, "validation_failed"),
            ("application/json", b"\"text\"".to_vec(), 422, "validation_failed"),
            (
                "application/json",
                br#"{"workflow": 5, "base_path": 7, "backup_path": [], "message": {}, "prompt": 3}"#.to_vec(),
                422,
                "validation_failed",
            ),
        ];
        for (content_type, body, status, code) in bodies {
            let size = body.len();
            let response = app
                .http
                .post(app.url(route))
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status().as_u16(),
                status,
                "{route} with {size} bytes of {content_type}"
            );
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(
                answer["error"]["code"], code,
                "{route} with {size} bytes of {content_type}: {answer}"
            );
        }
    }
    let after = state(&app, comfy_dir.path()).await;
    assert!(
        before == after,
        "a refused request changed the store or a file"
    );
}
