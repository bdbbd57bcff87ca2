//! The panel's pages, the status report and the builder API, over HTTP (the browser suite is in `e2e/`).

use std::time::Duration;

use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;
use testkit::fake_v0::FakeV0;

use crate::support::{TestApp, error_code};

async fn page(app: &TestApp, path: &str, lang: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let response = app
        .http
        .get(app.url(path))
        .header("Accept-Language", lang)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

#[tokio::test]
async fn every_page_speaks_both_languages() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    for (path, page_name, en, ru) in [
        ("/", "home", "Start system", "Запуск системы"),
        ("/jobs", "jobs", "No jobs.", "Задач нет."),
        (
            "/builder",
            "builder",
            "v0 is not configured",
            "v0 не настроен",
        ),
        (
            "/diagnostics",
            "diagnostics",
            "Rescan models",
            "Пересканировать модели",
        ),
        ("/settings", "settings", "Variable", "Переменная"),
    ] {
        for (lang, text) in [("en-US,en;q=0.9", en), ("ru-RU,ru;q=0.9,en;q=0.5", ru)] {
            let (status, headers, html) = page(&app, path, lang).await;
            assert_eq!(status, 200, "{path}");
            assert!(
                html.contains(&format!("<html lang=\"{}\">", &lang[..2])),
                "{path} {lang}"
            );
            assert!(
                html.contains(&format!("data-page=\"{page_name}\"")),
                "{path}"
            );
            assert!(html.contains(text), "{path} in {lang} lacks {text:?}");
            assert!(
                headers["content-security-policy"]
                    .to_str()
                    .unwrap()
                    .contains("script-src 'self'")
            );
        }
    }
    // The cookie set by the language switch wins over the browser's preference.
    let response = app
        .http
        .get(app.url("/"))
        .header("Accept-Language", "en")
        .header("Cookie", "lang=ru")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("<html lang=\"ru\">")
    );
    let css = app
        .http
        .get(app.url("/assets/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
}

#[tokio::test]
async fn unknown_pages_and_server_errors_get_the_error_page() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let (status, _, html) = page(&app, "/no-such-page", "ru").await;
    assert_eq!(status, 404);
    assert!(
        html.contains("data-page=\"error\"")
            && html.contains("Страница не найдена")
            && html.contains("href=\"/\"")
    );
    let api = app
        .http
        .get(app.url("/api/no-such-thing"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
    assert_eq!(error_code(&api.json().await.unwrap()), "not_found");

    let (status, _, _) = page(&app, "/jobs/no-such-job", "en").await;
    assert_eq!(status, 404);
}

/// The parts of the report every reader (the panel, `orchestrator doctor`, scripts) relies on, with their types.
fn assert_report_shape(report: &Value) {
    let services = &report["services"];
    assert!(services.is_object(), "services: {report}");
    assert!(
        services["comfy"]["status"].is_string() && services["comfy"]["backend"].is_string(),
        "services.comfy: {report}"
    );
    assert!(
        services["panel"].is_string() && services["worker"].is_string(),
        "services: {report}"
    );
    let comfy = &report["comfy"];
    assert!(comfy["online"].is_boolean(), "comfy.online: {report}");
    assert!(comfy["status"].is_string(), "comfy.status: {report}");
    assert!(comfy["devices"].is_array(), "comfy.devices: {report}");
    if comfy["online"] == true {
        let devices = comfy["devices"].as_array().unwrap();
        assert!(!devices.is_empty(), "comfy.devices: {report}");
        for device in devices {
            assert!(
                device["name"].is_string() && device["type"].is_string(),
                "a device: {device}"
            );
            assert!(
                device["vram_total"].is_u64() && device["vram_free"].is_u64(),
                "a device: {device}"
            );
        }
    }
    let database = &report["database"];
    assert!(
        database["path"].as_str().is_some_and(|p| !p.is_empty()),
        "database.path: {report}"
    );
    assert!(
        database["size_bytes"].is_u64(),
        "database.size_bytes: {report}"
    );
    assert!(database["jobs"].is_u64(), "database.jobs: {report}");
    assert!(database["messages"].is_u64(), "database.messages: {report}");
    assert!(database["ok"].is_boolean(), "database.ok: {report}");
}

#[tokio::test]
async fn the_status_report_answers_in_time_when_comfyui_hangs() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let report = app.get_json("/api/status").await;
    assert_eq!(report["overall"], "healthy", "{report}");
    assert_report_shape(&report);
    assert_eq!(report["comfy"]["online"], true);
    assert_eq!(report["comfy"]["devices"][0]["name"], "cpu");
    let database = &report["database"];
    let path = database["path"].as_str().unwrap();
    if crate::support::on_postgres() {
        assert!(path.starts_with("postgres://"), "{database}");
    } else {
        assert!(
            path.starts_with(app.data_dir.to_str().unwrap()),
            "{database}"
        );
    }
    assert!(database["size_bytes"].as_u64().unwrap() > 0, "{database}");
    assert_eq!(
        (database["jobs"].as_u64(), database["messages"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(report["comfy"]["version"], "0.3.64");
    assert_eq!(
        report["comfy"]["queue"],
        json!({ "running": 0, "pending": 0 })
    );
    assert!(report["comfy"]["models"]["checkpoints"].as_u64().is_some());
    assert_eq!(report["database"]["ok"], true);
    assert_eq!(report["external"]["flux"]["configured"], false);
    assert_eq!(report["model_paths"]["configured"], false);
    for part in [
        "/api/status/services",
        "/api/status/comfy",
        "/api/status/models",
    ] {
        let response = app.http.get(app.url(part)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{part}");
    }

    comfy.set_hang(true);
    // Whatever hangs, the report answers: each probe has its own limit, and says when it ran out.
    let report = tokio::time::timeout(Duration::from_secs(10), app.get_json("/api/status"))
        .await
        .expect("the report answers while ComfyUI hangs");
    assert_eq!(report["overall"], "down");
    assert_eq!(report["comfy"]["status"], "unresponsive");
    assert_report_shape(&report);
    assert_eq!(report["comfy"]["online"], false);
    assert_eq!(report["comfy"]["devices"], json!([]));
    assert!(
        report["reasons"][0]
            .as_str()
            .unwrap()
            .contains("unresponsive")
    );
}

#[tokio::test]
async fn settings_show_values_and_sources_with_secrets_masked() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn_with(&comfy.url(), |s| {
        s.bfl_api_key = Some("bfl-very-secret-value-123".into());
        s.token = Some("a-token-of-sixteen-chars".into());
    })
    .await;
    let response = app
        .http
        .get(app.url("/settings"))
        .header("Authorization", "Bearer a-token-of-sixteen-chars")
        .send()
        .await
        .unwrap();
    let html = response.text().await.unwrap();
    assert!(
        !html.contains("bfl-very-secret-value-123") && !html.contains("a-token-of-sixteen-chars")
    );
    assert!(html.contains(
        "<tr data-key=\"BFL_API_KEY\"><td><code>BFL_API_KEY</code></td><td><code>***</code>"
    ));
    assert!(html.contains("data-key=\"COMFY_URL\""));
}

#[tokio::test]
async fn the_builder_keeps_the_conversation_and_continues_the_chat() {
    let comfy = FakeComfy::start().await;
    let v0 = FakeV0::start("v0-key-for-the-builder-1").await;
    let url = v0.url();
    let app = TestApp::spawn_with(&comfy.url(), move |s| {
        s.v0_api_key = Some("v0-key-for-the-builder-1".into());
        s.v0_base_url = url;
    })
    .await;
    let send = |message: &'static str| {
        let request = app
            .http
            .post(app.url("/api/builder/messages"))
            .json(&json!({ "message": message }));
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, first) = send("A landing page for a bakery").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["messages"][1]["role"], "assistant");
    assert_eq!(
        first["messages"][1]["content"],
        "Built: A landing page for a bakery"
    );
    let links = first["messages"][1]["links"].as_array().unwrap();
    assert!(
        links
            .iter()
            .any(|l| l["url"] == "https://demo.example/chat_fake1")
    );
    let (status, _) = send("Make it blue").await;
    assert_eq!(status, 200);
    let paths: Vec<String> = v0.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/v1/chats", "/v1/chats/chat_fake1/messages"]);

    let stored = app.get_json("/api/builder/messages").await;
    assert_eq!(stored["messages"].as_array().unwrap().len(), 4);
    let (_, _, html) = page(&app, "/builder", "en").await;
    assert!(html.contains("Make it blue") && html.contains("https://demo.example/chat_fake1"));

    let (status, answer) = send("   ").await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (422, "validation_failed")
    );
}

#[tokio::test]
async fn without_v0_the_builder_refuses_and_stores_nothing() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let response = app
        .http
        .post(app.url("/api/builder/messages"))
        .json(&json!({ "message": "hello" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        error_code(&response.json().await.unwrap()),
        "v0_not_configured"
    );
    assert!(
        app.get_json("/api/builder/messages").await["messages"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
