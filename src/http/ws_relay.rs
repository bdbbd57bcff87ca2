//! The WebSocket gateway: the browser's socket on `/api/comfy/ws` relayed to ComfyUI's `/ws`, both ways.
//!
//! The upstream socket is opened before the browser's upgrade is accepted, so an offline ComfyUI is an ordinary
//! JSON 502 instead of a socket that opens and dies. Pings are answered on each leg by its own library and not
//! relayed; text, binary and close frames are.

use axum::extract::ws::{self, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, protocol::CloseFrame};

use crate::comfy::ws::UpstreamSocket;

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
            match crate::comfy::credentials::strip_text(text.as_bytes(), secret) {
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
