//! The MCP server: Orchestrator's tools for agents, on stdio (`orchestrator mcp`) and as streamable HTTP at `/mcp`.
//!
//! Every tool is a call to Orchestrator's own HTTP API on loopback, so an agent meets exactly the guards a person
//! does: template and field validation, the job store, the FLUX dry run, `ALLOW_GENERATION`, the confirmation
//! token, the budget and the rate limit. A failure is a tool error whose text is the API's error body, with the
//! same stable `code`. Job outputs are resources: `orchestrator://jobs/{id}/outputs/{name}`.

use std::time::Duration;

use base64::Engine;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{ApiClient, Download, Reply, encode};
use crate::config::Config;

/// The `Idempotency-Key` header, when the caller gave one.
fn idempotency(key: Option<&str>) -> Vec<(&'static str, &str)> {
    key.map(|key| vec![("Idempotency-Key", key)])
        .unwrap_or_default()
}

/// An API answer as a tool's result.
trait IntoToolResult {
    fn into_result(self) -> CallToolResult;
}

impl IntoToolResult for Reply {
    /// A success as pretty JSON text; a failure as a tool error carrying the API's error body.
    fn into_result(self) -> CallToolResult {
        let text = serde_json::to_string_pretty(&self.body).unwrap_or_default();
        if self.is_success() {
            CallToolResult::success(vec![ContentBlock::text(text)])
        } else {
            CallToolResult::error(vec![ContentBlock::text(text)])
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ListModels {
    /// Rescan ComfyUI's folders instead of using the list cached for a minute.
    #[serde(default)]
    pub refresh: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct GenerateImage {
    /// `comfy` (a local ComfyUI template, free; the default) or `flux` (Black Forest Labs, paid).
    pub backend: Option<String>,
    /// ComfyUI: the template's name, from list_templates (e.g. `sdxl-t2i`).
    pub template: Option<String>,
    /// ComfyUI: instead of a template, a whole workflow in ComfyUI's API format (node id → `{class_type, inputs}`).
    /// One with paid API nodes is PAID: answered first with its paid nodes, price and a confirmToken.
    pub workflow: Option<serde_json::Map<String, Value>>,
    /// ComfyUI: the template's parameters (`prompt`, `steps`, `checkpoint`, …; images as data: URLs).
    /// FLUX: extra fields of the model (`seed`, `safety_tolerance`, `output_format`, `input_image`, …).
    pub params: Option<serde_json::Map<String, Value>>,
    /// FLUX: the model, `flux-pro-1.1` by default (also `flux-pro-1.1-ultra`, `flux-dev`, `flux-kontext-pro`,
    /// `flux-kontext-max`, and FLUX.2, priced by megapixel: `flux-2-pro`, `flux-2-max`, `flux-2-flex`,
    /// `flux-2-klein-4b`, `flux-2-klein-9b`).
    pub model: Option<String>,
    /// The prompt (ComfyUI templates take it as their `prompt` parameter).
    pub prompt: Option<String>,
    /// FLUX 1.1 pro and dev: width, 256 to 1440, a multiple of 32; FLUX.2: 256 to 2048, a multiple of 16.
    pub width: Option<u32>,
    /// FLUX 1.1 pro and dev: height, 256 to 1440, a multiple of 32; FLUX.2: 256 to 2048, a multiple of 16.
    pub height: Option<u32>,
    /// FLUX Ultra and Kontext: an aspect ratio such as `16:9`.
    pub aspect_ratio: Option<String>,
    /// FLUX Ultra: raw mode.
    pub raw: Option<bool>,
    /// FLUX, or a ComfyUI workflow with paid nodes: the `confirmToken` a first call (the dry run) returned.
    /// Without it nothing is paid: the call answers the exact payload and its cost. Paying also needs
    /// `ALLOW_GENERATION=true` on the server.
    pub confirm_token: Option<String>,
    /// A ComfyUI workflow with paid nodes: the most its run may spend, in dollars (at or above the estimate). Needed
    /// when the dry run says `openEnded`; give it on the first call and again with the confirm_token.
    pub max_usd: Option<f64>,
    /// A key of your own (a UUID) so that repeating the paid call can never pay twice.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct JobId {
    /// The job's id.
    pub id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WaitJob {
    /// The job's id.
    pub id: String,
    /// The longest wait in seconds (1 to 300, default 30); the job goes on after it either way.
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ListJobs {
    /// Only jobs in this state: queued, submitted, running, succeeded, failed, cancelled, backend_lost,
    /// needs_reconcile.
    pub status: Option<String>,
    /// How many, newest first (1 to 200, default 20).
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct TailLogs {
    /// How many of the last lines (1 to 5000, default 100).
    pub lines: Option<u32>,
}

#[derive(Clone)]
pub struct OrchestratorMcp {
    api: ApiClient,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl OrchestratorMcp {
    pub fn new(api: ApiClient) -> Self {
        Self {
            api,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Health of everything: ComfyUI (online, version, devices, queue, models), its service, the database, FLUX and v0, extra_model_paths.yaml; overall healthy, degraded or down."
    )]
    async fn system_status(&self) -> CallToolResult {
        self.api
            .call(reqwest::Method::GET, "/api/status", None, &[])
            .await
            .into_result()
    }

    #[tool(
        description = "Start ComfyUI if it is not answering and wait until it is online (or the configured time runs out)."
    )]
    async fn ignite_comfy(&self) -> CallToolResult {
        self.api
            .call(reqwest::Method::POST, "/api/system/ignite", None, &[])
            .await
            .into_result()
    }

    #[tool(
        description = "The model files ComfyUI can load, per folder (checkpoints, loras, vae, controlnet, clip, …)."
    )]
    async fn list_models(&self, Parameters(request): Parameters<ListModels>) -> CallToolResult {
        let path = if request.refresh {
            "/api/models?refresh=1"
        } else {
            "/api/models"
        };
        self.api
            .call(reqwest::Method::GET, path, None, &[])
            .await
            .into_result()
    }

    #[tool(
        description = "The ComfyUI workflow templates and their parameters (types, ranges, defaults)."
    )]
    async fn list_templates(&self) -> CallToolResult {
        self.api
            .call(reqwest::Method::GET, "/api/templates", None, &[])
            .await
            .into_result()
    }

    #[tool(
        description = "Make an image. backend `comfy`: a template with its params, or a workflow, queued on ComfyUI; answers the job. A workflow with paid API nodes is refused (402) with its paid nodes, estimated cost and a confirmToken in error.details; show them to the user, and only after they agree call again with the same workflow and confirm_token. backend `flux`: PAID. The first call (no confirm_token) sends nothing and answers the exact payload, the estimated cost and a confirmToken; show them to the user. Only a second call with the same fields and confirm_token pays, and only if the server allows generation."
    )]
    async fn generate_image(
        &self,
        Parameters(request): Parameters<GenerateImage>,
    ) -> CallToolResult {
        let GenerateImage {
            backend,
            template,
            workflow,
            params,
            model,
            prompt,
            width,
            height,
            aspect_ratio,
            raw,
            confirm_token,
            max_usd,
            idempotency_key,
        } = request;
        let mut params = params.unwrap_or_default();
        match backend.as_deref().unwrap_or("comfy") {
            "comfy" => {
                if let Some(prompt) = prompt {
                    params.insert("prompt".into(), Value::String(prompt));
                }
                let mut body = match workflow {
                    Some(workflow) => json!({ "backend": "comfy", "workflow": workflow }),
                    None => json!({ "backend": "comfy", "template": template, "params": params }),
                };
                if let Some(token) = confirm_token {
                    body["confirmToken"] = Value::String(token);
                }
                if let Some(max) = max_usd {
                    body["maxUsd"] = json!(max);
                }
                self.api
                    .call(
                        reqwest::Method::POST,
                        "/api/jobs",
                        Some(&body),
                        &idempotency(idempotency_key.as_deref()),
                    )
                    .await
                    .into_result()
            }
            "flux" => {
                let mut body = params;
                let fields = [
                    ("model", model.map(Value::from)),
                    ("prompt", prompt.map(Value::from)),
                    ("width", width.map(Value::from)),
                    ("height", height.map(Value::from)),
                    ("aspect_ratio", aspect_ratio.map(Value::from)),
                    ("raw", raw.map(Value::from)),
                ];
                for (name, value) in fields {
                    if let Some(value) = value {
                        body.insert(name.into(), value);
                    }
                }
                body.remove("dryRun");
                body.remove("dry_run");
                if let Some(token) = confirm_token {
                    body.insert("dryRun".into(), Value::Bool(false));
                    body.insert("confirmToken".into(), Value::String(token));
                }
                let body = Value::Object(body);
                self.api
                    .call(
                        reqwest::Method::POST,
                        "/api/flux/generate",
                        Some(&body),
                        &idempotency(idempotency_key.as_deref()),
                    )
                    .await
                    .into_result()
            }
            other => {
                let problem = crate::problems::Invalid::field("backend", "expected comfy or flux");
                let message = format!("unknown backend {other:?}; expected comfy or flux");
                let body = crate::problems::error_body(
                    crate::codes::Code::ValidationFailed,
                    &message,
                    problem.details(),
                );
                CallToolResult::error(vec![ContentBlock::text(body.to_string())])
            }
        }
    }

    #[tool(description = "One job: status, progress, current node, parameters, error, outputs.")]
    async fn get_job(&self, Parameters(JobId { id }): Parameters<JobId>) -> CallToolResult {
        let path = format!("/api/jobs/{}", encode(&id));
        self.api
            .call(reqwest::Method::GET, &path, None, &[])
            .await
            .into_result()
    }

    #[tool(
        description = "Wait until a job ends, at most timeout_secs (default 30): answers the job, `finished` and how long it waited. The job keeps running when the wait ends; call again to wait more."
    )]
    async fn wait_job(&self, Parameters(request): Parameters<WaitJob>) -> CallToolResult {
        let limit = Duration::from_secs(request.timeout_secs.unwrap_or(30).clamp(1, 300));
        let started = std::time::Instant::now();
        // The job's own event stream: its state now, then every change (progress included) until it ends.
        let (job, finished) = match self.api.follow_job(&request.id, limit, |_| {}).await {
            Ok(outcome) => outcome,
            Err(reply) => return reply.into_result(),
        };
        let mut body = json!({ "job": job, "finished": finished,
            "waited_secs": (started.elapsed().as_millis() as f64 / 1000.0) });
        if finished {
            body["resources"] = json!(resource_links(&body["job"]));
        }
        Reply { status: 200, body }.into_result()
    }

    #[tool(description = "Jobs, newest first, optionally of one status.")]
    async fn list_jobs(&self, Parameters(request): Parameters<ListJobs>) -> CallToolResult {
        let mut path = format!(
            "/api/jobs?limit={}",
            request.limit.unwrap_or(20).clamp(1, 200)
        );
        if let Some(status) = request.status {
            path.push_str(&format!("&status={}", encode(&status)));
        }
        self.api
            .call(reqwest::Method::GET, &path, None, &[])
            .await
            .into_result()
    }

    #[tool(
        description = "Cancel a ComfyUI job: removed from the queue, or interrupted while it runs. A FLUX job cannot be cancelled."
    )]
    async fn cancel_job(&self, Parameters(JobId { id }): Parameters<JobId>) -> CallToolResult {
        let path = format!("/api/jobs/{}/cancel", encode(&id));
        self.api
            .call(reqwest::Method::POST, &path, None, &[])
            .await
            .into_result()
    }

    #[tool(description = "The last lines of ComfyUI's log.")]
    async fn tail_comfy_logs(&self, Parameters(request): Parameters<TailLogs>) -> CallToolResult {
        let path = format!(
            "/api/logs/comfy?lines={}",
            request.lines.unwrap_or(100).clamp(1, 5000)
        );
        self.api
            .call(reqwest::Method::GET, &path, None, &[])
            .await
            .into_result()
    }
}

const RESOURCE_PREFIX: &str = "orchestrator://jobs/";
/// Larger outputs (videos) are not sent inline: the resource answers where to download them instead.
const MAX_INLINE_BYTES: usize = 1024 * 1024;

/// The resource URIs of a job's outputs.
fn resource_links(job: &Value) -> Vec<String> {
    let id = job["id"].as_str().unwrap_or_default();
    job["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["name"].as_str())
        .map(|name| format!("{RESOURCE_PREFIX}{id}/outputs/{}", encode(name)))
        .collect()
}

/// The job id and output name of a resource URI (after its prefix), decoded, or `None` for anything that is not
/// exactly one job's one output. Both are percent-encoded again, every byte but letters and digits, before they go
/// into the API path: a name such as `..\..\health` or `..%2Fhealth` must not walk out of the job's outputs (an
/// HTTP client reads `\` as `/` and folds `..`).
fn resource_parts(rest: &str) -> Option<(String, String)> {
    let (id, name) = rest.split_once("/outputs/")?;
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    let (id, name) = (decode(id)?, decode(name)?);
    let plain = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && !part.contains(['/', '\\'])
            && !part.chars().any(char::is_control)
    };
    (plain(&id) && plain(&name)).then_some((id, name))
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for OrchestratorMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_resources().build()).with_instructions(
            "Orchestrator runs image generation on the user's ComfyUI and on paid FLUX. Check system_status first; \
             ignite_comfy starts ComfyUI. generate_image with backend flux costs money: its first call is a free dry \
             run; only call it again with the confirm_token after the user agreed to the shown cost. Finished images \
             are resources orchestrator://jobs/{id}/outputs/{name}.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let reply = self.api.get("/api/jobs?status=succeeded&limit=50").await;
        if reply.status != 200 {
            return Err(ErrorData::internal_error(reply.body.to_string(), None));
        }
        let resources: Vec<Value> = reply.body["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|job| {
                let id = job["id"].as_str().unwrap_or_default().to_owned();
                job["outputs"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |output| {
                        let name = output["name"].as_str().unwrap_or_default();
                        json!({
                            "uri": format!("{RESOURCE_PREFIX}{id}/outputs/{}", encode(name)),
                            "name": name,
                            "title": format!("{name} (job {id})"),
                            "mimeType": output["content_type"],
                            "size": output["size"],
                        })
                    })
            })
            .collect();
        serde_json::from_value(json!({ "resources": resources }))
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let not_found =
            || ErrorData::resource_not_found(format!("no resource {}", request.uri), None);
        let rest = request
            .uri
            .strip_prefix(RESOURCE_PREFIX)
            .ok_or_else(not_found)?;
        let (id, name) = resource_parts(rest).ok_or_else(not_found)?;
        let path = format!("/api/jobs/{}/outputs/{}", encode(&id), encode(&name));
        // Read no further than what may be sent inline: a large video is never held in memory to be refused.
        let (mime_type, file) = self
            .api
            .bytes(&path, MAX_INLINE_BYTES)
            .await
            .map_err(|_| not_found())?;
        let contents = match file {
            Download::Whole(bytes) => json!({ "uri": request.uri, "mimeType": mime_type,
                    "blob": base64::engine::general_purpose::STANDARD.encode(bytes) }),
            Download::TooLarge { size } => {
                let size = size.map_or_else(
                    || format!("more than {MAX_INLINE_BYTES} bytes"),
                    |n| format!("{n} bytes"),
                );
                json!({ "uri": request.uri, "mimeType": "text/plain",
                        "text": format!("{size} of {mime_type}, too large to send inline: download {}{path}",
                                        self.api.base()) })
            }
        };
        let result: ReadResourceResult = serde_json::from_value(json!({ "contents": [contents] }))
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(result.into())
    }
}

/// `orchestrator mcp`: the tools on stdin/stdout, calling the running server.
pub async fn serve_stdio(config: &Config) -> Result<(), String> {
    use rmcp::ServiceExt;
    let token = config.token.as_ref().map(|t| t.expose().to_owned());
    let api = ApiClient::for_server(config.bind, token);
    let server = OrchestratorMcp::new(api)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("the MCP session did not start: {e}"))?;
    server
        .waiting()
        .await
        .map_err(|e| format!("the MCP session failed: {e}"))?;
    Ok(())
}
