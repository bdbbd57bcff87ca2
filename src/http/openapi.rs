//! The OpenAPI 3.1 document of the API, generated from the code: every route the router serves is registered
//! together with its `#[utoipa::path]` description (see [`super::router`]), so a route cannot exist without being
//! in the document. This module adds what no handler carries: the document's head, the pass-through routes
//! (`/api/comfy/{path}`, its WebSocket, `/api/v0/{path}`), and the shapes of answers built as JSON values.
//!
//! `GET /api/openapi.json` serves it; `orchestrator openapi` prints it, and `docs/openapi.json` is that output,
//! checked by a test.

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::OpenApi as Document;
use utoipa::{OpenApi, ToSchema};

use crate::error::ErrorBody;
use crate::model::JobStatus;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Orchestrator",
        description = "The local control plane for AI image generation: ComfyUI as a service behind one guarded \
gateway, generation jobs, and paid cloud APIs behind money rules. Every error answer has the body \
`{error: {code, message, details}}` with a stable `code`. Requests must carry an allowed `Host`; state-changing \
requests from a foreign `Origin` are refused; with `ORCHESTRATOR_TOKEN` set, every request needs \
`Authorization: Bearer <token>`.",
        license(name = "MIT"),
    ),
    paths(comfy_passthrough, comfy_websocket, v0_passthrough, comfy_org_egress, openapi_json),
    components(schemas(ErrorBody)),
    tags(
        (name = "status", description = "The health report"),
        (name = "service", description = "ComfyUI as a service: status, start, stop, Ignite, its log"),
        (name = "comfy", description = "ComfyUI's own API, passed through"),
        (name = "model paths", description = "ComfyUI's extra_model_paths.yaml"),
        (name = "jobs", description = "Generation jobs, their events and outputs"),
        (name = "flux", description = "FLUX (Black Forest Labs), behind dry run, confirmation and budget"),
        (name = "v0", description = "The v0 Platform API, with the key kept on the server"),
        (name = "comfy-org", description = "The Comfy.org egress ComfyUI's paid API nodes call: priced, metered against each job's confirmed amount"),
        (name = "builder", description = "The builder's conversation with v0"),
        (name = "v2", description = "The Comfy API v2 (Comfy-Org's contract and official SDK): jobs, their events, assets"),
        (name = "meta", description = "Orchestrator itself"),
    )
)]
struct Head;

/// The head of the document; the router adds every route it serves.
pub fn head() -> Document {
    Head::openapi()
}

/// Every route that reads a request body can answer `408 body_timeout`: the answer is added here to each, once,
/// rather than written on every route.
pub fn with_body_timeouts(mut document: Document) -> Document {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let answer = ResponseBuilder::new()
        .description("`body_timeout`: the body came too slowly (`ORCH_BODY_IDLE_SECS`, `ORCH_BODY_TIMEOUT_SECS`)")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            if operation.request_body.is_some() {
                operation
                    .responses
                    .responses
                    .entry("408".to_owned())
                    .or_insert_with(|| answer.clone().into());
            }
        }
    }
    document
}

/// The document as the server serves it and `docs/openapi.json` holds it.
pub fn to_json(document: &Document) -> String {
    let mut text = document
        .to_pretty_json()
        .expect("an OpenAPI document always serialises");
    text.push('\n');
    text
}

/// Every route of ComfyUI's API (`/prompt`, `/queue`, `/history`, `/view`, `/object_info`, `/upload/image`, …),
/// under both of its prefixes (`/api/comfy/prompt` and `/api/comfy/api/prompt`), forwarded to the configured
/// ComfyUI with bodies streamed both ways. Answers are ComfyUI's own, except the gateway's errors, and never a
/// document or a script: ComfyUI's editor is served on an origin of its own. Every answer carries
/// `X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`; a `/view` file that is not a raster
/// image, video or audio comes with `Content-Disposition: attachment`.
#[utoipa::path(
    method(get, post, put, delete, patch),
    path = "/api/comfy/{path}",
    tag = "comfy",
    params(("path" = String, Path, description = "ComfyUI's path; `.`/`..` segments in any encoding, backslashes and control characters are refused")),
    responses(
        (status = 200, description = "ComfyUI's answer, streamed as it comes (any status ComfyUI gives passes through)"),
        (status = 400, description = "A path that could climb out of ComfyUI's API (`invalid_path`)", body = ErrorBody),
        (status = 403, description = "A cross-site request of any method (`cross_origin_refused`; a top-level navigation to `/view` excepted), or an HTML page, script, style sheet, SVG or XML answer, which the panel's origin never serves (`editor_origin_only`, with `details.editor`: ComfyUI's editor on its own origin, `ORCH_COMFY_BIND`)", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body came too slowly (`ORCH_BODY_IDLE_SECS`, `ORCH_BODY_TIMEOUT_SECS`)", body = ErrorBody),
        (status = 413, description = "A body over the limit (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "A non-JSON body on one of ComfyUI's JSON routes", body = ErrorBody),
        (status = 402, description = "`POST /prompt` with paid API nodes and no approval: kept as a job awaiting confirmation (`confirmation_required`, ComfyUI's rejected-prompt shape)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many paid prompts from this client; see `Retry-After`", body = ErrorBody),
        (status = 502, description = "ComfyUI cannot be reached (`comfy_unreachable`)", body = ErrorBody),
        (status = 504, description = "ComfyUI did not answer in time (`comfy_timeout`)", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn comfy_passthrough() {}

/// ComfyUI's WebSocket (`/ws?clientId=…`): progress, previews and results, relayed both ways.
#[utoipa::path(
    get,
    path = "/api/comfy/ws",
    tag = "comfy",
    params(("clientId" = Option<String>, Query, description = "ComfyUI's client id: messages about prompts sent with it come to this socket")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol, relayed to ComfyUI's /ws"),
        (status = 400, description = "Not a WebSocket upgrade: ComfyUI's own refusal of a plain GET"),
        (status = 403, description = "`cross_origin_refused`: an upgrade from another site's page, or another port's", body = ErrorBody),
        (status = 502, description = "ComfyUI cannot be reached", body = ErrorBody),
        (status = 504, description = "ComfyUI did not answer the upgrade in time", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn comfy_websocket() {}

/// The v0 Platform API (`/v1/…`): every method, the client's credentials removed and the server's key added;
/// streamed answers (server-sent events) pass through as they come.
#[utoipa::path(
    method(get, post, put, delete, patch),
    path = "/api/v0/{path}",
    tag = "v0",
    params(("path" = String, Path, description = "v0's path after /v1, e.g. `chats`")),
    responses(
        (status = 200, description = "v0's answer, streamed (any status v0 gives passes through)"),
        (status = 403, description = "`cross_origin_refused`: any request from another site's page", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body came too slowly (`ORCH_BODY_IDLE_SECS`, `ORCH_BODY_TIMEOUT_SECS`)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: a body over 1 MiB", body = ErrorBody),
        (status = 429, description = "Too many requests from this client", body = ErrorBody),
        (status = 502, description = "v0 cannot be reached (`v0_unreachable`)", body = ErrorBody),
        (status = 503, description = "V0_API_KEY is not configured (`v0_not_configured`)", body = ErrorBody),
        (status = 504, description = "v0 did not answer in time (`v0_timeout`)", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn v0_passthrough() {}

/// The Comfy.org API as ComfyUI's API nodes call it (ComfyUI runs with `--comfy-api-base
/// <orchestrator>/api/comfy-org`): the call must carry its job's key (`X-API-KEY`, put into each approved prompt),
/// is priced from its route and body, counted against its job's confirmed amount and forwarded to
/// `COMFY_ORG_API_BASE` with the server's key. Polls and downloads are free; Comfy.org's answer passes through.
#[utoipa::path(
    method(get, post, put, delete, patch),
    path = "/api/comfy-org/{path}",
    tag = "comfy-org",
    params(("path" = String, Path, description = "Comfy.org's path, e.g. `proxy/bfl/flux-pro-1.1-ultra/generate`")),
    responses(
        (status = 200, description = "Comfy.org's answer, streamed (any status it gives passes through)"),
        (status = 400, description = "`invalid_path`: a path outside Comfy.org's proxy and storage routes", body = ErrorBody),
        (status = 401, description = "`egress_key_invalid`: no job's key, an unknown one, or an ended job's; nothing was forwarded", body = ErrorBody),
        (status = 402, description = "`spend_cap_reached`: the call would pass its job's confirmed amount; the job is failed and its run interrupted", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body came too slowly (`ORCH_BODY_IDLE_SECS`, `ORCH_BODY_TIMEOUT_SECS`)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: a body over 32 MiB", body = ErrorBody),
        (status = 502, description = "`comfy_org_unreachable`: Comfy.org cannot be reached", body = ErrorBody),
        (status = 503, description = "`comfy_org_not_configured`: COMFY_ORG_API_KEY is not set", body = ErrorBody),
        (status = 504, description = "`comfy_org_timeout`: Comfy.org did not answer in time", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn comfy_org_egress() {}

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
#[allow(dead_code)]
fn openapi_json() {}

/// One server-sent event of `/api/events` and `/api/jobs/{id}/events`, as a client reads it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobEventMessage {
    /// The event's number: sent back as `Last-Event-ID`, the stream resumes after it.
    #[schema(example = "42")]
    pub id: String,
    /// `state`, `progress`, `node`, `output` or `resubmitted`.
    #[schema(example = "progress")]
    pub event: String,
    /// The job (`Job`) as JSON, as it is after the change.
    pub data: String,
}

/// `GET /api/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
    pub version: &'static str,
}

/// A `POST /api/flux/generate` body. Which fields apply depends on the model (`GET /api/flux/models` lists them);
/// camelCase spellings (`aspectRatio`, `outputFormat`, …) are accepted too.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FluxRequest {
    /// Default `flux-pro-1.1`.
    #[schema(value_type = Option<String>, example = "flux-pro-1.1")]
    model: Option<String>,
    #[schema(value_type = String, min_length = 1)]
    prompt: String,
    /// 256 to 1440, a multiple of 32 (sized models).
    #[schema(value_type = Option<u32>, minimum = 256, maximum = 1440, multiple_of = 32.0)]
    width: Option<u32>,
    /// 256 to 1440, a multiple of 32 (sized models).
    #[schema(value_type = Option<u32>, minimum = 256, maximum = 1440, multiple_of = 32.0)]
    height: Option<u32>,
    /// Ultra and Kontext, e.g. `16:9`.
    #[schema(value_type = Option<String>)]
    aspect_ratio: Option<String>,
    /// Ultra: less processed, more natural images.
    #[schema(value_type = Option<bool>)]
    raw: Option<bool>,
    /// FLUX.1 [dev].
    #[schema(value_type = Option<u32>)]
    steps: Option<u32>,
    /// FLUX.1 [dev].
    #[schema(value_type = Option<f64>)]
    guidance: Option<f64>,
    #[schema(value_type = Option<u64>)]
    seed: Option<u64>,
    /// 0 (strict) to 6; Kontext to 2.
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 6)]
    safety_tolerance: Option<u32>,
    /// `jpeg` or `png`.
    #[schema(value_type = Option<String>)]
    output_format: Option<String>,
    #[schema(value_type = Option<bool>)]
    prompt_upsampling: Option<bool>,
    /// Kontext: the image to edit, base64 or a data URL.
    #[schema(value_type = Option<String>)]
    input_image: Option<String>,
    /// `false` to pay (with the confirmToken of the dry run); anything else is a dry run.
    #[serde(rename = "dryRun")]
    #[schema(value_type = Option<bool>)]
    dry_run: Option<bool>,
    /// From the dry run of this exact body.
    #[serde(rename = "confirmToken")]
    #[schema(value_type = Option<String>)]
    confirm_token: Option<String>,
}

/// The dry run's answer.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FluxDryRun {
    #[serde(rename = "dryRun")]
    dry_run: bool,
    valid: bool,
    model: String,
    /// The exact body BFL would get.
    #[schema(value_type = Object)]
    payload: Value,
    #[serde(rename = "estimatedCost")]
    estimated_cost: FluxCost,
    /// Send it back with `dryRun: false` to pay.
    #[serde(rename = "confirmToken")]
    confirm_token: String,
    #[serde(rename = "expiresInSecs")]
    expires_in_secs: u64,
    budget: Option<crate::flux::service::Budget>,
    /// FLUX.2: the megapixels priced.
    megapixels: Option<FluxMegapixels>,
    message: String,
}

/// FLUX.2's billed megapixels: the output's, rounded up, and the input images' (each at its most, 4).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FluxMegapixels {
    output: i64,
    #[serde(rename = "inputImages")]
    input_images: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FluxCost {
    usd: f64,
    /// BFL's credits (1 credit = $0.01); FLUX.2's can be fractional.
    credits: f64,
    #[schema(example = "USD")]
    currency: String,
}

/// A paid request accepted: the job that follows it.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FluxAccepted {
    id: String,
    status: JobStatus,
}

/// `GET /api/flux/models`.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FluxCatalogue {
    #[schema(example = "flux-pro-1.1")]
    default: String,
    currency: String,
    models: Vec<FluxModelEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FluxModelEntry {
    model: String,
    label: String,
    #[serde(rename = "priceUsd")]
    price_usd: f64,
    credits: f64,
    #[serde(rename = "priceSource")]
    price_source: String,
    /// FLUX.2: the price of the first megapixel and of each further one; `priceUsd` is then a one-megapixel image.
    #[serde(rename = "perMegapixel")]
    per_megapixel: Option<FluxPerMegapixel>,
    /// The body fields this model takes.
    fields: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FluxPerMegapixel {
    #[serde(rename = "firstUsd")]
    first_usd: f64,
    #[serde(rename = "eachFurtherUsd")]
    each_further_usd: f64,
}

/// `GET /api/v0/validate`.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct V0Validation {
    /// `valid`, `invalid`, `not_configured`, `unknown` or `unreachable`.
    #[schema(example = "valid")]
    status: String,
    message: Option<String>,
    /// For a valid key: v0's user (name and id).
    #[schema(value_type = Option<Object>)]
    user: Option<Value>,
}

/// The builder's messages.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct BuilderConversation {
    messages: Vec<crate::store::Message>,
    /// Whether V0_API_KEY is set (on `GET` only).
    configured: Option<bool>,
}
