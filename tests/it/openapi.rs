//! The published contract: the OpenAPI document generated from the code, the committed copy of it, the panel's
//! page that lists it, and (with `SCHEMATHESIS` set, from the README's test command) the schema fuzz run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::fake_bfl::FakeBfl;
use testkit::fake_comfy::{FakeComfy, no_model_workflow};
use testkit::fake_v0::FakeV0;

use crate::support::TestApp;

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

#[test]
fn the_committed_document_is_what_the_code_generates() {
    let generated =
        orchestrator::http::openapi::to_json(orchestrator::http::router::openapi_document());
    let on_disk = std::fs::read_to_string(committed()).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/openapi.json is out of date: run `cargo run -- openapi --write docs/openapi.json`"
    );
}

#[tokio::test]
async fn the_server_serves_the_document_and_every_route_in_it_is_served() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let served = app.get_json("/api/openapi.json").await;
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(committed()).unwrap()).unwrap();
    assert_eq!(served, on_disk);
    assert_eq!(served["openapi"], "3.1.0");
    assert!(served["components"]["schemas"]["ErrorBody"].is_object());

    // Every documented operation is answered by its route, not by the 404 fallback or a 405.
    let paths = served["paths"].as_object().unwrap();
    assert!(paths.len() >= 30, "{} paths", paths.len());
    for (path, item) in paths {
        if path.contains("{path}") || path == "/api/comfy/ws" || path.ends_with("/events") {
            continue; // pass-through and endless streams: covered by the gateway and event tests
        }
        let concrete = path
            .replace("{id}", "no-such-job")
            .replace("{name}", "x.png");
        for method in item.as_object().unwrap().keys() {
            let request = match method.as_str() {
                "get" => app.http.get(app.url(&concrete)),
                "post" => app
                    .http
                    .post(app.url(&concrete))
                    .header("content-type", "application/json")
                    .body("{}"),
                "head" => app.http.head(app.url(&concrete)),
                "delete" => app.http.delete(app.url(&concrete)),
                other => panic!("unexpected method {other} for {path}"),
            };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            // The fallback's 404 names no route; a route's own 404 (v2's `not_found` for an unknown id) names the
            // thing it did not find. A HEAD answer has no body: its route answers 200 or 404 by the hash.
            let fell_through = status == 405
                || (status == 404
                    && body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("no route")));
            assert!(
                !fell_through,
                "{method} {path} is documented but not served: {status} {body}"
            );
        }
    }

    // A route asked with the wrong method gets the shared error body.
    let response = app
        .http
        .delete(app.url("/api/templates"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn the_api_page_lists_the_routes_in_both_languages() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    for (language, heading) in [("en", "What it does"), ("ru", "Что делает")] {
        let response = app
            .http
            .get(app.url("/api-docs"))
            .header("accept-language", language)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let html = response.text().await.unwrap();
        assert!(html.contains(heading), "{language}: {html}");
        for route in [
            "/api/flux/generate",
            "/api/jobs/{id}/outputs/{name}",
            "/api/comfy/{path}",
        ] {
            assert!(html.contains(route), "{language}: {route} missing");
        }
        let document =
            serde_json::to_value(orchestrator::http::router::openapi_document()).unwrap();
        let operations: usize = document["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(
            html.matches("data-testid=\"api-route\"").count(),
            operations,
            "one row per operation"
        );
    }
}

const BFL_KEY: &str = "bfl-fuzz-key-0123456789";
const V0_KEY: &str = "v0-fuzz-key-0123456789";

/// What a run must leave as it found it: the job store (as the API shows it), the builder's messages, the FLUX
/// budget, every file under the outputs folder, and ComfyUI's folder with extra_model_paths.yaml.
async fn snapshot(app: &TestApp, comfy_dir: &Path) -> Value {
    fn files(root: &Path, into: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(root) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Thumbnails are a cache a GET fills, not something a user keeps.
            if path.file_name().is_some_and(|name| name == ".thumbnails") {
                continue;
            }
            if path.is_dir() {
                files(&path, into);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
                let hex = hex::encode(digest.as_ref());
                into.insert(path.display().to_string(), hex);
            }
        }
    }
    let mut on_disk = BTreeMap::new();
    files(&app.data_dir.join("outputs"), &mut on_disk);
    files(comfy_dir, &mut on_disk);
    let mut budget = app.get_json("/api/flux/budget").await;
    budget["day"] = Value::Null;
    json!({
        "jobs": app.get_json("/api/jobs?limit=500").await,
        "messages": app.get_json("/api/builder/messages").await,
        "budget": budget,
        "files": on_disk,
    })
}

/// Where two JSON values differ, one line each.
fn differences(before: &Value, after: &Value, at: &str) -> Vec<String> {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    differences(
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                        &format!("{at}/{k}"),
                    )
                })
                .collect()
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .flat_map(|(i, (x, y))| differences(x, y, &format!("{at}/{i}")))
            .collect(),
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![format!("{at}: {a} → {b}")],
    }
}

async fn schemathesis(st: &str, app: &TestApp, mode: &str, exclude: &[&str]) -> String {
    let mut command = tokio::process::Command::new(st);
    command
        .arg("run")
        .arg(app.url("/api/openapi.json"))
        .args(["--url", &app.url("")])
        .args(["--mode", mode])
        // The project's own seed; `SCHEMATHESIS_SEED` runs another (a review tries new ones).
        .args([
            "--seed",
            &std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261201".into()),
        ])
        .args(["--max-examples", "100"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--request-timeout", "10"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection",
        ])
        .args(["--suppress-health-check", "all"])
        .args(["--no-color", "--warnings", "off"])
        .kill_on_drop(true);
    // A path leaves out every operation on it; "METHOD path" only that one.
    for excluded in exclude {
        match excluded.contains(' ') {
            true => command.args(["--exclude-name", excluded]),
            false => command.args(["--exclude-path", excluded]),
        };
    }
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("schemathesis finishes within 10 min")
        .expect("schemathesis runs (set SCHEMATHESIS to its `st` program)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis ({mode}) found failures:\n{text}"
    );
    text
}

/// The schema fuzz run: negative cases on every route (nothing may change), then positive ones on the routes that
/// only read; no 5xx, every answer as documented, every 4xx with the error body, and not one paid request at BFL
/// although generation is allowed. Needs schemathesis: `SCHEMATHESIS=/path/to/st cargo test --test it -- --ignored
/// fuzz` (the README's test command installs it and runs this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs schemathesis (PyPI); scripts/test.sh installs it and runs this"]
async fn fuzz_the_api_against_its_schema() {
    let st = std::env::var("SCHEMATHESIS").expect("SCHEMATHESIS names the `st` program");
    let comfy = FakeComfy::start().await;
    let bfl = FakeBfl::start(BFL_KEY).await;
    let v0 = FakeV0::start(V0_KEY).await;
    v0.release();
    let comfy_dir = tempfile::tempdir().unwrap();
    let models_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        comfy_dir.path().join("extra_model_paths.yaml"),
        "mine:\n    base_path: /srv/models\n    checkpoints: checkpoints\n",
    )
    .unwrap();
    let (bfl_url, v0_url) = (bfl.url(), v0.url());
    let (comfy_path, models_path) = (
        comfy_dir.path().display().to_string(),
        models_dir.path().display().to_string(),
    );
    let app = TestApp::spawn_with(&comfy.url(), move |s| {
        s.allow_generation = "true".into();
        s.bfl_api_key = Some(BFL_KEY.into());
        s.bfl_base_url = bfl_url;
        s.v0_api_key = Some(V0_KEY.into());
        s.v0_base_url = v0_url;
        s.comfy_dir = Some(comfy_path);
        s.models_dir = Some(models_path);
        s.service_backend = Some("external".into());
        s.paid_rate_limit_per_min = "1000000".into();
        s.paid_rate_limit_burst = "100000".into();
        // The event streams are fuzzed too: each ends after a second, as a client's reconnect point.
        s.events_max_secs = "1".into();
    })
    .await;

    // Something to lose: a finished job with its output file.
    app.run_workflow(no_model_workflow()).await;

    let before = snapshot(&app, comfy_dir.path()).await;
    // Pass-through routes answer with ComfyUI's and v0's own statuses. Deleting a job takes nothing but its id,
    // which schemathesis learns from the answers: a "negative" delete of the job is a delete, as it should be.
    let not_ours = ["/api/comfy/{path}", "/api/comfy/ws", "/api/v0/{path}"];
    let mut negative_excluded = not_ours.to_vec();
    negative_excluded.push("DELETE /api/jobs/{id}");
    let negative = schemathesis(&st, &app, "negative", &negative_excluded).await;
    let after = snapshot(&app, comfy_dir.path()).await;
    let changed = differences(&before, &after, "");
    assert!(
        changed.is_empty(),
        "a rejected request changed something:\n{}",
        changed.join("\n")
    );

    // Positive cases only where a valid request writes nothing a user owns.
    let mut read_only = not_ours.to_vec();
    read_only.extend([
        "/api/comfy/create-default-paths",
        "/api/comfy/restore-paths",
        "/api/builder/messages",
        "/api/jobs",
        "/api/jobs/{id}/cancel",
        "/api/jobs/{id}/confirm",
        "/api/jobs/{id}/again",
        "DELETE /api/jobs/{id}",
        "/api/system/comfy/start",
        "/api/system/comfy/stop",
    ]);
    let positive = schemathesis(&st, &app, "positive", &read_only).await;
    assert_eq!(bfl.submits(), 0, "a fuzzed request reached BFL's paid API");
    for (mode, text) in [("negative", &negative), ("positive", &positive)] {
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("passed")
                    || l.contains("test cases")
                    || l.contains("operations")
                    || l.contains("Seed")
            })
            .collect();
        eprintln!("schemathesis {mode}: {}", summary.join(" | "));
    }
}
