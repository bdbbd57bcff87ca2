//! The WebSocket gateway: the browser's socket on `/api/comfy/ws` relayed to ComfyUI's `/ws`, both ways.
//!
//! The upstream socket is opened before the browser's upgrade is accepted, so an offline ComfyUI is an ordinary
//! JSON 502 instead of a socket that opens and dies. Pings are answered on each leg by its own library and not
//! relayed; text, binary and close frames are.

use axum::extract::ws::{self, WebSocket};
use futures_util::{SinkExt, StreamExt};
use http::Uri;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, protocol::CloseFrame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::ComfyBackend;
use crate::error::ApiError;

pub type UpstreamSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the socket to ComfyUI. `http_uri` is the upstream URI the HTTP gateway built (fixed authority,
/// normalised path, the client's query with its `clientId`).
pub async fn connect_upstream(
    backend: &ComfyBackend,
    http_uri: &Uri,
    timeout: std::time::Duration,
) -> Result<UpstreamSocket, ApiError> {
    let path_and_query = http_uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/ws");
    let url = format!("ws://{}{}", backend.authority, path_and_query);
    let request = url.into_client_request().map_err(ApiError::internal)?;
    // No Origin header: ComfyUI only checks requests that carry one, and a server-side client has none.
    let connecting = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(ApiError::ComfyTimeout {
            upstream: backend.origin(),
            seconds: timeout.as_secs_f64(),
        }),
        Ok(Err(error)) => {
            tracing::warn!(upstream = %backend.origin(), %error, "ComfyUI WebSocket refused");
            Err(ApiError::ComfyUnreachable {
                upstream: backend.origin(),
            })
        }
        Ok(Ok((socket, _response))) => Ok(socket),
    }
}

/// Waits for ComfyUI's greeting (`status` with the socket's `sid`). ComfyUI registers a socket under its client id
/// only after the upgrade, and greets it right after: a prompt posted before the greeting can send its first
/// events to no one.
pub async fn wait_for_greeting(socket: &mut UpstreamSocket, within: std::time::Duration) -> bool {
    let greeting = async {
        while let Some(Ok(message)) = socket.next().await {
            if let tungstenite::Message::Text(text) = message
                && serde_json::from_str::<serde_json::Value>(text.as_str())
                    .is_ok_and(|m| m["type"] == "status" && m["data"]["sid"].is_string())
            {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(within, greeting)
        .await
        .unwrap_or(false)
}

/// Relays frames until either side closes; the other side then gets the close.
/// Frames from ComfyUI reach the client without a Comfy.org credential, the server's own key (`secret`) masked.
pub async fn relay(
    client: WebSocket,
    upstream: UpstreamSocket,
    secret: Option<std::sync::Arc<str>>,
) {
    let (mut to_client, mut from_client) = client.split();
    let (mut to_upstream, mut from_upstream) = upstream.split();

    let client_to_upstream = async {
        while let Some(Ok(message)) = from_client.next().await {
            let Some(message) = to_tungstenite(message) else {
                continue;
            };
            let closing = message.is_close();
            if to_upstream.send(message).await.is_err() || closing {
                break;
            }
        }
        let _ = to_upstream.close().await;
    };
    let upstream_to_client = async {
        while let Some(Ok(message)) = from_upstream.next().await {
            let Some(message) = to_axum(message, secret.as_deref()) else {
                continue;
            };
            let closing = matches!(message, ws::Message::Close(_));
            if to_client.send(message).await.is_err() || closing {
                break;
            }
        }
        let _ = to_client.close().await;
    };
    tokio::select! {
        () = client_to_upstream => {}
        () = upstream_to_client => {}
    }
}

fn to_tungstenite(message: ws::Message) -> Option<tungstenite::Message> {
    Some(match message {
        ws::Message::Text(text) => tungstenite::Message::text(text.as_str()),
        ws::Message::Binary(bytes) => tungstenite::Message::Binary(bytes),
        ws::Message::Close(frame) => tungstenite::Message::Close(frame.map(|f| CloseFrame {
            code: f.code.into(),
            reason: f.reason.as_str().into(),
        })),
        ws::Message::Ping(_) | ws::Message::Pong(_) => return None,
    })
}

fn to_axum(message: tungstenite::Message, secret: Option<&str>) -> Option<ws::Message> {
    Some(match message {
        // A message that would carry a Comfy.org credential never reaches a client (see `credentials`).
        tungstenite::Message::Text(text) => {
            match super::credentials::strip_text(text.as_bytes(), secret) {
                None => ws::Message::Text(text.as_str().into()),
                Some(clean) => ws::Message::Text(String::from_utf8_lossy(&clean).as_ref().into()),
            }
        }
        tungstenite::Message::Binary(bytes) => ws::Message::Binary(bytes),
        tungstenite::Message::Close(frame) => ws::Message::Close(frame.map(|f| ws::CloseFrame {
            code: f.code.into(),
            reason: f.reason.as_str().into(),
        })),
        tungstenite::Message::Ping(_)
        | tungstenite::Message::Pong(_)
        | tungstenite::Message::Frame(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_from_comfy_reach_the_client_without_credentials() {
        let frame = tungstenite::Message::text(
            r#"{"type": "execution_error", "data": {"current_inputs": {"comfy_api_key": ["server-key"], "prompt": ["a"]},
               "extra_data": {"api_key_comfy_org": "client-key"}}}"#,
        );
        let Some(ws::Message::Text(text)) = to_axum(frame, Some("server-key")) else {
            panic!("a text frame stays one");
        };
        assert!(
            !text.contains("server-key") && !text.contains("client-key"),
            "{text}"
        );
        assert!(text.contains("execution_error"));
        let plain = tungstenite::Message::text(r#"{"type": "status"}"#);
        assert!(
            matches!(to_axum(plain, Some("server-key")), Some(ws::Message::Text(t)) if t.as_str() == r#"{"type": "status"}"#)
        );
    }
}
