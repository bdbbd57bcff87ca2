//! `/prompt`, `/queue`, `/interrupt` and `/history`: a prompt validated as ComfyUI 0.3.64 validates it, queued, and its history.

use super::*;

pub(super) fn queue_remaining(shared: &Shared) -> usize {
    let queue = shared.queue.lock().unwrap();
    queue.pending.len() + usize::from(queue.running.is_some())
}

pub(super) async fn prompt_info(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({ "exec_info": { "queue_remaining": queue_remaining(&shared) } }))
        .into_response()
}

pub(super) async fn post_prompt(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return server_error();
    };
    let Some(prompt) = body.get("prompt").cloned() else {
        let error = json!({"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}});
        return json_status(
            StatusCode::BAD_REQUEST,
            json!({ "error": error, "node_errors": {} }),
        );
    };
    let outputs = match validate_prompt(&shared.object_info(), &prompt) {
        Ok(outputs) => outputs,
        Err(answer) => return json_status(StatusCode::BAD_REQUEST, answer),
    };
    let prompt_id = body
        .get("prompt_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    shared.prompts.lock().unwrap().push(body.clone());
    let number = shared.number.fetch_add(1, Ordering::SeqCst);
    let mut extra_data = body.get("extra_data").cloned().unwrap_or_else(|| json!({}));
    if let Some(client_id) = body.get("client_id").and_then(Value::as_str)
        && let Some(extra) = extra_data.as_object_mut()
    {
        extra.insert("client_id".into(), json!(client_id));
    }
    let item = QueueItem {
        number,
        prompt_id: prompt_id.clone(),
        prompt,
        extra_data,
        outputs,
    };
    shared.queue.lock().unwrap().pending.push_back(item);
    broadcast_status(&shared);
    let _ = shared.work.send(());
    axum::Json(json!({ "prompt_id": prompt_id, "number": number, "node_errors": {} }))
        .into_response()
}

/// ComfyUI's `validate_prompt`, for what a client can observe: unknown classes, missing outputs, per-node input
/// errors with the outputs that depend on them. Returns the output node ids to execute.
pub(super) fn validate_prompt(info: &Value, prompt: &Value) -> Result<Vec<String>, Value> {
    let Some(nodes) = prompt.as_object() else {
        return Err(top_error(
            "invalid_prompt",
            "Cannot execute because the prompt is not an object.",
            "",
            json!({}),
        ));
    };
    for (id, node) in nodes {
        let class = node.get("class_type").and_then(Value::as_str);
        match class {
            Some(class) if info.get(class).is_some() => {}
            Some(class) => {
                let message = format!("Cannot execute because node {class} does not exist.");
                return Err(top_error(
                    "invalid_prompt",
                    &message,
                    &format!("Node ID '#{id}'"),
                    json!({}),
                ));
            }
            None => {
                let message = "Cannot execute because a node is missing the class_type property.";
                return Err(top_error(
                    "invalid_prompt",
                    message,
                    &format!("Node ID '#{id}'"),
                    json!({}),
                ));
            }
        }
    }
    let outputs: Vec<String> = nodes
        .iter()
        .filter(|(_, node)| {
            let class = node["class_type"].as_str().unwrap_or_default();
            info[class]["output_node"].as_bool().unwrap_or(false)
        })
        .map(|(id, _)| id.clone())
        .collect();
    if outputs.is_empty() {
        return Err(top_error(
            "prompt_no_outputs",
            "Prompt has no outputs",
            "",
            json!({}),
        ));
    }

    let mut node_errors = Map::new();
    for (id, node) in nodes {
        let errors = validate_node(info, nodes, node);
        if !errors.is_empty() {
            node_errors.insert(id.clone(), json!({ "errors": errors, "class_type": node["class_type"], "dependent_outputs": [] }));
        }
    }
    let mut failed_outputs = Vec::new();
    for output in &outputs {
        for upstream in reachable(nodes, output) {
            if let Some(entry) = node_errors.get_mut(&upstream) {
                entry["dependent_outputs"]
                    .as_array_mut()
                    .expect("built above")
                    .push(json!(output));
                if !failed_outputs.contains(output) {
                    failed_outputs.push(output.clone());
                }
            }
        }
    }
    node_errors.retain(|_, entry| {
        !entry["dependent_outputs"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    if !node_errors.is_empty() && failed_outputs.len() == outputs.len() {
        let mut answer = top_error(
            "prompt_outputs_failed_validation",
            "Prompt outputs failed validation",
            "",
            json!({}),
        );
        answer["node_errors"] = Value::Object(node_errors);
        return Err(answer);
    }
    Ok(outputs
        .into_iter()
        .filter(|o| !failed_outputs.contains(o))
        .collect())
}

pub(super) fn top_error(kind: &str, message: &str, details: &str, extra: Value) -> Value {
    json!({ "error": { "type": kind, "message": message, "details": details, "extra_info": extra }, "node_errors": {} })
}

pub(super) fn reachable(nodes: &Map<String, Value>, from: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(inputs) = nodes
            .get(&id)
            .and_then(|n| n.get("inputs"))
            .and_then(Value::as_object)
        {
            for value in inputs.values() {
                if let Some(source) = link_source(value) {
                    stack.push(source.to_owned());
                }
            }
        }
    }
    seen
}

pub(super) fn link_source(value: &Value) -> Option<&str> {
    match value.as_array().map(Vec::as_slice) {
        Some([Value::String(id), Value::Number(_)]) => Some(id),
        _ => None,
    }
}

pub(super) fn validate_node(info: &Value, nodes: &Map<String, Value>, node: &Value) -> Vec<Value> {
    let class = node["class_type"].as_str().unwrap_or_default();
    let Some(required) = info[class]["input"]["required"].as_object() else {
        return vec![];
    };
    let inputs = node.get("inputs").and_then(Value::as_object);
    let mut errors = Vec::new();
    for (name, spec) in required {
        let Some(value) = inputs.and_then(|i| i.get(name)) else {
            errors.push(json!({
                "type": "required_input_missing", "message": "Required input is missing",
                "details": name, "extra_info": { "input_name": name }
            }));
            continue;
        };
        if let Some(source) = link_source(value) {
            if !nodes.contains_key(source) {
                errors.push(json!({
                    "type": "exception_during_validation", "message": "Exception when validating node",
                    "details": format!("'{source}'"), "extra_info": { "input_name": name }
                }));
            }
            continue;
        }
        let kind = &spec[0];
        let options = &spec[1];
        if let Some(choices) = kind.as_array() {
            // LoadImage validates its file itself (VALIDATE_INPUTS), so the list check is skipped for it.
            if class == "LoadImage" {
                continue;
            }
            if !choices.contains(value) {
                let shown: Vec<String> = choices
                    .iter()
                    .map(|c| format!("'{}'", c.as_str().unwrap_or_default()))
                    .collect();
                errors.push(json!({
                    "type": "value_not_in_list", "message": "Value not in list",
                    "details": format!("{name}: '{}' not in [{}]", value.as_str().unwrap_or_default(), shown.join(", ")),
                    "extra_info": { "input_name": name, "input_config": spec, "received_value": value }
                }));
            }
            continue;
        }
        if matches!(kind.as_str(), Some("INT" | "FLOAT")) {
            let Some(number) = value.as_f64() else {
                errors.push(json!({
                    "type": "invalid_input_type", "message": "Failed to convert an input value to a number",
                    "details": format!("{name}, {value}"), "extra_info": { "input_name": name, "received_value": value }
                }));
                continue;
            };
            if let Some(min) = options.get("min").and_then(Value::as_f64)
                && number < min
            {
                errors.push(json!({
                    "type": "value_smaller_than_min", "message": format!("Value {number} smaller than min of {min}"),
                    "details": name, "extra_info": { "input_name": name, "input_config": spec, "received_value": value }
                }));
            }
            if let Some(max) = options.get("max").and_then(Value::as_f64)
                && number > max
            {
                errors.push(json!({
                    "type": "value_bigger_than_max", "message": format!("Value {number} bigger than max of {max}"),
                    "details": name, "extra_info": { "input_name": name, "input_config": spec, "received_value": value }
                }));
            }
        }
    }
    errors
}

pub(super) async fn get_queue(State(shared): State<Arc<Shared>>) -> Response {
    let queue = shared.queue.lock().unwrap();
    let running: Vec<Value> = queue.running.iter().map(QueueItem::to_json).collect();
    let pending: Vec<Value> = queue.pending.iter().map(QueueItem::to_json).collect();
    axum::Json(json!({ "queue_running": running, "queue_pending": pending })).into_response()
}

pub(super) async fn post_queue(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return server_error();
    };
    {
        let mut queue = shared.queue.lock().unwrap();
        if body.get("clear").and_then(Value::as_bool) == Some(true) {
            queue.pending.clear();
        }
        if let Some(ids) = body.get("delete").and_then(Value::as_array) {
            queue.pending.retain(|item| {
                !ids.iter()
                    .any(|id| id.as_str() == Some(item.prompt_id.as_str()))
            });
        }
    }
    broadcast_status(&shared);
    StatusCode::OK.into_response()
}

pub(super) async fn interrupt(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    // An empty or invalid body interrupts whatever runs; a prompt_id only that prompt, if it is the one running.
    let target = serde_json::from_slice::<Value>(&body).ok().and_then(|b| {
        b.get("prompt_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let running = shared
        .queue
        .lock()
        .unwrap()
        .running
        .as_ref()
        .map(|item| item.prompt_id.clone());
    if running.is_some() && (target.is_none() || target == running) {
        shared.interrupt.store(true, Ordering::SeqCst);
    }
    StatusCode::OK.into_response()
}

pub(super) async fn get_history(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let parse = |key: &str| query.get(key).map(|v| v.parse::<usize>());
    let (max_items, offset) = match (parse("max_items"), parse("offset")) {
        (Some(Err(_)), _) | (_, Some(Err(_))) => return server_error(),
        (max, off) => (max.map(Result::unwrap), off.map(Result::unwrap)),
    };
    let history = shared.history.lock().unwrap();
    let len = history.len();
    let start = match (offset, max_items) {
        (Some(offset), _) => offset.min(len),
        (None, Some(max)) => len.saturating_sub(max),
        (None, None) => 0,
    };
    let take = max_items.unwrap_or(usize::MAX);
    let page: Map<String, Value> = history
        .iter()
        .skip(start)
        .take(take)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    axum::Json(Value::Object(page)).into_response()
}

pub(super) async fn post_history(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return server_error();
    };
    let mut history = shared.history.lock().unwrap();
    if body.get("clear").and_then(Value::as_bool) == Some(true) {
        history.clear();
    }
    if let Some(ids) = body.get("delete").and_then(Value::as_array) {
        for id in ids.iter().filter_map(Value::as_str) {
            history.remove(id);
        }
    }
    StatusCode::OK.into_response()
}

pub(super) async fn history_one(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    let history = shared.history.lock().unwrap();
    match history.get(&id) {
        Some(entry) => axum::Json(json!({ id: entry })).into_response(),
        None => axum::Json(json!({})).into_response(),
    }
}
