//! An upstream that stalls mid-body: the stream is cut after the idle timeout and the cut is logged, without the
//! query or the token.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::fake_comfy::FakeComfy;

use super::SERIAL;
use crate::support::{TestApp, read_until_cut, wait_until};

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_stalled_upstream_body_is_cut_after_the_idle_timeout_with_a_log_line() {
    let _serial = SERIAL.lock().await;
    // This test's runtime is single-threaded, so the server's tasks log on this thread, into this subscriber.
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    const TOKEN: &str = "hostile-test-token-0123456789";
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn_with(&fake.url(), |s| {
        s.comfy_idle_timeout_secs = "1".into();
        s.token = Some(TOKEN.into());
    })
    .await;
    let started = Instant::now();
    let response = app
        .http
        .get(app.url("/api/comfy/view?filename=stall.bin&note=query-never-logged"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (received, ended_with_error) = read_until_cut(response).await;
    let took = started.elapsed();
    assert!(ended_with_error, "a cut stream must not look complete");
    assert_eq!(received, 64 * 1024);
    assert!(took >= Duration::from_secs(1), "cut after {took:?}");
    wait_until(Duration::from_secs(2), "the cut is logged", || {
        let logged = log.text().contains("stream idle too long");
        async move { logged }
    })
    .await;
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("stream idle too long"))
        .unwrap();
    eprintln!(
        "stall: the stream ended after {} ms; logged: {line}",
        took.as_millis()
    );
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("/api/comfy/view"),
        "the route is named: {line}"
    );
    assert!(line.contains("idle_secs=1"), "the timeout is named: {line}");
    assert!(line.contains("ComfyUI response body"), "{line}");
    assert!(
        !text.contains("query-never-logged"),
        "the query leaked: {text}"
    );
    assert!(!text.contains(TOKEN), "the token leaked: {text}");
}
