//! The guard in front of every route: DNS rebinding, CSRF, the token.

use serde_json::json;
use testkit::fake_comfy::{FakeComfy, no_model_workflow};

use crate::support::{TestApp, error_code, raw_request};

#[tokio::test]
async fn rebinding_hosts_are_refused_on_every_route_and_upgrade() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let routes = [
        "/api/health",
        "/api/models",
        "/api/comfy/system_stats",
        "/api/comfy/ws?clientId=x",
        "/nowhere",
    ];
    for host in ["evil.example", "localhost.evil.com", "127.0.0.1.nip.io", ""] {
        for route in routes {
            let upgrade = if route.contains("/ws") {
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            } else {
                ""
            };
            let request = format!(
                "GET {route} HTTP/1.1\r\nHost: {host}\r\n{upgrade}Connection: close\r\n\r\n"
            );
            let (status, text) = raw_request(app.addr, &request).await;
            assert_eq!(status, 403, "Host {host:?} on {route}: {text}");
            assert!(text.contains("\"host_not_allowed\""), "{text}");
        }
    }
    let (status, _) = raw_request(app.addr, "GET /api/health HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 403, "a request without Host is refused");
    assert_eq!(fake.request_count(), 0, "nothing reached ComfyUI");
}

#[tokio::test]
async fn cross_site_writes_are_refused_before_comfy_sees_them() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let body = json!({ "prompt": no_model_workflow() });
    let prompt = app.url("/api/comfy/prompt");

    let cases: [(&str, &str); 4] = [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("origin", "http://localhost:1"),
        ("sec-fetch-site", "cross-site"),
    ];
    for (name, value) in cases {
        let response = app
            .http
            .post(&prompt)
            .header(name, value)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{name}: {value}");
        assert_eq!(
            error_code(&response.json().await.unwrap()),
            "cross_origin_refused"
        );
    }
    // A cross-site WebSocket (hijacking) is refused too.
    let request = format!(
        "GET /api/comfy/ws HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.example\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        app.addr
    );
    let (status, _) = raw_request(app.addr, &request).await;
    assert_eq!(status, 403);

    // A form or text/plain body, which a browser can send cross-site without asking, is refused.
    let form = app
        .http
        .post(&prompt)
        .header("content-type", "text/plain")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    assert_eq!(
        error_code(&form.json().await.unwrap()),
        "unsupported_media_type"
    );
    assert_eq!(
        fake.request_count(),
        0,
        "no refused request reached ComfyUI"
    );

    // The panel's own page may write.
    let ok = app
        .http
        .post(&prompt)
        .header("origin", app.origin())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let prompts = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/prompt")
        .count();
    assert_eq!(prompts, 1);
}

/// ComfyUI and its custom nodes have GET routes that change things (ComfyUI-Manager reboots on one): a page elsewhere
/// reaches none of them, through the panel's gateway or on the editor's origin, whatever the method.
#[tokio::test]
async fn cross_site_requests_of_every_method_never_reach_comfy() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let foreign: [&[(&str, &str)]; 6] = [
        &[
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "no-cors"),
        ],
        &[("origin", "http://evil.example")],
        &[("origin", "null"), ("sec-fetch-site", "cross-site")],
        // A navigation elsewhere than `/view` (a link to a route that acts) is refused too.
        &[
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ],
        // Another web server on this machine (another port of the same host) is another site's page here.
        &[
            ("sec-fetch-site", "same-site"),
            ("sec-fetch-mode", "no-cors"),
        ],
        &[
            ("sec-fetch-site", "same-site"),
            ("sec-fetch-mode", "navigate"),
        ],
    ];
    for base in [app.url("/api/comfy"), app.editor_url("")] {
        for path in ["/api/manager/reboot", "/system_stats", "/api/queue"] {
            for headers in foreign {
                for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
                    let mut request = app.http.request(method.clone(), format!("{base}{path}"));
                    for (name, value) in headers {
                        request = request.header(*name, *value);
                    }
                    let response = request.send().await.unwrap();
                    assert_eq!(response.status(), 403, "{method} {base}{path} {headers:?}");
                }
            }
        }
    }
    // A link to a picture, opened from another site, is a top-level navigation: it may pass on the panel, which
    // serves it inert; not on the editor's origin, which serves it as ComfyUI does (an SVG would run there).
    let view = "view?filename=missing.png&type=output";
    for (url, passes) in [
        (app.url(&format!("/api/comfy/{view}")), true),
        (app.editor_url(&format!("/{view}")), false),
    ] {
        let response = app
            .http
            .get(&url)
            .header("sec-fetch-site", "cross-site")
            .header("sec-fetch-mode", "navigate")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status() != 403, passes, "{url}");
    }
    // The panel's link to the editor: a navigation from the same site to its page.
    let editor_page = app
        .http
        .get(app.editor_url("/"))
        .header("sec-fetch-site", "same-site")
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_ne!(editor_page.status(), 403);
    let reached: Vec<_> = fake.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        reached,
        ["/view", "/"],
        "only the two navigations reached ComfyUI"
    );

    // Same-origin and header-less (a script, curl) requests pass as before.
    let own = app
        .http
        .get(app.url("/api/comfy/system_stats"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    let editor = app
        .http
        .get(app.editor_url("/system_stats"))
        .header("origin", format!("http://{}", app.editor_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(editor.status(), 200);
}

/// A browser sends a `text/plain` or form body cross-site without asking first; the JSON routes of v2 and MCP
/// refuse one, as every other JSON route does.
#[tokio::test]
async fn json_routes_refuse_bodies_a_page_elsewhere_could_send() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let workflow = json!({ "workflow": no_model_workflow() }).to_string();
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    for (path, body) in [
        ("/api/v2/jobs", &workflow),
        ("/api/v2/assets/from-hash", &workflow),
        ("/mcp", &call),
    ] {
        for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
            let response = app
                .http
                .post(app.url(path))
                .header("content-type", content_type)
                .header("accept", "application/json, text/event-stream")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 415, "{path} {content_type}");
            let answer: serde_json::Value = response.json().await.unwrap();
            assert_eq!(error_code(&answer), "unsupported_media_type");
        }
    }
    assert!(fake.received_prompts().is_empty(), "no job was made");
}

#[tokio::test]
async fn a_configured_token_is_required() {
    let fake = FakeComfy::start().await;
    let token = "a-long-enough-test-token";
    let app = TestApp::spawn_with(&fake.url(), |s| s.token = Some(token.into())).await;
    let url = app.url("/api/comfy/system_stats");

    let missing = app.http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(error_code(&missing.json().await.unwrap()), "unauthorized");
    let wrong = app
        .http
        .get(&url)
        .bearer_auth("a-long-enough-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let ok = app.http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let recorded = fake.requests();
    assert_eq!(
        recorded.len(),
        1,
        "only the authorised request went through"
    );
    assert!(
        recorded[0].headers.get("authorization").is_none(),
        "the token is not passed on to ComfyUI"
    );
}
