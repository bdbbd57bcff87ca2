//! The HTTP gateway to ComfyUI.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use testkit::fake_comfy::{FakeComfy, no_model_workflow};

use crate::support::{Bait, TestApp, closed_port, error_code, raw_request, read_until_cut};

const SYSTEM_STATS: &str = include_str!("../fixtures/comfyui/system_stats.json");

#[tokio::test]
async fn routes_and_queries_pass_through_under_both_prefixes() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;

    for path in ["/api/comfy/system_stats", "/api/comfy/api/system_stats"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.text().await.unwrap(),
            SYSTEM_STATS,
            "{path}: the recorded body, byte for byte"
        );
    }

    // ComfyUI's own errors come back as they are: here its plain-text 500 for a bad `max_items`.
    let bad = app
        .http
        .get(app.url("/api/comfy/history?max_items=abc&x=%20y"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 500);
    assert!(
        bad.text()
            .await
            .unwrap()
            .contains("Server got itself in trouble")
    );
    let last = fake.requests().pop().unwrap();
    assert_eq!(
        (last.path.as_str(), last.query.as_deref()),
        ("/history", Some("max_items=abc&x=%20y"))
    );

    let missing = app
        .http
        .get(app.url("/api/comfy/view?filename=nope.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.status(),
        404,
        "ComfyUI's 404 is passed on, not turned into ours"
    );
}

#[tokio::test]
async fn the_panel_origin_is_rewritten_so_comfy_accepts_it() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let response = app
        .http
        .post(app.url("/api/comfy/prompt"))
        .header("origin", app.origin())
        .json(&json!({ "prompt": no_model_workflow(), "client_id": "c1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "real ComfyUI answers 403 to a foreign Origin"
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["prompt_id"].is_string());
    let seen = fake.requests().pop().unwrap();
    assert_eq!(seen.headers["origin"], fake.url().as_str());
    assert_eq!(seen.headers["host"], fake.addr().to_string().as_str());
}

#[tokio::test]
async fn no_hop_by_hop_header_reaches_comfy_or_the_client() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let request = format!(
        "GET /api/comfy/system_stats HTTP/1.1\r\nHost: {}\r\nConnection: close, X-Drop-Me\r\nX-Drop-Me: 1\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Checksum\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Proxy-Connection: keep-alive\r\nAuthorization: Bearer secret-of-the-panel\r\nCookie: orch_token=abc\r\n\
         X-Kept: yes\r\n\r\n",
        app.addr
    );
    let (status, text) = raw_request(app.addr, &request).await;
    assert_eq!(status, 200, "{text}");
    let seen = fake.requests().pop().unwrap();
    for name in [
        "x-drop-me",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "authorization",
        "cookie",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached ComfyUI: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-kept"], "yes");
    assert!(
        !seen
            .headers
            .get("connection")
            .is_some_and(|v| v.to_str().unwrap().contains("X-Drop-Me"))
    );
}

#[tokio::test]
async fn no_path_shape_reaches_another_host() {
    let fake = FakeComfy::start().await;
    let bait = Bait::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let b = bait.addr;
    let targets = [
        format!("/api/comfy/..%2F..%2F{b}/x"),
        format!("/api/comfy/../../{b}/x"),
        "/api/comfy/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        "/api/comfy/%252e%252e/x".to_owned(),
        format!("/api/comfy//{b}/x"),
        format!("/api/comfy///{b}/x"),
        format!("/api/comfy/@{b}/x"),
        format!("/api/comfy/http://{b}/x"),
        format!("/api/comfy/http:%2F%2F{b}/x"),
        format!("/api/comfy/\\\\{b}\\x"),
        format!("/api/comfy/%5C%5C{b}/x"),
        format!("http://{b}/api/comfy/system_stats"),
        format!("http://{b}/x"),
    ];
    for target in &targets {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            app.addr
        );
        let (status, text) = raw_request(app.addr, &request).await;
        assert!(
            matches!(status, 200 | 400 | 404),
            "{target}: {status} {text}"
        );
        if target.contains("..")
            || target.contains("%2e")
            || target.contains("%252e")
            || target.contains('\\')
        {
            assert!(
                text.contains("invalid_path"),
                "{target} should be refused as a path: {text}"
            );
        }
    }
    assert_eq!(bait.hits(), 0, "a path shape reached the bait listener");
    // Whatever went upstream went to the configured ComfyUI, and stayed a plain path there.
    for seen in fake.requests() {
        assert!(!seen.path.contains(".."), "{}", seen.path);
        assert!(
            seen.path.starts_with('/') && !seen.path.starts_with("//"),
            "{}",
            seen.path
        );
        assert_eq!(seen.headers["host"], fake.addr().to_string().as_str());
    }
}

#[tokio::test]
async fn comfy_down_is_502_and_a_hang_is_504_within_bounds() {
    let down = closed_port().await;
    let app = TestApp::spawn(&format!("http://{down}")).await;
    let response = app
        .http
        .get(app.url("/api/comfy/system_stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        error_code(&response.json().await.unwrap()),
        "comfy_unreachable"
    );

    let fake = FakeComfy::start().await;
    fake.set_hang(true);
    let app = TestApp::spawn_with(&fake.url(), |s| {
        s.comfy_read_timeout_secs = "1".into();
        s.comfy_write_timeout_secs = "2".into();
    })
    .await;
    for (method, bound) in [
        ("GET", Duration::from_secs(1)),
        ("POST", Duration::from_secs(2)),
    ] {
        let started = Instant::now();
        let request = match method {
            "GET" => app.http.get(app.url("/api/comfy/queue")),
            _ => app
                .http
                .post(app.url("/api/comfy/interrupt"))
                .json(&json!({})),
        };
        let response = request.send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(response.status(), 504, "{method}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "comfy_timeout");
        // The limit of its kind ended it (a read's or a write's), not some other one: the answer names it, and it
        // did not come before it.
        assert_eq!(
            body["error"]["details"]["timeout_secs"],
            bound.as_secs_f64(),
            "{method}"
        );
        assert!(took >= bound, "{method} 504 after {took:?}");
    }
    // A prompt is looked at before it is sent (which of its nodes cost money): ComfyUI's node list does not come
    // within the read timeout, and the prompt is not sent at all.
    let response = app
        .http
        .post(app.url("/api/comfy/prompt"))
        .json(&json!({"prompt": no_model_workflow()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "comfy_timeout");
    assert_eq!(
        body["error"]["details"]["timeout_secs"], 1.0,
        "the read limit"
    );
    assert!(fake.received_prompts().is_empty());
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_whether_declared_or_streamed() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn_with(&fake.url(), |s| s.max_body_mb = "1".into()).await;
    let url = app.url("/api/comfy/upload/image");
    let big = vec![b'x'; 2 * 1024 * 1024];

    let declared = app
        .http
        .post(&url)
        .header("content-type", "application/octet-stream")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 413);
    assert_eq!(
        error_code(&declared.json().await.unwrap()),
        "payload_too_large"
    );
    assert_eq!(
        fake.request_count(),
        0,
        "a declared oversize body is refused before ComfyUI is asked"
    );

    // Streamed without a length, as a real multipart upload that ComfyUI reads while it arrives.
    let head =
        b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n\r\n"
            .to_vec();
    let chunks = std::iter::once(head)
        .chain(big.chunks(64 * 1024).map(<[u8]>::to_vec))
        .map(Ok::<_, std::io::Error>)
        .collect::<Vec<_>>();
    let streamed = app
        .http
        .post(&url)
        .header("content-type", "multipart/form-data; boundary=b")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
    assert_eq!(
        error_code(&streamed.json().await.unwrap()),
        "payload_too_large"
    );
}

#[tokio::test]
async fn a_large_upload_streams_through_as_multipart() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    const SIZE: usize = 64 * 1024 * 1024;
    let boundary = "orchestrator-test-boundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    );
    let tail = format!(
        "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n--{boundary}--\r\n"
    );
    let chunk = bytes::Bytes::from(vec![7u8; 1024 * 1024]);
    let body = futures_util::stream::iter(
        std::iter::once(bytes::Bytes::from(head))
            .chain(std::iter::repeat_n(chunk, SIZE / (1024 * 1024)))
            .chain(std::iter::once(bytes::Bytes::from(tail)))
            .map(Ok::<_, std::io::Error>),
    );
    let response = app
        .http
        .post(app.url("/api/comfy/upload/image"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header("origin", app.origin())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"name": "big.png", "subfolder": "", "type": "input"})
    );
    assert_eq!(fake.uploads()["big.png"], SIZE as u64);
}

#[tokio::test]
async fn a_stalled_body_is_cut_after_the_idle_timeout() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn_with(&fake.url(), |s| s.comfy_idle_timeout_secs = "1".into()).await;
    let started = Instant::now();
    let response = app
        .http
        .get(app.url("/api/comfy/view?filename=stall.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (received, ended_with_error) = read_until_cut(response).await;
    assert!(ended_with_error, "a cut stream must not look complete");
    assert_eq!(received, 64 * 1024);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "cut after {took:?}");
}

#[tokio::test]
async fn a_generated_body_streams_through_intact() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    const SIZE: u64 = 32 * 1024 * 1024 + 17;
    let response = app
        .http
        .get(app.url(&format!("/api/comfy/view?filename=large.bin&size={SIZE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        SIZE.to_string().as_str()
    );
    let mut stream = response.bytes_stream();
    let (mut total, mut position_ok) = (0u64, true);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        // The fake's pattern is byte i = (i mod 64 KiB) mod 251: check it survives re-chunking.
        for (i, byte) in chunk.iter().enumerate() {
            let at = (total + i as u64) % (64 * 1024);
            position_ok &= *byte == (at % 251) as u8;
        }
        total += chunk.len() as u64;
    }
    assert_eq!(total, SIZE);
    assert!(position_ok, "the body was altered in transit");
}
