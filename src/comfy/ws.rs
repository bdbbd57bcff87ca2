//! ComfyUI's WebSocket (`/ws`) from Orchestrator's side: opening it and waiting for its greeting. The relay of a
//! browser's socket to it is `http::ws_relay`.

use futures_util::StreamExt;
use http::Uri;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::error::ComfyError;
use crate::config::ComfyBackend;

pub type UpstreamSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the socket to ComfyUI. `http_uri` is the upstream URI the HTTP gateway built (fixed authority,
/// normalised path, the client's query with its `clientId`).
pub async fn connect_upstream(
    backend: &ComfyBackend,
    http_uri: &Uri,
    timeout: std::time::Duration,
) -> Result<UpstreamSocket, ComfyError> {
    let path_and_query = http_uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/ws");
    let url = format!("ws://{}{}", backend.authority, path_and_query);
    let request = url.into_client_request().map_err(ComfyError::internal)?;
    // No Origin header: ComfyUI only checks requests that carry one, and a server-side client has none.
    let connecting = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(ComfyError::Timeout {
            upstream: backend.origin(),
            seconds: timeout.as_secs_f64(),
        }),
        Ok(Err(error)) => {
            tracing::warn!(upstream = %backend.origin(), %error, "ComfyUI WebSocket refused");
            Err(ComfyError::Unreachable {
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
