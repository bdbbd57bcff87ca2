//! The WebSocket gateway: a recorded run relayed frame by frame, closes passed on.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use testkit::fake_comfy::{
    FakeComfy, ksampler_workflow, no_model_workflow, recorded_no_model_transcript,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::support::{TestApp, closed_port, error_code, wait_until};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, client_id: &str) -> Socket {
    let url = format!("ws://{}/api/comfy/ws?clientId={client_id}", app.addr);
    let (socket, response) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade through the gateway");
    assert_eq!(response.status(), 101);
    socket
}

/// Reads messages until the run of `prompt_id` ends (`executing` with `node: null`).
async fn read_run(socket: &mut Socket, prompt_id: &str) -> (Vec<Value>, Vec<Vec<u8>>) {
    let (mut texts, mut binaries) = (Vec::new(), Vec::new());
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the run ends in time")
            .expect("socket open")
            .expect("valid frame");
        match message {
            Message::Text(text) => {
                let event: Value = serde_json::from_str(text.as_str()).unwrap();
                let done = event["type"] == "executing"
                    && event["data"]["node"].is_null()
                    && event["data"]["prompt_id"] == prompt_id;
                texts.push(event);
                if done {
                    return (texts, binaries);
                }
            }
            Message::Binary(bytes) => binaries.push(bytes.to_vec()),
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_recorded_run_is_relayed_in_order() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let mut socket = connect(&app, "relay-test").await;

    let hello: Value = match socket.next().await.unwrap().unwrap() {
        Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected the greeting, got {other:?}"),
    };
    assert_eq!(
        hello["data"]["sid"], "relay-test",
        "the clientId reached ComfyUI"
    );

    let submitted: Value = app
        .http
        .post(app.url("/api/comfy/prompt"))
        .json(&json!({ "prompt": no_model_workflow(), "client_id": "relay-test" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let prompt_id = submitted["prompt_id"].as_str().unwrap().to_owned();
    let (events, _) = read_run(&mut socket, &prompt_id).await;

    let recorded = recorded_no_model_transcript();
    let kinds = |events: &[Value]| {
        events
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let recorded_events: Vec<Value> = recorded.iter().skip(1).map(|m| m["data"].clone()).collect();
    assert_eq!(
        kinds(&events),
        kinds(&recorded_events),
        "the same events in the same order as the real run"
    );
    let nodes = |events: &[Value]| {
        events
            .iter()
            .map(|e| e["data"]["node"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(nodes(&events), nodes(&recorded_events));
    let executed = events.iter().find(|e| e["type"] == "executed").unwrap();
    assert_eq!(executed["data"]["prompt_id"], prompt_id.as_str());
    assert!(
        executed["data"]["output"]["images"][0]["filename"]
            .as_str()
            .unwrap()
            .starts_with("fixture_")
    );

    // ComfyUI writes the history before the final message, so it is there now.
    let history: Value = app
        .get_json(&format!("/api/comfy/history/{prompt_id}"))
        .await;
    assert_eq!(history[&prompt_id]["status"]["status_str"], "success");
}

#[tokio::test]
async fn binary_preview_frames_pass_unchanged() {
    let fake = FakeComfy::start_with_models(&[("checkpoints", "tiny-sd15.safetensors")]).await;
    let app = TestApp::spawn(&fake.url()).await;
    let mut socket = connect(&app, "previews").await;
    let submitted: Value = app
        .http
        .post(app.url("/api/comfy/prompt"))
        .json(&json!({ "prompt": ksampler_workflow(), "client_id": "previews" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let prompt_id = submitted["prompt_id"]
        .as_str()
        .expect("the sampler graph validates")
        .to_owned();
    let (events, binaries) = read_run(&mut socket, &prompt_id).await;
    assert_eq!(
        events.iter().filter(|e| e["type"] == "progress").count(),
        4,
        "one progress per step"
    );
    assert_eq!(binaries.len(), 4, "one preview per step");
    let recorded = serde_json::from_str::<Vec<Value>>(include_str!(
        "../fixtures/comfyui/ws_transcript_ksampler.json"
    ))
    .unwrap();
    let recorded_lengths: Vec<usize> = recorded
        .iter()
        .filter(|m| m["kind"] == "binary")
        .map(|m| m["len"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(
        binaries.iter().map(Vec::len).collect::<Vec<_>>(),
        recorded_lengths,
        "frames arrive whole, in order"
    );
    for frame in &binaries {
        assert_eq!(
            &frame[..8],
            &[0, 0, 0, 1, 0, 0, 0, 1],
            "PREVIEW_IMAGE, JPEG"
        );
        assert_eq!(&frame[8..12], &[0xff, 0xd8, 0xff, 0xe0]);
    }
}

#[tokio::test]
async fn closes_are_passed_on_both_ways() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;

    let mut socket = connect(&app, "closer").await;
    wait_until(
        Duration::from_secs(5),
        "ComfyUI sees the socket",
        || async { fake.connected_clients().contains(&"closer".to_owned()) },
    )
    .await;
    socket
        .close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "ComfyUI sees the close", || async {
        fake.connected_clients().is_empty()
    })
    .await;

    let mut socket = connect(&app, "closed-by-comfy").await;
    wait_until(
        Duration::from_secs(5),
        "ComfyUI sees the socket",
        || async { !fake.connected_clients().is_empty() },
    )
    .await;
    fake.close_sockets(4001, "restarting");
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("close arrives")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("with a code");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4001, "restarting")
    );
}

#[tokio::test]
async fn an_offline_comfy_refuses_the_upgrade_with_json() {
    let down = closed_port().await;
    let app = TestApp::spawn(&format!("http://{down}")).await;
    let response = app
        .http
        .get(app.url("/api/comfy/ws?clientId=x"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        error_code(&response.json().await.unwrap()),
        "comfy_unreachable"
    );
}
