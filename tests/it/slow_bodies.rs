//! Request bodies under a time limit: a client that goes silent mid-body, or sends a byte now and then, holds
//! neither a connection nor a task for longer than `ORCH_BODY_IDLE_SECS` / `ORCH_BODY_TIMEOUT_SECS`, on
//! Orchestrator's own routes, the v2 upload and the gateway alike; an upload has a bounded number of parts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use testkit::fake_comfy::FakeComfy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::TestApp;

/// Sends `head`, then `first` bytes of the body, then one byte every `every` (none when `None`) until the server
/// answers; answers the status, the answer's text and how long after the head the answer came.
async fn slow_client(
    addr: SocketAddr,
    head: &str,
    first: &[u8],
    every: Option<Duration>,
) -> (u16, String, Duration) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    writer.write_all(first).await.unwrap();
    let started = Instant::now();
    let dribble = tokio::spawn(async move {
        let Some(every) = every else {
            return std::future::pending::<()>().await;
        };
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if writer.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
            if complete(&answer) {
                break;
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    dribble.abort();
    assert!(read.is_ok(), "no answer within 30 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text, elapsed)
}

/// Whether `answer` holds a whole response: its head and the `Content-Length` bytes after it.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<usize>().ok());
    length.is_some_and(|length| body.len() >= length)
}

async fn app_with(comfy: &FakeComfy, idle: &str, total: &str) -> TestApp {
    let (idle, total) = (idle.to_owned(), total.to_owned());
    TestApp::spawn_with(&comfy.url(), move |settings| {
        settings.body_idle_secs = idle;
        settings.body_timeout_secs = total;
    })
    .await
}

#[tokio::test]
async fn a_body_that_goes_silent_is_answered_408_after_the_idle_timeout() {
    let comfy = FakeComfy::start().await;
    let app = app_with(&comfy, "1", "600").await;
    let head = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        app.addr
    );
    let (status, text, elapsed) = slow_client(app.addr, &head, b"{\"workflow\":", None).await;
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("\"body_timeout\""), "{text}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "not before the idle timeout: {elapsed:?}"
    );
    let jobs = app.get_json("/api/jobs").await;
    assert_eq!(jobs["jobs"], serde_json::json!([]), "nothing recorded");
}

#[tokio::test]
async fn a_body_that_trickles_is_cut_at_the_total_deadline_on_every_kind_of_route() {
    let comfy = FakeComfy::start().await;
    // A byte every 200 ms never trips the 2 s idle timeout; the 3 s deadline ends it.
    let app = app_with(&comfy, "2", "3").await;
    let boundary = "slow-boundary";
    let multipart_head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
    );
    let routes = [
        (
            "/api/jobs",
            "application/json".to_owned(),
            b"{\"workflow\":".to_vec(),
        ),
        (
            "/api/v2/assets",
            format!("multipart/form-data; boundary={boundary}"),
            multipart_head.clone().into_bytes(),
        ),
        (
            "/api/comfy/upload/image",
            format!("multipart/form-data; boundary={boundary}"),
            multipart_head.into_bytes(),
        ),
    ];
    for (path, content_type, first) in routes {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: 1000000\r\n\r\n",
            app.addr
        );
        let (status, text, _) = tokio::time::timeout(
            Duration::from_secs(15),
            slow_client(app.addr, &head, &first, Some(Duration::from_millis(200))),
        )
        .await
        .unwrap_or_else(|_| panic!("{path}: not cut at the deadline but held for 15 s"));
        assert_eq!(status, 408, "{path}: {text}");
        assert!(text.contains("\"body_timeout\""), "{path}: {text}");
    }
    let assets = app.data_dir.join("assets");
    let left: Vec<_> = std::fs::read_dir(&assets)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no half-received upload is left: {left:?}");
    assert!(
        comfy.uploads().is_empty(),
        "nothing reached ComfyUI's inputs"
    );
}

#[tokio::test]
async fn an_upload_has_a_bounded_number_of_parts() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    // Everything an upload needs, then 200 parts more.
    let mut fields = vec![("file_path", "a.png"), ("content_type", "image/png")];
    fields.extend((0..200).map(|_| ("note", "x")));
    let (content_type, body) = super::v2::multipart(b"\x89PNG", "a.png", &fields);
    let response = app
        .http
        .post(app.url("/api/v2/assets"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 72 parts"),
        "{body}"
    );
}
