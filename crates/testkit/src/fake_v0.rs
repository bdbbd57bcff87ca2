//! A local stand-in for the v0 Platform API (`shared/CONTRACTS.md` §3) that records every request: Bearer auth,
//! `GET /v1/user`, `GET|POST /v1/chats`, v0's error shape `{"error": {"message", "type"}}`, and the
//! `experimental_stream` response mode as server-sent events whose second half waits for [`FakeV0::release`], so
//! a test can see the first half arrive on its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};

use super::fake_bfl::Recorded;

struct Shared {
    key: String,
    requests: Mutex<Vec<Recorded>>,
    release: Notify,
}

pub struct FakeV0 {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeV0 {
    pub async fn start(key: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let shared = Arc::new(Shared {
            key: key.to_owned(),
            requests: Mutex::default(),
            release: Notify::new(),
        });
        // v0 lets any site read its answers (`Access-Control-Allow-Origin: *`); Orchestrator must not pass that on.
        let app = Router::new()
            .fallback(any(handle))
            .with_state(shared.clone())
            .layer(axum::middleware::map_response(
                |mut response: axum::response::Response| async move {
                    response.headers_mut().insert(
                        "access-control-allow-origin",
                        http::HeaderValue::from_static("*"),
                    );
                    response
                },
            ));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Lets a streamed answer send its remaining events.
    pub fn release(&self) {
        self.shared.release.notify_one();
    }
}

impl Drop for FakeV0 {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "message": message, "type": kind } })),
    )
        .into_response()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    shared.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    });
    if !bearer_matches(&parts.headers, &shared.key) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_error",
            "Invalid API key",
        );
    }
    let chat = |message: &str| {
        json!({
            "id": "chat_fake1", "object": "chat", "privacy": "private", "name": "Fake chat",
            "webUrl": "https://v0.app/chat/chat_fake1", "text": message,
            "latestVersion": { "id": "ver_1", "status": "completed", "demoUrl": "https://demo.example/chat_fake1", "files": [] },
            "messages": [
                { "id": "msg_1", "content": message, "role": "user", "type": "message" },
                { "id": "msg_2", "content": format!("Built: {message}"), "role": "assistant", "type": "message" },
            ],
        })
    };
    let mut response = match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/v1/user") => axum::Json(json!({
            "id": "user_fake", "object": "user", "name": "Fake User", "email": "fake@example.com",
            "avatar": "", "createdAt": "2026-01-01T00:00:00Z"
        }))
        .into_response(),
        ("GET", "/v1/chats") => {
            axum::Json(json!({ "object": "list", "data": [chat("hello")] })).into_response()
        }
        ("POST", "/v1/chats") => {
            let Some(message) = body["message"].as_str() else {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_entity_error",
                    "message is required",
                );
            };
            if body["responseMode"] == "experimental_stream" {
                let first = Bytes::from("data: {\"type\":\"connected\"}\n\n");
                let rest = format!("data: {}\n\ndata: {{\"type\":\"done\"}}\n\n", chat(message));
                let shared = shared.clone();
                let stream = async_stream(first, rest, shared);
                let mut response = Response::new(Body::from_stream(stream));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
                response
            } else {
                axum::Json(chat(message)).into_response()
            }
        }
        ("POST", path) if path.starts_with("/v1/chats/chat_fake1/messages") => {
            match body["message"].as_str() {
                Some(message) => axum::Json(chat(message)).into_response(),
                None => error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_entity_error",
                    "message is required",
                ),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not_found_error", "Not found"),
    };
    // What a careless gateway would pass on to the browser.
    let headers = response.headers_mut();
    headers.insert(
        header::SET_COOKIE,
        "v0session=secret; HttpOnly".parse().unwrap(),
    );
    headers.insert("x-session-token", "session-secret".parse().unwrap());
    response
}

/// The first event at once, the rest after [`FakeV0::release`].
fn async_stream(
    first: Bytes,
    rest: String,
    shared: Arc<Shared>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(0u8, move |step| {
        let first = first.clone();
        let rest = rest.clone();
        let shared = shared.clone();
        async move {
            match step {
                0 => Some((Ok(first), 1)),
                1 => {
                    shared.release.notified().await;
                    Some((Ok(Bytes::from(rest)), 2))
                }
                _ => None,
            }
        }
    })
}

fn bearer_matches(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| given == key)
}
