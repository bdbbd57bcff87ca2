//! What the fake ComfyUI does for a paid API node, as ComfyUI 0.3.64 does (`comfy_api_nodes/`): it needs the
//! credentials of the prompt's `extra_data` (`api_key_comfy_org`, `auth_token_comfy_org`) and fails with
//! "Unauthorized" without them; with them it calls the Comfy.org API base (`--comfy-api-base`) with `X-API-KEY` /
//! `Authorization: Bearer`, a BFL node at `/proxy/bfl/<model>/generate`, and reports the price it was told as the
//! node's progress text (`Price: $…`).

use std::time::Duration;

use axum::body::Body;
use http::{Request, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

/// The BFL nodes' endpoints (`nodes_bfl.py`).
const BFL_PATHS: [(&str, &str); 7] = [
    (
        "FluxProUltraImageNode",
        "/proxy/bfl/flux-pro-1.1-ultra/generate",
    ),
    (
        "FluxKontextProImageNode",
        "/proxy/bfl/flux-kontext-pro/generate",
    ),
    (
        "FluxKontextMaxImageNode",
        "/proxy/bfl/flux-kontext-max/generate",
    ),
    ("FluxProFillNode", "/proxy/bfl/flux-pro-1.0-fill/generate"),
    (
        "FluxProExpandNode",
        "/proxy/bfl/flux-pro-1.0-expand/generate",
    ),
    ("FluxProCannyNode", "/proxy/bfl/flux-pro-1.0-canny/generate"),
    ("FluxProDepthNode", "/proxy/bfl/flux-pro-1.0-depth/generate"),
];

/// A paid node that failed, as its `execution_error` names it: ComfyUI puts the node's inputs into
/// `current_inputs`, its hidden ones (the Comfy.org credentials among them) included.
pub struct NodeFailure {
    pub node_id: String,
    pub node_type: String,
    pub message: String,
    pub current_inputs: Value,
}

/// A node's hidden inputs as ComfyUI fills them (`execution.py` `get_input_data`): V3 nodes declare
/// `api_key_comfy_org: ["API_KEY_COMFY_ORG"]`, V1 nodes `comfy_api_key: "API_KEY_COMFY_ORG"`.
fn hidden_inputs(object_info: &Value, class: &str, id: &str, extra_data: &Value) -> Value {
    let mut inputs = Map::new();
    for (name, spec) in object_info[class]["input"]["hidden"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let kind = spec
            .as_str()
            .or_else(|| spec[0].as_str())
            .unwrap_or_default();
        let value = match kind {
            "API_KEY_COMFY_ORG" => extra_data["api_key_comfy_org"].clone(),
            "AUTH_TOKEN_COMFY_ORG" => extra_data["auth_token_comfy_org"].clone(),
            "UNIQUE_ID" => json!(id),
            _ => Value::Null,
        };
        if !value.is_null() {
            inputs.insert(name.clone(), json!([value]));
        }
    }
    Value::Object(inputs)
}

/// The paid nodes of `prompt`, in id order: `(id, class, runs)`, `runs` being how many times ComfyUI runs the node
/// (once per item of a list it is fed, see [`list_lengths`]).
pub fn paid_nodes(
    object_info: &Value,
    prompt: &Map<String, Value>,
) -> Vec<(String, String, usize)> {
    let lengths = list_lengths(object_info, prompt);
    prompt
        .iter()
        .filter_map(|(id, node)| {
            let class = node["class_type"].as_str()?;
            let runs = lengths.get(id).map_or(1, |out| out.runs);
            (object_info[class]["api_node"] == true).then(|| (id.clone(), class.to_owned(), runs))
        })
        .collect()
}

/// What one node's output is, as ComfyUI's execution makes it: `len` list items carrying `items` images (or latents)
/// in all, from a node that ran `runs` times.
#[derive(Clone, Copy)]
struct Output {
    len: usize,
    items: usize,
    runs: usize,
}

/// ComfyUI's map-over-list (`execution.py` `_async_map_node_over_list`): a node fed a list output
/// (`output_is_list`) runs once per item, the shorter inputs' last item repeated, and its own outputs become lists
/// of that length; `RebatchImages`/`RebatchLatents` take their input as a list (`INPUT_IS_LIST`) and cut its
/// `items` into lists of `batch_size`. `EmptyImage`/`EmptyLatentImage` make `batch_size` items.
fn list_lengths(
    object_info: &Value,
    prompt: &Map<String, Value>,
) -> std::collections::HashMap<String, Output> {
    fn visit(
        id: &str,
        object_info: &Value,
        prompt: &Map<String, Value>,
        seen: &mut std::collections::HashMap<String, Output>,
        depth: usize,
    ) -> Output {
        if let Some(out) = seen.get(id) {
            return *out;
        }
        let single = Output {
            len: 1,
            items: 1,
            runs: 1,
        };
        let Some(node) = prompt.get(id).filter(|_| depth < 256) else {
            return single;
        };
        let class = node["class_type"].as_str().unwrap_or_default();
        // A widget's value, given or fed by a primitive node (ComfyUI runs that first and passes its value on).
        let widget = |name: &str| {
            let input = &node["inputs"][name];
            let value = match input[0].as_str() {
                Some(from) => &prompt.get(from)?["inputs"]["value"],
                None => input,
            };
            value.as_u64().map(|n| n.max(1) as usize)
        };
        let mut fed = Vec::new();
        for input in node["inputs"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, v)| v)
        {
            if let (Some(from), Some(slot)) = (input[0].as_str(), input[1].as_u64()) {
                let upstream = visit(from, object_info, prompt, seen, depth + 1);
                let from_class = prompt[from]["class_type"].as_str().unwrap_or_default();
                let is_list = object_info[from_class]["output_is_list"][slot as usize] == true;
                fed.push(if is_list || upstream.runs > 1 {
                    upstream
                } else {
                    Output { len: 1, ..upstream }
                });
            }
        }
        let out = match class {
            "EmptyImage" | "EmptyLatentImage" => Output {
                items: widget("batch_size").unwrap_or(1),
                ..single
            },
            "RebatchImages" | "RebatchLatents" => {
                let items = fed.first().map_or(1, |f| f.items);
                let size = widget("batch_size").unwrap_or(1);
                Output {
                    len: items.div_ceil(size),
                    items,
                    runs: 1,
                }
            }
            _ => {
                let runs = fed.iter().map(|f| f.len).max().unwrap_or(1);
                let items = fed.first().map_or(1, |f| f.items);
                Output {
                    len: runs,
                    items,
                    runs,
                }
            }
        };
        seen.insert(id.to_owned(), out);
        out
    }
    let mut seen = std::collections::HashMap::new();
    for id in prompt.keys() {
        visit(id, object_info, prompt, &mut seen, 0);
    }
    seen
}

/// Runs the paid nodes, each as many times as ComfyUI would, the runs of one node all at once (ComfyUI starts an
/// async node's runs together and awaits them with `asyncio.wait`); answers each run's progress text, or the
/// first failure.
pub async fn run(
    object_info: &Value,
    base: Option<&str>,
    nodes: &[(String, String, usize)],
    extra_data: &Value,
) -> Result<Vec<(String, String)>, NodeFailure> {
    let mut texts = Vec::new();
    for (id, class, runs) in nodes {
        let calls = (0..*runs).map(|_| call(object_info, base, id, class, extra_data));
        for answer in futures_util::future::join_all(calls).await {
            texts.extend(answer?.map(|text| (id.clone(), text)));
        }
    }
    Ok(texts)
}

/// One run of a paid node: one call to the API base; answers its progress text.
async fn call(
    object_info: &Value,
    base: Option<&str>,
    id: &str,
    class: &str,
    extra_data: &Value,
) -> Result<Option<String>, NodeFailure> {
    let key = extra_data["api_key_comfy_org"].as_str();
    let token = extra_data["auth_token_comfy_org"].as_str();
    let fail = |message: String| NodeFailure {
        node_id: id.to_owned(),
        node_type: class.to_owned(),
        message,
        current_inputs: hidden_inputs(object_info, class, id, extra_data),
    };
    if key.is_none() && token.is_none() {
        return Err(fail(
            "Unauthorized: Please login first to use this node.".into(),
        ));
    }
    let Some(base) = base else {
        return Err(fail("The Comfy.org API cannot be reached.".into()));
    };
    let path = BFL_PATHS
        .iter()
        .find(|(c, _)| *c == class)
        .map(|(_, p)| (*p).to_owned())
        .unwrap_or_else(|| format!("/proxy/other/{class}"));
    let mut request =
        Request::post(format!("{base}{path}")).header(header::CONTENT_TYPE, "application/json");
    // One credential, the bearer token first (`apis/client.py` `get_headers`).
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    } else if let Some(key) = key {
        request = request.header("X-API-KEY", key);
    }
    let request = request
        .body(orchestrator::comfy::proxy::boxed(Body::from(
            json!({ "node": class }).to_string(),
        )))
        .map_err(|e| fail(e.to_string()))?;
    let client = orchestrator::comfy::proxy::http_client(Duration::from_secs(5));
    let response = client
        .request(request)
        .await
        .map_err(|e| fail(format!("The Comfy.org API cannot be reached: {e}")))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let message = answer["message"]
            .as_str()
            .or_else(|| answer["error"]["message"].as_str())
            .unwrap_or("refused");
        return Err(fail(format!(
            "The Comfy.org API refused the request ({status}): {message}"
        )));
    }
    Ok(answer["price"]
        .as_f64()
        .map(|price| format!("Price: ${price:.4}")))
}
