//! The v0 Platform API gateway, against a fake v0 that records every request.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use testkit::fake_v0::FakeV0;

use crate::support::{TestApp, closed_port, error_code};

const KEY: &str = "v0-server-key-abcdef0123";

async fn app(base: &str, key: Option<&str>) -> TestApp {
    let base = base.to_owned();
    let key = key.map(str::to_owned);
    TestApp::spawn_with("http://127.0.0.1:9", move |s| {
        s.v0_base_url = base;
        s.v0_api_key = key;
        s.paid_rate_limit_burst = "1000".into();
    })
    .await
}

#[tokio::test]
async fn without_a_key_v0_is_not_configured_and_nothing_is_sent() {
    let v0 = FakeV0::start(KEY).await;
    let app = app(&v0.url(), None).await;
    let response = app.http.get(app.url("/api/v0/chats")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        error_code(&response.json().await.unwrap()),
        "v0_not_configured"
    );
    assert_eq!(
        app.get_json("/api/v0/validate").await["status"],
        "not_configured"
    );
    assert!(v0.requests().is_empty());
}

#[tokio::test]
async fn requests_carry_the_server_key_and_never_the_clients_credentials() {
    let v0 = FakeV0::start(KEY).await;
    let app = app(&v0.url(), Some(KEY)).await;
    let response = app
        .http
        .post(app.url("/api/v0/chats?source=panel"))
        .header("Authorization", "Bearer the-browsers-own-token")
        .header("Cookie", "orchestrator=1")
        .header("Connection", "x-hop")
        .header("X-Hop", "1")
        .header("Origin", app.origin())
        .json(&json!({ "message": "Build a landing page" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("set-cookie").is_none());
    assert!(response.headers().get("x-session-token").is_none());
    let chat: serde_json::Value = response.json().await.unwrap();
    assert_eq!(chat["object"], "chat");
    assert_eq!(chat["text"], "Build a landing page");

    let seen = v0.requests().pop().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/chats?source=panel")
    );
    assert_eq!(seen.body["message"], "Build a landing page");
    let header = |name: &str| {
        seen.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(header("authorization"), [format!("Bearer {KEY}")]);
    assert!(
        header("cookie").is_empty() && header("x-hop").is_empty() && header("origin").is_empty()
    );

    // v0's own errors pass through as they are, with their status.
    let missing = app
        .http
        .get(app.url("/api/v0/chats/nope/versions"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["type"], "not_found_error");
    // The version may be named; without it, v1.
    let listed = app.get_json("/api/v0/v1/chats").await;
    assert_eq!(listed["object"], "list");
    assert_eq!(v0.requests().last().unwrap().path, "/v1/chats");
}

#[tokio::test]
async fn a_streamed_answer_arrives_piece_by_piece() {
    let v0 = FakeV0::start(KEY).await;
    let app = app(&v0.url(), Some(KEY)).await;
    let response = app
        .http
        .post(app.url("/api/v0/chats"))
        .json(&json!({ "message": "stream it", "responseMode": "experimental_stream" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    // The fake holds the rest of the stream until released: the first event must come through on its own.
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the first event arrives before the stream ends")
        .unwrap()
        .unwrap();
    assert_eq!(first.as_ref(), b"data: {\"type\":\"connected\"}\n\n");
    v0.release();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
    {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.contains("\"object\":\"chat\"") && rest.ends_with("data: {\"type\":\"done\"}\n\n"),
        "{rest}"
    );
}

#[tokio::test]
async fn validate_tells_a_good_key_from_a_bad_one_and_an_unreachable_api() {
    let v0 = FakeV0::start(KEY).await;
    let good = app(&v0.url(), Some(KEY)).await;
    let answer = good.get_json("/api/v0/validate").await;
    assert_eq!(answer["status"], "valid");
    assert_eq!(answer["user"]["name"], "Fake User");
    assert!(answer.to_string().find(KEY).is_none());

    let bad = app(&v0.url(), Some("v0-wrong-key-000000000")).await;
    assert_eq!(bad.get_json("/api/v0/validate").await["status"], "invalid");

    let nowhere = closed_port().await;
    let offline = app(&format!("http://{nowhere}"), Some(KEY)).await;
    assert_eq!(
        offline.get_json("/api/v0/validate").await["status"],
        "unreachable"
    );
    let response = offline
        .http
        .get(offline.url("/api/v0/chats"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        error_code(&response.json().await.unwrap()),
        "v0_unreachable"
    );
}

/// A GET of `/api/v0/*` carries the server's v0 key, so another site's page must not read its answer: a foreign
/// `Origin` or `Sec-Fetch-Site: cross-site` is refused whatever the method, nothing reaches v0, and v0's own
/// `Access-Control-Allow-Origin: *` never reaches a client. `TRACE` is forwarded nowhere.
#[tokio::test]
async fn no_other_site_reads_what_the_v0_key_fetches() {
    let v0 = FakeV0::start(KEY).await;
    let comfy = testkit::fake_comfy::FakeComfy::start().await;
    let app = TestApp::spawn_with(&comfy.url(), {
        let url = v0.url();
        move |s| {
            s.v0_api_key = Some(KEY.into());
            s.v0_base_url = url;
            s.paid_rate_limit_per_min = "100000".into();
            s.paid_rate_limit_burst = "1000".into();
        }
    })
    .await;
    let cross = [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ];
    for (name, value) in cross {
        let response = app
            .http
            .get(app.url("/api/v0/user"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{name}: {value}");
        assert_eq!(
            error_code(&response.json().await.unwrap()),
            "cross_origin_refused"
        );
    }
    assert!(v0.requests().is_empty(), "nothing reached v0");
    let same = app
        .http
        .get(app.url("/api/v0/user"))
        .header("origin", app.origin())
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 200);
    assert!(
        same.headers()
            .keys()
            .all(|name| !name.as_str().starts_with("access-control-")),
        "{:?}",
        same.headers()
    );
    assert_eq!(v0.requests().len(), 1);

    for path in ["/api/v0/user", "/api/comfy/queue"] {
        let response = app
            .http
            .request(reqwest::Method::TRACE, app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{path}");
    }
    assert_eq!(v0.requests().len(), 1);
    assert!(comfy.requests().iter().all(|r| r.method != "TRACE"));
}
