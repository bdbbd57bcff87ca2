//! One log line per request: method, path, status, duration, client address and request id.
//!
//! The request id is the client's `x-request-id` when it sends one, otherwise a new one; either way it is passed
//! to the handler and returned on the response. The query string is left out of the line on purpose: it can carry
//! file names and, from careless clients, secrets.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;

const REQUEST_ID: &str = "x-request-id";

/// `<8 hex digits of this run>-<counter>`: unique across restarts without a random-number syscall on every request,
/// which a UUID v4 costs.
fn next_request_id() -> HeaderValue {
    static RUN: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let run = *RUN.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u32);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{run:08x}-{n}"))
        .expect("hex digits and a dash are a valid header value")
}

/// The axum middleware form of [`logged`].
pub async fn log_request(request: Request, next: Next) -> Response {
    logged(request, |request| next.run(request)).await
}

/// Runs `inner` on the request and logs the exchange.
pub async fn logged<F, Fut>(mut request: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let started = Instant::now();
    let request_id = match request.headers().get(REQUEST_ID) {
        Some(id) if id.len() <= 128 => id.clone(),
        _ => {
            let id = next_request_id();
            request.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);

    let mut response = inner(request).await;
    response
        .headers_mut()
        .insert(REQUEST_ID, request_id.clone());

    let status = response.status().as_u16();
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let request_id = request_id.to_str().unwrap_or_default();
    let client = client.map(tracing::field::display);
    if status >= 500 {
        tracing::warn!(target: "orchestrator::http", %method, path, status, duration_ms, client, request_id, "request");
    } else {
        tracing::info!(target: "orchestrator::http", %method, path, status, duration_ms, client, request_id, "request");
    }
    response
}
