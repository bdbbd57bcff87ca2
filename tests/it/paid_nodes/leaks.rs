//! What a paid run touches leaks nowhere: the server's Comfy.org key reaches no queue, history, WebSocket, error or
//! log answer, and an SVG a job writes cannot script the panel.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Rig, SERVER_KEY, confirmed, paid_workflow, queued, rig};

#[tokio::test]
async fn the_keys_appear_in_no_queue_history_or_websocket_answer() {
    let Rig {
        comfy,
        org: _org,
        app,
    } = rig(true, |_| {}).await;
    comfy.set_step_delay(Duration::from_millis(150));
    // A socket through the gateway, watching everything ComfyUI broadcasts.
    let ws_url = format!("ws://{}/api/comfy/ws?clientId=watcher", app.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();

    let workflow = paid_workflow("keys stay home");
    let (status, created) = app
        .post_json("/api/jobs", &confirmed(&app, &workflow).await)
        .await;
    assert_eq!(status, 202);
    let id = created["id"].as_str().unwrap().to_owned();
    // ComfyUI 0.3.64 shows the running prompt's extra_data in /queue: the job's own key, never the server's.
    let direct: Value = reqwest::get(format!("{}/queue", comfy.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        direct.to_string().contains("orch-job-") && !direct.to_string().contains(SERVER_KEY),
        "the fake behaves as ComfyUI: {direct}"
    );
    for path in [
        "/api/comfy/queue",
        "/api/comfy/api/queue",
        "/api/comfy//queue",
    ] {
        let text = app
            .http
            .get(app.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("queue_running"), "{path}: {text}");
        assert!(
            !text.contains(SERVER_KEY)
                && !text.contains("api_key_comfy_org")
                && !text.contains("orch-job-"),
            "{path}: {text}"
        );
    }
    let done = app.wait_for_job(&id, "succeeded").await;
    let prompt_id = done["comfy_prompt_id"].as_str().unwrap();
    for path in [
        "/api/comfy/history".to_owned(),
        format!("/api/comfy/history/{prompt_id}"),
    ] {
        let text = app
            .http
            .get(app.url(&path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains(prompt_id), "{path}");
        assert!(
            !text.contains(SERVER_KEY) && !text.contains("orch-job-"),
            "{path}"
        );
    }
    // Every frame the watcher got.
    use futures_util::StreamExt;
    let mut frames = 0;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(300), socket.next()).await
    {
        frames += 1;
        assert!(
            !message.to_string().contains(SERVER_KEY) && !message.to_string().contains("orch-job-")
        );
    }
    assert!(frames > 0);
    // Nor the job row, its events or the page.
    for path in [
        format!("/api/jobs/{id}"),
        "/api/jobs".to_owned(),
        format!("/jobs/{id}"),
        "/".to_owned(),
    ] {
        let text = app
            .http
            .get(app.url(&path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !text.contains(SERVER_KEY) && !text.contains("orch-job-"),
            "{path}"
        );
    }
    let events = app
        .http
        .get(app.url(&format!("/api/jobs/{id}/events")))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    let mut body = events.bytes_stream();
    let mut seen = String::new();
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_millis(500), body.next()).await
    {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains("succeeded") {
            break;
        }
    }
    assert!(
        seen.contains("succeeded") && !seen.contains(SERVER_KEY) && !seen.contains("orch-job-")
    );
}

/// A V1 API node (OpenAI's DALL·E 3 here) that fails: ComfyUI's `execution_error` echoes its inputs, the hidden
/// `comfy_api_key` filled with the server's key included. The key reaches no history answer, job row or page (the
/// WebSocket relay masks it too: `comfy::ws` tests).
#[tokio::test]
async fn a_failed_paid_node_never_shows_the_servers_key() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    org.set_refuse(Some(400));
    comfy.set_step_delay(Duration::from_millis(100));
    let workflow = json!({
        "1": {"class_type": "OpenAIDalle3", "inputs": {"prompt": "a refused idea"}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "v1", "images": ["1", 0]}},
    });
    let (status, created) = app
        .post_json("/api/jobs", &confirmed(&app, &workflow).await)
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let failed = app.wait_for_job(&id, "failed").await;
    let direct: Value = reqwest::get(format!("{}/history", comfy.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        direct.to_string().contains("orch-job-") && !direct.to_string().contains(SERVER_KEY),
        "the fake echoes the job's key as ComfyUI does: {direct}"
    );
    let mut seen = failed.to_string();
    for path in [
        "/api/comfy/history",
        "/api/comfy/api/history",
        &format!("/api/jobs/{id}"),
        &format!("/jobs/{id}"),
    ] {
        seen.push_str(
            &app.http
                .get(app.url(path))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    assert!(seen.contains("refused"), "{seen}");
    assert!(
        !seen.contains(SERVER_KEY) && !seen.contains("orch-job-"),
        "{seen}"
    );
    assert_eq!(org.calls()[0].api_key.as_deref(), Some(SERVER_KEY));
}

#[tokio::test]
async fn an_svg_a_job_writes_is_a_download_that_cannot_script_the_panel() {
    // The fake Comfy.org API must outlive the run: it answers the paid node.
    let Rig {
        comfy,
        app,
        org: _org,
    } = rig(true, |_| {}).await;
    // Recraft's vector node is the one source of SVG in ComfyUI 0.3.64; SaveSVGNode writes it as `.svg`.
    let workflow = json!({
        "1": {"class_type": "RecraftTextToVectorNode", "inputs": {"prompt": "a logo", "substyle": "None",
              "size": "1024x1024", "n": 1, "seed": 0}},
        "3": {"class_type": "SaveSVGNode", "inputs": {"filename_prefix": "svg/logo", "svg": ["1", 0]}},
    });
    let body = confirmed(&app, &workflow).await;
    let (status, created) = app.post_json("/api/jobs", &body).await;
    assert_eq!(status, 202, "{created}");
    let done = app
        .wait_for_job(created["id"].as_str().unwrap(), "succeeded")
        .await;
    let output = &done["outputs"][0];
    assert!(output["name"].as_str().unwrap().ends_with(".svg"), "{done}");
    let served = app
        .http
        .get(app.url(output["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let headers = served.headers().clone();
    assert_eq!(headers["content-type"], "image/svg+xml");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["content-security-policy"], "sandbox");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment"), "{disposition}");
    assert!(disposition.contains(output["name"].as_str().unwrap()));
    assert_eq!(
        served.bytes().await.unwrap().as_ref(),
        testkit::fake_comfy::OUTPUT_SVG
    );
    assert_eq!(queued(&comfy), 1);
}

/// ComfyUI's own log (its editor's log panel, through the gateway) shows what nodes print; a node that prints the
/// prompt's `extra_data` would show the server's Comfy.org key there: it is masked.
#[tokio::test]
async fn comfys_own_log_never_shows_the_servers_key() {
    let Rig { comfy, app, .. } = rig(true, |_| {}).await;
    comfy.log_line(&format!(
        "got prompt {{'api_key_comfy_org': '{SERVER_KEY}'}}"
    ));
    for url in [
        app.url("/api/comfy/internal/logs"),
        app.editor_url("/internal/logs"),
    ] {
        let response = app.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let text = response.text().await.unwrap();
        assert!(!text.contains(SERVER_KEY), "{url}: {text}");
        assert!(text.contains("got prompt"), "{url}: {text}");
    }
}
