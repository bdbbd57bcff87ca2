//! Every route in one place, and the layers every request passes through.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Query, Request, State, WebSocketUpgrade};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use tower::ServiceExt;

use super::guard::{self, GuardPolicy};
use super::request_log::{log_request, logged as log_request_with};
use super::{jobs, model_paths, paid, rate_limit, system};
use crate::AppState;
use crate::comfy::ws;
use crate::error::{ApiError, ApiResult};
use crate::ui;

/// The whole HTTP application: the gateway's hot path, then axum's router for everything else.
#[derive(Clone)]
pub struct App {
    state: AppState,
    policy: Arc<GuardPolicy>,
    router: Router,
}

impl App {
    pub fn new(state: AppState) -> Self {
        let policy = Arc::new(GuardPolicy::from_config(&state.config));
        let router = router(state.clone(), policy.clone());
        Self {
            state,
            policy,
            router,
        }
    }

    /// `/api/comfy/*` is the one route that carries heavy traffic (the ComfyUI frontend polls it, previews stream
    /// through it), so it is dispatched here, with the same log line and guard, without the router's layers of
    /// boxed futures: that saves about a tenth of the CPU a proxied request costs. Everything else goes through
    /// the router.
    pub async fn handle(self, request: Request) -> Response {
        let path = request.uri().path();
        if (path == "/api/comfy" || path.starts_with("/api/comfy/")) && !is_own_comfy_route(path) {
            let Self { state, policy, .. } = self;
            return log_request_with(request, move |request| async move {
                match policy.check(request.method(), request.headers()) {
                    Ok(()) => comfy_gateway(State(state), request).await,
                    Err(refusal) => refusal.into_response(),
                }
            })
            .await;
        }
        match self.router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Orchestrator's own routes under `/api/comfy/` (about ComfyUI's files, not ComfyUI's API): served by the router,
/// not forwarded.
fn is_own_comfy_route(path: &str) -> bool {
    matches!(
        path,
        "/api/comfy/validate-paths"
            | "/api/comfy/create-default-paths"
            | "/api/comfy/restore-paths"
    )
}

fn router(state: AppState, policy: Arc<GuardPolicy>) -> Router {
    let own_api = Router::new()
        .route("/api/health", get(health))
        .route("/api/models", get(models))
        .route("/api/system/comfy/status", get(system::status))
        .route("/api/status", get(system::full_status))
        .route("/api/status/services", get(system::services_status))
        .route("/api/status/comfy", get(system::comfy_status))
        .route("/api/status/models", get(system::models_status))
        .route("/api/system/comfy/start", post(system::start))
        .route("/api/system/comfy/stop", post(system::stop))
        .route("/api/system/ignite", post(system::ignite))
        .route("/api/logs/comfy", get(system::comfy_log))
        .route(
            "/api/jobs",
            // Input images come inline as data: URLs.
            get(jobs::list)
                .post(jobs::submit)
                .layer(axum::extract::DefaultBodyLimit::max(72 * 1024 * 1024)),
        )
        .route("/api/templates", get(jobs::templates))
        .route("/api/comfy/validate-paths", get(model_paths::validate))
        .route(
            "/api/comfy/create-default-paths",
            post(model_paths::create_default),
        )
        .route("/api/comfy/restore-paths", post(model_paths::restore))
        .route("/api/jobs/{id}", get(jobs::get))
        .route("/api/jobs/{id}/events", get(jobs::events))
        .route("/api/events", get(jobs::all_events))
        .route("/api/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/jobs/{id}/outputs/{name}", get(jobs::output))
        .route(
            "/api/builder/messages",
            get(ui::builder_messages).post(ui::builder_send),
        )
        .merge(paid_routes(state.paid_limiter.clone()))
        .layer(from_fn(guard::require_json_body));

    let pages = Router::new()
        .route("/", get(ui::home))
        .route("/diagnostics", get(ui::diagnostics))
        .route("/builder", get(ui::builder))
        .route("/settings", get(ui::settings))
        .route("/jobs", get(ui::jobs))
        .route("/jobs/{id}", get(ui::job))
        .route("/assets/{*path}", get(ui::asset));
    #[cfg(feature = "testkit")]
    let pages = pages.route("/__testkit/panic", get(ui::testkit_panic));

    Router::new()
        .merge(own_api)
        .merge(pages)
        .route_service("/mcp", mcp_service(&state))
        .fallback(ui::not_found)
        .with_state(state)
        .layer(from_fn(ui::catch_panics))
        .layer(from_fn_with_state(policy, guard::guard))
        .layer(from_fn(log_request))
}

/// `/mcp`: the MCP tools as streamable HTTP, stateless (each request stands alone, so any serving thread can answer
/// it), behind the same guard and token as every route; the guard has already checked `Host`.
fn mcp_service(
    state: &AppState,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    crate::mcp::OrchestratorMcp,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let config = state.config.clone();
    let local_addr = state.local_addr.clone();
    let mut settings = StreamableHttpServerConfig::default().disable_allowed_hosts();
    settings.legacy_session_mode = false;
    settings.json_response = true;
    StreamableHttpService::new(
        move || {
            let addr = local_addr.get().copied().unwrap_or(config.bind);
            Ok(crate::mcp::OrchestratorMcp::new(crate::mcp::LocalApi::new(
                &config, addr,
            )))
        },
        Default::default(),
        settings,
    )
}

/// The routes that cost money or call a remote API, behind the per-client rate limit.
fn paid_routes(limiter: Arc<rate_limit::PaidLimiter>) -> Router<AppState> {
    Router::new()
        .route(
            "/api/flux/generate",
            // Kontext takes its input image inline.
            post(paid::flux_generate).layer(axum::extract::DefaultBodyLimit::max(32 * 1024 * 1024)),
        )
        .route("/api/flux/budget", get(paid::flux_budget))
        .route("/api/flux/models", get(paid::flux_models))
        .route("/api/v0/validate", get(paid::v0_validate))
        .route("/api/v0/{*path}", any(paid::v0_gateway))
        .route_layer(from_fn_with_state(limiter, rate_limit::limit))
}

/// Liveness of Orchestrator itself (not of ComfyUI): answers as soon as the server accepts requests.
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

#[derive(Debug, Deserialize)]
struct ModelsQuery {
    refresh: Option<String>,
}

async fn models(
    State(state): State<AppState>,
    Query(query): Query<ModelsQuery>,
) -> ApiResult<Response> {
    let refresh = query
        .refresh
        .as_deref()
        .is_some_and(|v| matches!(v, "1" | "true" | "yes"));
    let lists = state.models.get(&state.gateway, refresh).await?;
    Ok(Json(lists.as_ref()).into_response())
}

/// `/api/comfy/{*path}`: every method, and WebSocket upgrades, to the first ComfyUI backend (dispatched by
/// [`App::handle`]).
async fn comfy_gateway(State(state): State<AppState>, request: Request) -> Response {
    let path = request
        .uri()
        .path()
        .strip_prefix("/api/comfy")
        .unwrap_or_default()
        .to_owned();
    if guard::is_websocket_upgrade(request.headers()) {
        return websocket(state, request, &path)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    if guard::changes_state(request.method())
        && takes_json(&path)
        && request.headers().contains_key(http::header::CONTENT_TYPE)
        && !guard::is_json(request.headers())
    {
        return ApiError::UnsupportedMediaType.into_response();
    }
    state
        .gateway
        .forward(request, &path)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// ComfyUI routes whose bodies are JSON; a browser can only send a cross-site body of another type.
fn takes_json(path: &str) -> bool {
    let route = path
        .strip_prefix("/api")
        .unwrap_or(path)
        .trim_end_matches('/');
    matches!(
        route,
        "/prompt" | "/queue" | "/history" | "/interrupt" | "/free"
    )
}

async fn websocket(state: AppState, request: Request, path: &str) -> ApiResult<Response> {
    let (mut parts, _body) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let uri = state.gateway.upstream_uri(path, parts.uri.query())?;
    let timeout = state.config.comfy.read_timeout;
    let upstream = ws::connect_upstream(state.gateway.backend(), &uri, timeout).await?;
    Ok(upgrade.on_upgrade(move |socket| ws::relay(socket, upstream)))
}
