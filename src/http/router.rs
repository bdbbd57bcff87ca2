//! Every route in one place, and the layers every request passes through.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde::Deserialize;
use tower::ServiceExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Query;
use super::guard::{self, GuardPolicy};
use super::request_log::{log_request, logged as log_request_with};
use super::{
    builder, events, gallery, gateway, jobs, model_paths, openapi, paid, panic, preview,
    rate_limit, system,
};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::ui;

/// The whole HTTP application of one origin. The panel's: the gateway's hot path, then axum's router for
/// everything else. The editor's ([`App::editor`]): ComfyUI and nothing else, behind the same guard.
#[derive(Clone)]
pub struct App {
    state: AppState,
    policy: Arc<GuardPolicy>,
    /// `None` on the editor's origin, which has no routes of Orchestrator's own.
    router: Option<Router>,
}

impl App {
    pub fn new(state: AppState) -> Self {
        let policy = Arc::new(
            GuardPolicy::from_config(&state.config)
                .with_fleet_token(state.fleet_token.clone())
                .with_egress(),
        );
        let router = router(state.clone(), policy.clone());
        Self {
            state,
            policy,
            router: Some(router),
        }
    }

    /// ComfyUI's editor on its own origin: every path relayed (see [`gateway`]). The fleet's token opens nothing
    /// here: it stands for the user's only on the panel's fetch of an output.
    pub fn editor(state: AppState) -> Self {
        let policy = Arc::new(GuardPolicy::from_config(&state.config));
        Self {
            state,
            policy,
            router: None,
        }
    }

    /// `/api/comfy/*` is the one route that carries heavy traffic (the ComfyUI frontend polls it, previews stream
    /// through it), so it is dispatched here, with the same log line and guard, without the router's layers of
    /// boxed futures: that saves about a tenth of the CPU a proxied request costs. Everything else goes through
    /// the router.
    pub async fn handle(self, request: Request) -> Response {
        let Self {
            state,
            policy,
            router,
        } = self;
        let request = timed_body(request, &state.config);
        let path = request.uri().path();
        let origin = match &router {
            None => Some(gateway::Origin::Editor),
            Some(_)
                if (path == "/api/comfy" || path.starts_with("/api/comfy/"))
                    && !is_own_comfy_route(path) =>
            {
                Some(gateway::Origin::Panel)
            }
            Some(_) => None,
        };
        if let Some(origin) = origin {
            return log_request_with(request, move |request| async move {
                let path = request.uri().path();
                let relayed = match origin {
                    gateway::Origin::Panel => path.strip_prefix("/api/comfy").unwrap_or_default(),
                    gateway::Origin::Editor => path,
                };
                let checked = policy
                    .check_request(request.method(), path, request.headers())
                    .and_then(|()| {
                        policy.check_gateway(request.method(), relayed, request.headers(), origin)
                    });
                match checked {
                    Ok(()) => panic::caught(request, |r| gateway::handle(origin, state, r)).await,
                    Err(refusal) => refusal.into_response(),
                }
            })
            .await;
        }
        let Some(router) = router else {
            unreachable!("the editor's origin has no router and is relayed above")
        };
        match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Every request body runs under `ORCH_BODY_IDLE_SECS` and `ORCH_BODY_TIMEOUT_SECS`, so a client that sends a byte
/// now and then cannot hold a connection and a task for ever; a body that times out answers `408 body_timeout`
/// where it is read. An empty body (most requests) is left as it is, without a timer.
fn timed_body(request: Request, config: &crate::config::Config) -> Request {
    if http_body::Body::is_end_stream(request.body()) {
        return request;
    }
    let route = request.uri().path_and_query().cloned();
    let (idle, total) = (config.body_idle_timeout, config.body_timeout);
    request.map(|body| {
        axum::body::Body::new(
            crate::comfy::body::IdleTimeout::new(body, idle, "request body")
                .within(total)
                .on_route(route),
        )
    })
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
    let own_api: Router<AppState> = api_routes(state.paid_limiter.clone()).into();
    // The Comfy API v2 reads its bodies itself (JSON, or a multipart upload streamed to disk under its own limit,
    // the whole body under one a little larger).
    let v2_api: Router<AppState> = super::v2::routes().into();
    let document: Arc<str> = openapi::to_json(openapi_document()).into();

    Router::new()
        .merge(own_api.layer(from_fn(guard::require_json_body)))
        .merge(v2_api.layer(axum::extract::DefaultBodyLimit::max(
            super::v2::assets::MAX_BODY,
        )))
        .route(
            "/api/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(http::header::CONTENT_TYPE, "application/json")],
                        document.to_string(),
                    )
                }
            }),
        )
        .merge(ui::router(openapi_document()))
        // ComfyUI's API nodes post JSON and forms alike; the egress reads the body itself, under its own limit.
        .route("/api/comfy-org/{*path}", any(paid::comfy_org_egress))
        .route(
            "/mcp",
            axum::routing::any_service(mcp_service(&state))
                .layer(from_fn(super::extract::read_first::<{ 4 * 1024 * 1024 }>))
                .layer(from_fn(guard::require_json_body)),
        )
        .fallback(ui::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(from_fn(panic::catch_panics))
        .layer(from_fn_with_state(policy, guard::guard))
        .layer(from_fn(log_request))
}

/// Every `/api` route Orchestrator answers itself, each registered with its OpenAPI description, so the document
/// lists exactly what is served.
fn api_routes(limiter: Arc<crate::app::limits::PaidLimiter>) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::head())
        .routes(routes!(health))
        .routes(routes!(models))
        .routes(routes!(system::status))
        .routes(routes!(system::full_status))
        .routes(routes!(system::services_status))
        .routes(routes!(system::comfy_status))
        .routes(routes!(system::models_status))
        .routes(routes!(system::start))
        .routes(routes!(system::stop))
        .routes(routes!(system::ignite))
        .routes(routes!(system::comfy_log))
        .routes(routes!(jobs::list, jobs::submit))
        .routes(routes!(jobs::templates))
        .routes(routes!(model_paths::validate))
        .routes(routes!(model_paths::create_default))
        .routes(routes!(model_paths::restore))
        .routes(routes!(jobs::get, gallery::delete))
        .routes(routes!(gallery::again))
        .routes(routes!(events::events))
        .routes(routes!(events::all_events))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::output))
        .routes(routes!(preview::preview))
        .routes(routes!(gallery::gallery))
        .routes(routes!(gallery::thumbnail))
        .routes(routes!(builder::builder_messages, builder::builder_send))
        .merge(paid_routes(limiter))
}

/// A known route asked with a method it does not take: the shared error body, not an empty 405.
async fn method_not_allowed(request: Request) -> Response {
    ApiError::MethodNotAllowed {
        method: request.method().to_string(),
    }
    .into_response()
}

/// The OpenAPI document of the routes [`App`] serves, as `GET /api/openapi.json` gives it; made once.
pub fn openapi_document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: std::sync::LazyLock<utoipa::openapi::OpenApi> =
        std::sync::LazyLock::new(|| {
            // Only the routes' descriptions are kept; the limiter is never asked.
            let limiter = crate::app::limits::PaidLimiter::new(crate::config::RateLimitConfig {
                per_minute: 1,
                burst: 1,
            });
            let mut document = api_routes(Arc::new(limiter)).into_openapi();
            document.merge(super::v2::routes().into_openapi());
            openapi::with_body_timeouts(document)
        });
    &DOCUMENT
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
            let token = config.token.as_ref().map(|t| t.expose().to_owned());
            Ok(crate::mcp::OrchestratorMcp::new(
                crate::client::ApiClient::for_server(addr, token),
            ))
        },
        Default::default(),
        settings,
    )
}

/// The routes that cost money or call a remote API, behind the per-client rate limit.
fn paid_routes(limiter: Arc<crate::app::limits::PaidLimiter>) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(paid::flux_generate))
        .routes(routes!(paid::flux_budget))
        .routes(routes!(paid::flux_models))
        .routes(routes!(paid::v0_validate))
        .routes(routes!(jobs::confirm))
        // Described in the document by `openapi::v0_passthrough`.
        .route("/api/v0/{*path}", any(paid::v0_gateway))
        .route_layer(from_fn_with_state(limiter, rate_limit::limit))
}

/// Liveness of Orchestrator itself (not of ComfyUI): answers as soon as the server accepts requests.
#[utoipa::path(get, path = "/api/health", tag = "meta",
    responses((status = 200, description = "Orchestrator is up", body = openapi::Health)))]
async fn health() -> Json<openapi::Health> {
    Json(openapi::Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ModelsQuery {
    /// `1`, `true` or `yes`: scan ComfyUI again instead of answering from the cache.
    refresh: Option<String>,
}

/// Model files per folder, read from ComfyUI's loader nodes; cached for a minute.
#[utoipa::path(get, path = "/api/models", tag = "comfy", params(ModelsQuery),
    responses((status = 200, description = "Model files per folder", body = crate::comfy::models::ModelLists),
        (status = 502, description = "ComfyUI answered with something unexpected", body = crate::error::ErrorBody),
        (status = 503, description = "ComfyUI is offline", body = crate::error::ErrorBody),
        (status = 504, description = "ComfyUI did not answer in time", body = crate::error::ErrorBody)))]
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
