//! The WebSocket and the worker: a queued prompt replayed from the recorded run that fits it, with this prompt's id.

use super::*;

pub(super) async fn serve_socket(shared: Arc<Shared>, socket: WebSocket, sid: String) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    // As ComfyUI: the socket is registered under its id first, then greeted; a client that waits for the
    // greeting knows that events for its id will reach it.
    {
        let mut sockets = shared.sockets.lock().unwrap();
        sockets.insert(sid.clone(), tx.clone());
        shared.sockets_opened.fetch_add(1, Ordering::SeqCst);
        shared
            .sockets_peak
            .fetch_max(sockets.len(), Ordering::SeqCst);
    }
    let hello = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": queue_remaining(&shared)}}, "sid": sid}});
    let _ = tx.send(Message::text(hello.to_string()));
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || closing {
                break;
            }
        }
    });
    let mut first = true;
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Text(text) = &message
            && first
            && serde_json::from_str::<Value>(text.as_str())
                .is_ok_and(|m| m["type"] == "feature_flags")
        {
            let reply = json!({"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": MAX_UPLOAD_BYTES}});
            let _ = tx.send(Message::text(reply.to_string()));
        }
        first = false;
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
    // Faithful to ComfyUI: the id is popped when a socket closes, even if a newer socket registered it since.
    shared.sockets.lock().unwrap().remove(&sid);
    writer.abort();
}

pub(super) fn broadcast_status(shared: &Shared) {
    let status = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": queue_remaining(shared)}}}});
    send(shared, None, Message::text(status.to_string()));
}

/// Sends to one client's socket, or to every socket when `client` is `None`.
pub(super) fn send(shared: &Shared, client: Option<&str>, message: Message) {
    if shared.silent.load(Ordering::SeqCst) {
        return;
    }
    let sockets = shared.sockets.lock().unwrap();
    match client {
        Some(client) => {
            if let Some(tx) = sockets.get(client) {
                let _ = tx.send(message);
            }
        }
        None => {
            for tx in sockets.values() {
                let _ = tx.send(message.clone());
            }
        }
    }
}

/// Works the queue one prompt at a time, replaying a recorded run for each.
pub(super) async fn worker(shared: Arc<Shared>, mut wake: mpsc::UnboundedReceiver<()>) {
    loop {
        let item = {
            let mut queue = shared.queue.lock().unwrap();
            let next = queue.pending.pop_front();
            queue.running = next.clone();
            next
        };
        let Some(item) = item else {
            if wake.recv().await.is_none() {
                return;
            }
            continue;
        };
        shared.interrupt.store(false, Ordering::SeqCst);
        // ComfyUI announces the queue change when the worker takes a prompt, as it did when the prompt was put.
        broadcast_status(&shared);
        run_prompt(&shared, &item).await;
        shared.queue.lock().unwrap().running = None;
        broadcast_status(&shared);
        send_event(
            &shared,
            &item,
            json!({"type": "executing", "data": {"node": null, "prompt_id": item.prompt_id}}),
        );
    }
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn send_event(shared: &Shared, item: &QueueItem, event: Value) {
    let kind = event["type"].as_str().unwrap_or_default().to_owned();
    let client = item.client_id();
    let broadcast_without_client = matches!(
        kind.as_str(),
        "progress" | "progress_state" | "execution_interrupted"
    );
    // ComfyUI: `status` goes to everyone; the rest to the prompt's client, or, for a prompt without one, only the
    // progress events to everyone and the others to no one.
    let message = Message::text(event.to_string());
    match (&client, kind.as_str()) {
        (_, "status") => send(shared, None, message),
        (Some(client), _) => send(shared, Some(client), message),
        (None, _) if broadcast_without_client => send(shared, None, message),
        (None, _) => {}
    }
}

/// Replays the recorded run that fits the prompt, with this prompt's id, and records its history.
pub(super) async fn run_prompt(shared: &Shared, item: &QueueItem) {
    let nodes = item.prompt.as_object().cloned().unwrap_or_default();
    let samples = nodes.values().any(|n| n["class_type"] == "KSampler");
    let recorded = transcript(samples);
    let recorded_id = recorded
        .iter()
        .find_map(|m| m["data"]["data"]["prompt_id"].as_str())
        .unwrap_or_default()
        .to_owned();
    let delay = Duration::from_millis(shared.step_delay_ms.load(Ordering::SeqCst));
    let mut messages = Vec::new();
    let mut outputs = Map::new();
    let mut synthetic_done = false;
    let mut previews = 0u64;

    let object_info = shared.object_info();
    let paid = crate::fake_api_nodes::paid_nodes(&object_info, &nodes);
    // As ComfyUI: the run starts (`execution_start`) before any node runs, so the API nodes' progress text comes
    // while the prompt is the one running.
    let started_early = !paid.is_empty();
    if started_early {
        let start = json!({"type": "execution_start", "data": {"prompt_id": item.prompt_id, "timestamp": now_ms()}});
        messages.push(json!(["execution_start", start["data"]]));
        send_event(shared, item, start);
    }
    if !paid.is_empty() {
        let base = shared.comfy_api_base.lock().unwrap().clone();
        match crate::fake_api_nodes::run(&object_info, base.as_deref(), &paid, &item.extra_data)
            .await
        {
            Ok(texts) => {
                for (node, text) in texts {
                    let frame = text_frame(&node, &text);
                    send(
                        shared,
                        item.client_id().as_deref(),
                        Message::Binary(Bytes::from(frame)),
                    );
                }
            }
            Err(failure) => {
                let data = json!({"prompt_id": item.prompt_id, "node_id": failure.node_id, "node_type": failure.node_type,
                    "executed": [], "exception_message": failure.message, "exception_type": "Exception",
                    "traceback": [], "current_inputs": failure.current_inputs, "current_outputs": [], "timestamp": now_ms()});
                messages.push(json!(["execution_error", data]));
                record_history(shared, item, Map::new(), messages, false);
                send_event(
                    shared,
                    item,
                    json!({"type": "execution_error", "data": data}),
                );
                return;
            }
        }
    }

    // Entry 0 is the greeting a socket gets on connect; the queue-change statuses were sent by post_prompt.
    for entry in recorded.iter().skip(1) {
        if shared.interrupt.swap(false, Ordering::SeqCst) {
            let event = json!({"type": "execution_interrupted", "data": {
                "prompt_id": item.prompt_id, "node_id": "", "node_type": "", "executed": [], "timestamp": now_ms()}});
            messages.push(json!(["execution_interrupted", event["data"]]));
            record_history(shared, item, Map::new(), messages, false);
            send_event(shared, item, event);
            return;
        }
        match entry["kind"].as_str() {
            Some("text")
                if entry["data"]["type"] == "progress"
                    && shared.progress_steps.load(Ordering::SeqCst) > 0 =>
            {
                // The first recorded progress event stands for the whole sampler; the rest are skipped.
                if !std::mem::replace(&mut synthetic_done, true) {
                    let steps = shared.progress_steps.load(Ordering::SeqCst);
                    let node = entry["data"]["data"]["node"].clone();
                    for value in 1..=steps {
                        let event = json!({"type": "progress", "data": {
                            "value": value, "max": steps, "prompt_id": item.prompt_id, "node": node}});
                        send_event(shared, item, event);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                continue;
            }
            Some("text") => {
                let raw = entry["data"]
                    .to_string()
                    .replace(&recorded_id, &item.prompt_id);
                let mut event: Value =
                    serde_json::from_str(&raw).expect("re-serialised JSON parses");
                let kind = event["type"].as_str().unwrap_or_default().to_owned();
                if kind == "status" || (kind == "execution_start" && started_early) {
                    continue;
                }
                if let Some(ts) = event["data"].get_mut("timestamp") {
                    *ts = json!(now_ms());
                }
                if kind == "executed" {
                    let recorded = event["data"]["node"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    // The recorded SaveImage's id, unless this workflow has none by that id: then its first saver
                    // is the one reported (ComfyUI names the workflow's own nodes).
                    let mut own: Vec<&String> = nodes
                        .iter()
                        .filter(|(_, n)| is_saver(n))
                        .map(|(id, _)| id)
                        .collect();
                    own.sort();
                    let node = match own.first() {
                        Some(first) if !nodes.contains_key(&recorded) => (*first).clone(),
                        _ => recorded,
                    };
                    event["data"]["node"] = json!(node);
                    event["data"]["display_node"] = json!(node);
                    // The recorded run has one SaveImage; any other SaveImage of this workflow saves too, each
                    // with its own `executed` message, as ComfyUI runs every output node.
                    let mut savers: Vec<String> = nodes
                        .iter()
                        .filter(|(id, n)| **id != node && is_saver(n))
                        .map(|(id, _)| id.clone())
                        .collect();
                    savers.sort();
                    for other in savers {
                        let mut extra = event.clone();
                        extra["data"]["node"] = json!(other);
                        extra["data"]["display_node"] = json!(other);
                        let output = save_output(shared, &nodes, &other);
                        extra["data"]["output"] = output.clone();
                        outputs.insert(other, output);
                        send_event(shared, item, extra);
                    }
                    let output = save_output(shared, &nodes, &node);
                    event["data"]["output"] = output.clone();
                    outputs.insert(node, output);
                }
                if matches!(
                    kind.as_str(),
                    "execution_start" | "execution_cached" | "execution_success"
                ) {
                    messages.push(json!([kind, event["data"]]));
                }
                if kind == "execution_success" {
                    send_event(shared, item, event);
                    // The real server writes history after execution_success and before `executing` null.
                    record_history(shared, item, outputs.clone(), messages.clone(), true);
                    return;
                }
                send_event(shared, item, event);
            }
            Some("binary") => {
                let mut frame = hex(entry["head_hex"].as_str().unwrap_or_default());
                if frame == PREVIEW_JPEG_HEAD {
                    // The recording left the image out: a real one, another each frame, so a page can show the
                    // run changing.
                    previews += 1;
                    frame.extend(preview_jpeg(previews));
                } else {
                    frame.extend(hex(entry["image_magic_hex"].as_str().unwrap_or_default()));
                }
                // The recorded size (a decoder stops at the JPEG's end marker).
                let len = entry["len"].as_u64().unwrap_or(8) as usize;
                if frame.len() < len {
                    frame.resize(len, 0);
                }
                let message = Message::Binary(Bytes::from(frame));
                send(shared, item.client_id().as_deref(), message);
            }
            _ => continue,
        }
        tokio::time::sleep(delay).await;
    }
}

/// A binary frame's head for event 1 (PREVIEW_IMAGE) with image type 1 (JPEG).
const PREVIEW_JPEG_HEAD: [u8; 8] = [0, 0, 0, 1, 0, 0, 0, 1];

/// The output nodes that write a file: SaveImage, SaveSVGNode (`nodes_images.py`), which writes `.svg`, and
/// SaveWEBM (`nodes_video.py`), which writes `.webm`.
pub(super) fn is_saver(node: &Value) -> bool {
    matches!(
        node["class_type"].as_str(),
        Some("SaveImage" | "SaveSVGNode" | "SaveWEBM")
    )
}

/// What a SaveImage node writes, as ComfyUI's `get_save_image_path`: a prefix "a/b" saves `b_00001_.png` in the
/// subfolder "a", the counter counting per folder and name, so two prefixes "a/x" and "b/x" both give
/// `x_00001_.png`, in different subfolders.
pub(super) fn save_output(shared: &Shared, nodes: &Map<String, Value>, node: &str) -> Value {
    let prefix = nodes
        .get(node)
        .and_then(|n| n["inputs"]["filename_prefix"].as_str())
        .unwrap_or("ComfyUI");
    let (subfolder, stem) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    let counter = {
        let mut counters = shared.file_counters.lock().unwrap();
        let counter = counters
            .entry((subfolder.to_owned(), stem.to_owned()))
            .or_insert(0);
        *counter += 1;
        *counter
    };
    // SaveSVGNode saves `<prefix>_00001_.svg`, SaveWEBM `<prefix>_00001_.webm`; both report it under `images`, as
    // SaveImage does.
    let class = nodes.get(node).and_then(|n| n["class_type"].as_str());
    let (extension, bytes) = if class == Some("SaveSVGNode") {
        ("svg", Bytes::from_static(OUTPUT_SVG))
    } else if class == Some("SaveWEBM") {
        ("webm", Bytes::from_static(OUTPUT_WEBM))
    } else if let Some(png) = shared.output_png.lock().unwrap().clone() {
        ("png", png)
    } else if shared.pictures.load(Ordering::SeqCst) {
        ("png", Bytes::from(output_picture(counter)))
    } else {
        ("png", Bytes::from_static(OUTPUT_PNG))
    };
    let filename = format!("{stem}_{counter:05}_.{extension}");
    shared
        .files
        .lock()
        .unwrap()
        .insert(file_key(subfolder, &filename), bytes);
    json!({"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}]})
}

/// Where the fake keeps a file: its name, under its subfolder when it has one.
pub(super) fn file_key(subfolder: &str, filename: &str) -> String {
    if subfolder.is_empty() {
        filename.to_owned()
    } else {
        format!("{subfolder}/{filename}")
    }
}

pub(super) fn record_history(
    shared: &Shared,
    item: &QueueItem,
    outputs: Map<String, Value>,
    messages: Vec<Value>,
    ok: bool,
) {
    let meta: Map<String, Value> = outputs
        .keys()
        .map(|id| {
            (
                id.clone(),
                json!({"node_id": id, "display_node": id, "parent_node": null, "real_node_id": id}),
            )
        })
        .collect();
    // ComfyUI keeps the prompt in its history without the Comfy.org credentials (`task_done`); `/queue` has them.
    let mut prompt = item.to_json();
    orchestrator::comfy::credentials::strip(&mut prompt, None);
    let entry = json!({
        "prompt": prompt,
        "outputs": outputs,
        "status": {"status_str": if ok { "success" } else { "error" }, "completed": ok, "messages": messages},
        "meta": meta,
    });
    shared
        .history
        .lock()
        .unwrap()
        .insert(item.prompt_id.clone(), entry);
}

pub(super) fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// A progress-text frame as ComfyUI sends one (`send_progress_text`): event type 3 (u32 BE), the node id's length
/// (u32 BE), the node id, then the UTF-8 text.
fn text_frame(node: &str, text: &str) -> Vec<u8> {
    let mut frame = 3u32.to_be_bytes().to_vec();
    frame.extend((node.len() as u32).to_be_bytes());
    frame.extend(node.as_bytes());
    frame.extend(text.as_bytes());
    frame
}
