//! One log line per request: method, path, status, duration, client address and request id.
//!
//! The query string is left out on purpose: it can carry file names and, from careless clients, secrets.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;

pub async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();

    let response = next.run(request).await;

    let status = response.status().as_u16();
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let client = client.map(|c| c.to_string()).unwrap_or_default();
    if status >= 500 {
        tracing::warn!(target: "orchestrator::http", %method, path, status, duration_ms, client, request_id, "request");
    } else {
        tracing::info!(target: "orchestrator::http", %method, path, status, duration_ms, client, request_id, "request");
    }
    response
}
