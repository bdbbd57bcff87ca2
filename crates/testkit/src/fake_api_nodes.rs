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

/// The paid nodes of `prompt`, in id order: `(id, class)`.
pub fn paid_nodes(object_info: &Value, prompt: &Map<String, Value>) -> Vec<(String, String)> {
    prompt
        .iter()
        .filter_map(|(id, node)| {
            let class = node["class_type"].as_str()?;
            (object_info[class]["api_node"] == true).then(|| (id.clone(), class.to_owned()))
        })
        .collect()
}

/// Runs the paid nodes: one call each to the API base; answers each node's progress text, or the first failure.
pub async fn run(
    object_info: &Value,
    base: Option<&str>,
    nodes: &[(String, String)],
    extra_data: &Value,
) -> Result<Vec<(String, String)>, NodeFailure> {
    let key = extra_data["api_key_comfy_org"].as_str();
    let token = extra_data["auth_token_comfy_org"].as_str();
    let mut texts = Vec::new();
    for (id, class) in nodes {
        let fail = |message: String| NodeFailure {
            node_id: id.clone(),
            node_type: class.clone(),
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
            .find(|(c, _)| c == class)
            .map(|(_, p)| (*p).to_owned())
            .unwrap_or_else(|| format!("/proxy/other/{class}"));
        let mut request =
            Request::post(format!("{base}{path}")).header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header("X-API-KEY", key);
        }
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
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
            return Err(fail(format!(
                "The Comfy.org API refused the request ({status}): {}",
                answer["message"].as_str().unwrap_or("refused")
            )));
        }
        if let Some(price) = answer["price"].as_f64() {
            texts.push((id.clone(), format!("Price: ${price:.4}")));
        }
    }
    Ok(texts)
}
