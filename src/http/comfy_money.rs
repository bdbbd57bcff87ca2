//! The gateway's part of the money rules: a prompt posted to ComfyUI through `/api/comfy/prompt` (or
//! `/api/comfy/api/prompt`) is read whole, cleared of the client's Comfy.org credentials and looked at before it is
//! forwarded; answers that echo prompts (`/queue`, `/history…`, `/api/jobs…`) are cleared of them on the way back.
//!
//! This is the one place the gateway holds a body whole: a prompt must be parsed to know what it costs, and what is
//! forwarded is the parsed prompt written again, so ComfyUI runs exactly what was judged (no duplicate-key or
//! number-spelling trick can make it read something else). Bounded by `COMFY_MAX_BODY_MB`.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::codes::Code;
use crate::comfy::credentials;
use crate::comfy::error::ComfyError;
use crate::comfy::nodes::Unclassified;
use crate::comfy::prompt::Unreadable;
use crate::error::ApiError;
use crate::jobs::gate::Assessment;
use crate::money::usd;
use crate::problems::RequestError;

/// The largest answer that is checked for credentials; ComfyUI's history is capped at 10,000 prompts.
const MAX_ECHO_BYTES: usize = 256 * 1024 * 1024;

/// `POST /prompt` through the gateway.
pub async fn post_prompt(
    state: &AppState,
    request: Request<Body>,
    path: &str,
    origin: super::gateway::Origin,
) -> Response {
    let (mut parts, body) = request.into_parts();
    // aiohttp decodes a body with the charset its Content-Type names: a prompt judged as UTF-8 must be read as
    // UTF-8 (a UTF-7 body hides whole nodes in what UTF-8 reads as one string), so no other charset is taken,
    // and what is forwarded says plainly what it is.
    if let Some(charset) = charset(&parts.headers)
        && !matches!(charset.as_str(), "utf-8" | "utf8")
    {
        return comfy_refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::UnsupportedMediaType,
            &format!("A prompt must be UTF-8 JSON; charset={charset} is not taken."),
            json!({}),
            json!({}),
        );
    }
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // What is forwarded is the JSON text that was judged, never a compressed one for aiohttp to unpack.
    parts.headers.remove(header::CONTENT_ENCODING);
    let bytes = match read_limited(body, state.config.comfy.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(refused) => return ApiError::from(refused).into_response(),
    };
    let prompt = match crate::comfy::prompt::read(&bytes) {
        Ok(prompt) => prompt,
        Err(Unreadable::NotJson) => {
            return comfy_refusal(
                StatusCode::BAD_REQUEST,
                Code::InvalidBody,
                "The prompt is not valid JSON.",
                json!({}),
                json!({}),
            );
        }
        Err(Unreadable::NotAWorkflow) => return not_a_workflow(),
    };
    if let Some(nodes) = &prompt.nodes {
        let catalog = match state.models.nodes(&state.gateway).await {
            Ok(catalog) => catalog,
            Err(error) => return ApiError::from(error).into_response(),
        };
        match catalog.any_paid(nodes) {
            Ok(false) => {}
            Ok(true) => {
                // The rare path: the whole workflow is read, to name and price its paid nodes.
                let body: Value = serde_json::from_slice(&prompt.body).unwrap_or_default();
                match state.jobs.gate().assess(&catalog, &body["prompt"]) {
                    Ok(assessment) => {
                        let source = Source::of(&parts, origin);
                        return refuse_paid(state, &body["prompt"], &assessment, source).await;
                    }
                    Err(_) => return not_a_workflow(),
                }
            }
            Err(Unclassified::UnknownClasses(unknown)) => {
                let (id, class) = &unknown[0];
                return comfy_refusal(
                    StatusCode::BAD_REQUEST,
                    Code::InvalidPrompt,
                    &format!("Cannot execute because node {class} does not exist."),
                    json!(format!("Node ID '#{id}'")),
                    json!({}),
                );
            }
            Err(Unclassified::NotAWorkflow) => return not_a_workflow(),
        }
    }
    let forwarded = prompt.body;
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(forwarded.len()));
    let request = Request::from_parts(parts, Body::from(forwarded));
    state
        .gateway
        .forward(request, path)
        .await
        .map(|answer| answer.map(axum::body::Body::new))
        .unwrap_or_else(|error| ApiError::from(error).into_response())
}

/// A prompt's body, read whole up to `limit` bytes (it must be judged before it is forwarded).
async fn read_limited(body: Body, limit: u64) -> Result<bytes::Bytes, RequestError> {
    match http_body_util::Limited::new(body, limit as usize)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(RequestError::PayloadTooLarge { limit })
        }
        Err(error) => Err(match crate::comfy::body::timed_out(&*error) {
            Some(after) => RequestError::BodyTimeout { after },
            None => RequestError::BodyUnreadable,
        }),
    }
}

/// The `charset` parameter of the Content-Type, lower-cased, quotes removed.
fn charset(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?;
    let Ok(text) = value.to_str() else {
        return Some("(not ASCII)".into());
    };
    text.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        (name.trim().eq_ignore_ascii_case("charset"))
            .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
    })
}

fn not_a_workflow() -> Response {
    comfy_refusal(
        StatusCode::BAD_REQUEST,
        Code::InvalidPrompt,
        "Cannot execute because the prompt is not one object of nodes, each with a class_type and each id once.",
        json!(""),
        json!({}),
    )
}

/// A prompt with paid nodes and no approval: 403 while generation is off; else kept as a job that waits for a
/// person, and 402 with the dry run. Shaped both as Orchestrator's error and as ComfyUI's rejected prompt
/// (`error.type`, `error.message`, `node_errors` on the paid nodes), so the editor shows why and where to approve.
/// Where a parked prompt came from, kept with its job so whoever approves it sees it: the origin it was posted to
/// (ComfyUI's editor, or the panel's gateway), the client's address and its `User-Agent`.
struct Source {
    client: Option<std::net::IpAddr>,
    params: Value,
}

impl Source {
    fn of(parts: &http::request::Parts, origin: super::gateway::Origin) -> Self {
        let client = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip());
        let agent: Option<String> = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(200).collect());
        let origin = match origin {
            super::gateway::Origin::Editor => "editor",
            super::gateway::Origin::Panel => "panel",
        };
        let params = json!({ "source": "gateway", "origin": origin,
                             "client": client.map(|ip| ip.to_string()), "user_agent": agent });
        Self { client, params }
    }
}

async fn refuse_paid(
    state: &AppState,
    workflow: &Value,
    assessment: &Assessment,
    source: Source,
) -> Response {
    let price = format!("${:.3}", usd(assessment.total_micros));
    let node_errors = |message: &str| -> Value {
        assessment
            .nodes
            .iter()
            .map(|n| {
                let error = json!({"type": "paid_node", "message": message,
                    "details": format!("{} ({}): ~${:.3}", n.node.display_name, n.node.category, n.price_usd),
                    "extra_info": {}});
                (
                    n.node.id.clone(),
                    json!({"errors": [error], "dependent_outputs": [], "class_type": n.node.class_type}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    if !state.jobs.gate().allow_generation {
        let message = format!(
            "This workflow has paid API nodes (estimated {price}) and paid generation is disabled on this \
             Orchestrator (ALLOW_GENERATION=false). Nothing was sent."
        );
        return comfy_refusal(
            StatusCode::FORBIDDEN,
            Code::GenerationDisabled,
            &message,
            assessment.approval_json(),
            node_errors("Paid node: generation is disabled on this server"),
        );
    }
    // Each parked prompt is a job someone must look at: a page (or a custom node's script) posting them in a loop
    // is held to the paid routes' pace, per client.
    let client = source
        .client
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    if let Err(retry_after) = state.parked_limiter.check(client) {
        let retry_after = retry_after.max(1);
        let mut refused = comfy_refusal(
            StatusCode::TOO_MANY_REQUESTS,
            Code::RateLimited,
            &format!(
                "Too many paid prompts from this client; try again in {retry_after} s. Nothing was sent."
            ),
            json!({ "retry_after_secs": retry_after }),
            node_errors("Paid node: too many paid prompts; try again shortly"),
        );
        refused
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return refused;
    }
    let job = match state
        .jobs
        .park(&state.gateway, workflow, assessment, &source.params)
        .await
    {
        Ok(job) => job,
        Err(error) => return ApiError::internal(error).into_response(),
    };
    let mut details = assessment.approval_json();
    details["jobId"] = json!(job.id);
    details["status"] = json!(job.status);
    details["confirmUrl"] = json!(format!("/api/jobs/{}/confirm", job.id));
    details["panelUrl"] = json!(format!("/jobs/{}", job.id));
    // A run the graph does not fix a count of is confirmed with a cap, in the panel or with `maxUsd`.
    let amount = assessment.amount(None).ok().flatten();
    details["confirmToken"] = json!(amount.map(|amount| state.jobs.gate().issue(workflow, amount)));
    details["expiresInSecs"] = json!(state.jobs.gate().ttl_secs());
    let message = format!(
        "This workflow has paid API nodes (estimated {price}). It was not sent: it waits as job {} for your \
         confirmation in Orchestrator's panel (/jobs/{}).",
        job.id, job.id
    );
    comfy_refusal(
        StatusCode::PAYMENT_REQUIRED,
        Code::ConfirmationRequired,
        &message,
        details,
        node_errors("Paid node: confirm its price in Orchestrator's panel"),
    )
}

/// An error both Orchestrator's clients (`error.code`) and ComfyUI's editor (`error.type`, `node_errors`) read.
fn comfy_refusal(
    status: StatusCode,
    code: Code,
    message: &str,
    details: Value,
    node_errors: Value,
) -> Response {
    let body = json!({
        "error": { "code": code, "type": code, "message": message, "details": details, "extra_info": {} },
        "node_errors": node_errors,
    });
    (status, axum::Json(body)).into_response()
}

/// Before an answer that may echo prompts is asked for: ComfyUI must answer it uncompressed, so it can be read.
pub fn prepare_echo_request(request: &mut Request<Body>) {
    request.headers_mut().remove(header::ACCEPT_ENCODING);
}

/// An answer that may echo prompts, with every Comfy.org credential removed (and the server's key, `secret`, masked
/// wherever its value is).
pub async fn clear_echo(response: Response, secret: Option<&str>) -> Response {
    let (mut parts, body) = response.into_parts();
    if parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| e.as_bytes() != b"identity")
    {
        return ApiError::from(ComfyError::BadResponse(
            "a compressed answer that may hold credentials".into(),
        ))
        .into_response();
    }
    let bytes = match http_body_util::Limited::new(body, MAX_ECHO_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return ApiError::from(ComfyError::BadResponse(format!(
                "cannot read the answer: {error}"
            )))
            .into_response();
        }
    };
    let body = if credentials::may_hold(&bytes, secret) {
        let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
            // The mark in a text that is not JSON: not passed on, as it cannot be cleared.
            return ApiError::from(ComfyError::BadResponse(
                "an answer that may hold credentials".into(),
            ))
            .into_response();
        };
        match credentials::strip(&mut value, secret) {
            true => serde_json::to_vec(&value).unwrap_or_default().into(),
            false => bytes,
        }
    } else {
        bytes
    };
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, Body::from(body))
}
