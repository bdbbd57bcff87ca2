//! ComfyUI's editor on an origin of its own, and the panel's origin serving ComfyUI's API but nothing a browser
//! would run there.

use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::StreamExt;
use serde_json::{Value, json};
use testkit::fake_comfy::{FakeComfy, no_model_workflow};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestApp, error_code};

#[tokio::test]
async fn the_editor_origin_relays_comfyui_and_nothing_of_orchestrators_own() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let editor = format!("http://{}", app.editor_addr);

    // ComfyUI's API, at ComfyUI's own paths, with and without the /api prefix.
    for path in ["/system_stats", "/api/system_stats"] {
        let answer = app.http.get(app.editor_url(path)).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        let stats: Value = answer.json().await.unwrap();
        assert!(stats["system"]["comfyui_version"].is_string(), "{stats}");
    }
    // Orchestrator's own routes are not there: what answers is ComfyUI (the fake knows none of them).
    for path in [
        "/api/health",
        "/api/system/status",
        "/api/openapi.json",
        "/editor",
        "/mcp",
    ] {
        let answer = app.http.get(app.editor_url(path)).send().await.unwrap();
        assert_eq!(
            answer.status(),
            404,
            "{path} is not Orchestrator's on the editor origin"
        );
    }
    let before = fake.requests().len();
    let stop = app
        .http
        .post(app.editor_url("/api/system/comfy/stop"))
        .header("Origin", &editor)
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), 404);
    assert_eq!(
        fake.requests().len(),
        before + 1,
        "relayed to ComfyUI, which has no such route"
    );

    // A free prompt from the editor's own page runs.
    let queued = app
        .http
        .post(app.editor_url("/api/prompt"))
        .header("Origin", &editor)
        .json(&json!({ "prompt": no_model_workflow(), "client_id": "editor-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 200);
    let queued: Value = queued.json().await.unwrap();
    assert!(queued["prompt_id"].is_string(), "{queued}");

    // The WebSocket, as the frontend opens it.
    let url = format!("ws://{}/ws?clientId=editor-1", app.editor_addr);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request
        .headers_mut()
        .insert("Origin", editor.parse().unwrap());
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    let greeting = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(text) = greeting else {
        panic!("a text greeting, got {greeting:?}");
    };
    assert_eq!(
        serde_json::from_str::<Value>(text.as_str()).unwrap()["type"],
        "status"
    );

    // The same guard as the panel's: Host allowlist, no writes or sockets from another origin (the panel's
    // included: it is another origin now).
    let rebinding = app
        .http
        .get(app.editor_url("/system_stats"))
        .header("Host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebinding.status(), 403);
    assert_eq!(
        error_code(&rebinding.json().await.unwrap()),
        "host_not_allowed"
    );
    let sent = fake.received_prompts().len();
    for origin in ["http://evil.example", &format!("http://{}", app.addr)] {
        let forged = app
            .http
            .post(app.editor_url("/prompt"))
            .header("Origin", origin)
            .json(&json!({ "prompt": no_model_workflow() }))
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403, "{origin}");
        assert_eq!(
            error_code(&forged.json().await.unwrap()),
            "cross_origin_refused"
        );
    }
    assert_eq!(
        fake.received_prompts().len(),
        sent,
        "nothing forged reached ComfyUI"
    );
}

/// The panel refuses a write from the editor's origin: its scripts (and every custom node's) cannot act as the
/// panel.
#[tokio::test]
async fn the_panel_refuses_what_the_editors_scripts_send() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let editor = format!("http://{}", app.editor_addr);
    for (path, body) in [
        ("/api/system/comfy/stop", json!({})),
        ("/api/comfy/create-default-paths", json!({})),
        ("/api/jobs", json!({ "workflow": no_model_workflow() })),
    ] {
        let answer = app
            .http
            .post(app.url(path))
            .header("Origin", &editor)
            .header("Sec-Fetch-Site", "same-site")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 403, "{path}");
        assert_eq!(
            error_code(&answer.json().await.unwrap()),
            "cross_origin_refused"
        );
    }
    // The panel links to the editor, under the name the panel was opened with.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let link = no_redirects
        .get(format!("http://localhost:{}/editor", app.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(link.status(), 303);
    assert_eq!(
        link.headers()["location"],
        format!("http://localhost:{}/", app.editor_addr.port()).as_str()
    );
    let home = app
        .http
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        home.contains("href=\"/editor\""),
        "the nav links to the editor"
    );
}

/// A ComfyUI stand-in serving what a real one serves besides its API: the frontend's page and scripts, and files
/// of every kind through `/view` (a workflow's SVG, an uploaded HTML file).
async fn static_comfy() -> String {
    const PNG: &[u8] = testkit::fake_comfy::OUTPUT_PNG;
    let view = |Query(query): Query<std::collections::HashMap<String, String>>| async move {
        let name = query.get("filename").cloned().unwrap_or_default();
        let (kind, body): (&str, Vec<u8>) = match name.rsplit('.').next() {
            Some("png") => ("image/png", PNG.to_vec()),
            Some("svg") => (
                "image/svg+xml",
                b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>".to_vec(),
            ),
            Some("html") => ("text/html", b"<script>alert(1)</script>".to_vec()),
            Some("pdf") => ("application/pdf", b"%PDF-1.4".to_vec()),
            Some("mp4") => ("video/mp4", b"....ftypisom".to_vec()),
            _ => (
                "application/octet-stream",
                b"<script>alert(1)</script>".to_vec(),
            ),
        };
        (
            [
                ("content-type", kind.to_owned()),
                ("content-disposition", format!("filename=\"{name}\"")),
            ],
            body,
        )
            .into_response()
    };
    let router = Router::new()
        .route(
            "/",
            get(|| async {
                axum::response::Html("<!doctype html><script src=/assets/app.js></script>")
            }),
        )
        .route(
            "/assets/app.js",
            get(|| async {
                (
                    [("content-type", "text/javascript")],
                    "fetch('/api/system/comfy/stop')",
                )
            }),
        )
        .route(
            "/assets/app.css",
            get(|| async { ([("content-type", "text/css")], "body{}") }),
        )
        .route(
            "/templates/index.xml",
            get(|| async { ([("content-type", "application/xml")], "<a/>") }),
        )
        .route(
            "/system_stats",
            get(|| async { axum::Json(json!({ "system": {}, "devices": [] })) }),
        )
        .route("/view", get(view))
        .route("/api/view", get(view));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

#[tokio::test]
async fn the_panel_origin_serves_comfyuis_api_but_nothing_a_browser_runs() {
    let comfy = static_comfy().await;
    let app = TestApp::spawn(&comfy).await;
    let editor = format!("http://127.0.0.1:{}/", app.editor_addr.port());

    // Pages, scripts, styles, SVG and XML: refused on the panel's origin, pointing at the editor.
    for path in [
        "/api/comfy/",
        "/api/comfy/assets/app.js",
        "/api/comfy/assets/app.css",
        "/api/comfy/templates/index.xml",
        "/api/comfy/view?filename=drawing.svg&type=output",
        "/api/comfy/api/view?filename=drawing.svg&type=input",
        "/api/comfy/view?filename=page.html&type=input",
    ] {
        let answer = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(answer.status(), 403, "{path}");
        assert_eq!(
            answer.headers()["content-type"],
            "application/json",
            "{path}"
        );
        let body: Value = answer.json().await.unwrap();
        assert_eq!(error_code(&body), "editor_origin_only", "{path}");
        assert_eq!(
            body["error"]["details"]["editor"],
            editor.as_str(),
            "{path}"
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(&editor),
            "{body}"
        );
    }
    // On the editor's origin the same files are ComfyUI's, as they are.
    for (path, kind) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript"),
        ("/view?filename=drawing.svg", "image/svg+xml"),
    ] {
        let answer = app.http.get(app.editor_url(path)).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        assert_eq!(answer.headers()["content-type"], kind, "{path}");
    }

    // Pictures, video and sound are shown inline, unable to run script; any other file is a download.
    for (name, inline) in [
        ("out.png", true),
        ("clip.mp4", true),
        ("notes.pdf", false),
        ("blob.bin", false),
    ] {
        let answer = app
            .http
            .get(app.url(&format!("/api/comfy/view?filename={name}&type=output")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{name}");
        let headers = answer.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{name}");
        assert_eq!(headers["content-security-policy"], "sandbox", "{name}");
        let disposition = headers["content-disposition"].to_str().unwrap();
        assert_eq!(
            disposition.starts_with("attachment"),
            !inline,
            "{name}: {disposition}"
        );
        assert!(disposition.contains(name), "{disposition}");
    }
    let stats = app
        .http
        .get(app.url("/api/comfy/system_stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 200);
    assert_eq!(stats.headers()["x-content-type-options"], "nosniff");
}
