//! Bad input never loses data: on every route that writes, a body that is too large, not JSON, malformed or of the
//! wrong shape gets a JSON error with its code, and the store, the outputs folder and extra_model_paths.yaml stay
//! exactly as they were.

use std::path::Path;

use serde_json::{Value, json};
use testkit::fake_comfy::{FakeComfy, no_model_workflow};

use crate::support::TestApp;

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
    app.run_workflow(no_model_workflow()).await;
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

/// What the schema fuzz run found, kept as plain regression tests: each answered in plain text or was accepted.
#[tokio::test]
async fn what_the_schema_fuzz_found_stays_fixed() {
    let fake = FakeComfy::start().await;
    let comfy_dir = tempfile::tempdir().unwrap();
    let file = comfy_dir.path().join("extra_model_paths.yaml");
    std::fs::write(&file, USER_FILE).unwrap();
    let dir = comfy_dir.path().display().to_string();
    let app = TestApp::spawn_with(&fake.url(), move |s| {
        s.comfy_dir = Some(dir);
        s.models_dir = Some("/srv/models".into());
    })
    .await;
    let gets = [
        // A repeated query parameter was axum's plain-text 400.
        ("/api/jobs?status=queued&status=queued", 422),
        // An empty status was taken as "any", though the schema allows only the status words.
        ("/api/jobs?status=", 422),
        ("/api/logs/comfy?lines=1&lines=2", 422),
        ("/api/models?refresh=1&refresh=0", 422),
        // A malformed resume point was ignored.
        ("/api/events?last_event_id=abc", 422),
        ("/api/events?last_event_id=-1", 422),
    ];
    for (path, status) in gets {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(body["error"]["code"], "validation_failed", "{path}: {body}");
    }
    let events = app
        .http
        .get(app.url("/api/events"))
        .header("Last-Event-ID", "not-a-number")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 422, "a malformed Last-Event-ID");
    // No body, or only whitespace, wrote the default section.
    for body in ["", " ", "\n"] {
        let response = app
            .http
            .post(app.url("/api/comfy/create-default-paths"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{body:?}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), USER_FILE);
    // `{}` is how the defaults are asked for.
    let response = app
        .http
        .post(app.url("/api/comfy/create-default-paths"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A known route asked with another method: the error body, not an empty 405.
    let response = app.http.put(app.url("/api/jobs")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}
