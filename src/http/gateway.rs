//! ComfyUI through Orchestrator, on two origins.
//!
//! - **The editor's origin** (`ORCH_COMFY_BIND`, default `127.0.0.1:3001`) relays every path to ComfyUI: its
//!   frontend, the scripts of every custom node, the API and the WebSocket. Nothing of Orchestrator's own API is
//!   there, so the third-party JavaScript ComfyUI loads runs where it can reach ComfyUI and nothing else: the
//!   panel's CSRF guard sees it as the foreign origin it is.
//! - **The panel's origin** keeps `/api/comfy/*` for the API (JSON, images, the WebSocket) but never serves what a
//!   browser would run there: HTML, JavaScript, CSS, SVG and XML answers are replaced with an
//!   `editor_origin_only` error naming the editor's address, and every answer carries `nosniff` and
//!   `Content-Security-Policy: sandbox`. Files (`/view`) that are not raster images, video or audio are downloads.
//!
//! Both go through the same money gate, header rules and guard.

use axum::extract::{FromRequestParts, Request, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};

use super::{comfy_money, guard};
use crate::app::AppState;
use crate::comfy::{routes, ws};
use crate::error::{ApiError, ApiResult};

/// Which origin a relayed request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The panel's: `/api/comfy/{*path}`, ComfyUI's API only.
    Panel,
    /// The editor's own (`ORCH_COMFY_BIND`): every path.
    Editor,
}

/// A request relayed to ComfyUI, as its origin allows.
pub async fn handle(origin: Origin, state: AppState, request: Request) -> Response {
    match origin {
        Origin::Panel => panel(state, request).await,
        Origin::Editor => editor(state, request).await,
    }
}

/// `/api/comfy/{*path}` on the panel's origin: ComfyUI's API, never a document or a script.
async fn panel(state: AppState, request: Request) -> Response {
    let host = request.headers().get(header::HOST).cloned();
    let path = request
        .uri()
        .path()
        .strip_prefix("/api/comfy")
        .unwrap_or_default()
        .to_owned();
    let file_route = routes::is_file_route(&routes::comfy_route(&path));
    let response = relay(&state, request, &path, Origin::Panel).await;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return response;
    }
    let editor = state.editor_addr().map(|addr| {
        crate::address::editor_url(
            addr,
            host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
        )
    });
    confine(response, file_route, editor)
}

/// Every path on the editor's origin: relayed to ComfyUI as it is.
async fn editor(state: AppState, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    relay(&state, request, &path, Origin::Editor).await
}

/// One request to the first ComfyUI backend: WebSocket upgrades relayed, `POST /prompt` judged by the money
/// rules, answers that echo prompts cleared of Comfy.org credentials, everything else streamed through.
async fn relay(state: &AppState, request: Request, path: &str, origin: Origin) -> Response {
    if guard::is_websocket_upgrade(request.headers()) {
        return websocket(state, request, path)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    if guard::changes_state(request.method())
        && routes::takes_json(&routes::comfy_route(path))
        && request.headers().contains_key(header::CONTENT_TYPE)
        && !guard::is_json(request.headers())
    {
        return ApiError::UnsupportedMediaType.into_response();
    }
    // What ComfyUI's router will match, worked out once: the money rules depend on it.
    let route = routes::comfy_route(path);
    if request.method() == http::Method::POST && routes::is_prompt_route(&route) {
        return comfy_money::post_prompt(state, request, path, origin).await;
    }
    let echoes_prompts = routes::answer_may_echo_prompts(&route);
    let mut request = request;
    if echoes_prompts {
        comfy_money::prepare_echo_request(&mut request);
    }
    let response = state
        .gateway
        .forward(request, path)
        .await
        .map(|answer| answer.map(axum::body::Body::new))
        .unwrap_or_else(|error| ApiError::from(error).into_response());
    if echoes_prompts {
        let secret = state.config.comfy_org.api_key.as_ref().map(|k| k.expose());
        return comfy_money::clear_echo(response, secret).await;
    }
    response
}

async fn websocket(state: &AppState, request: Request, path: &str) -> ApiResult<Response> {
    let (mut parts, _body) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, state).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let uri = state.gateway.upstream_uri(path, parts.uri.query())?;
    let timeout = state.config.comfy.read_timeout;
    let upstream = ws::connect_upstream(state.gateway.backend(), &uri, timeout).await?;
    let secret = state
        .config
        .comfy_org
        .api_key
        .as_ref()
        .map(|k| std::sync::Arc::<str>::from(k.expose()));
    Ok(upgrade.on_upgrade(move |socket| super::ws_relay::relay(socket, upstream, secret)))
}

/// A panel-origin answer made harmless: refused when a browser would run it, marked so that none sniffs it into
/// something it would run, a file that is not a picture, a video or a sound made a download.
fn confine(mut response: Response, file_route: bool, editor: Option<String>) -> Response {
    let kind = essence(response.headers());
    if can_run_script(&kind) {
        return ApiError::EditorOriginOnly { editor }.into_response();
    }
    if file_route {
        protect_file(response.headers_mut(), &kind);
    } else {
        no_script(response.headers_mut());
    }
    response
}

/// The media type of an answer, lower-cased, without parameters; empty when there is none.
pub fn essence(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Types a browser renders as a document or runs as a script or style: HTML, JavaScript, CSS, SVG and XML.
fn can_run_script(kind: &str) -> bool {
    matches!(
        kind,
        "text/html"
            | "application/xhtml+xml"
            | "text/javascript"
            | "application/javascript"
            | "application/x-javascript"
            | "text/ecmascript"
            | "application/ecmascript"
            | "text/css"
            | "text/xml"
            | "application/xml"
            | "text/xsl"
            | "multipart/x-mixed-replace"
    ) || kind.ends_with("+xml")
}

/// Types shown inline as what they are, with no script of their own: raster images, video and audio.
fn plays_inline(kind: &str) -> bool {
    matches!(
        kind,
        "image/png"
            | "image/apng"
            | "image/jpeg"
            | "image/gif"
            | "image/webp"
            | "image/avif"
            | "image/bmp"
    ) || (kind.starts_with("video/") || kind.starts_with("audio/"))
}

/// `nosniff` and a sandboxing policy: even opened as a page, an answer runs no script on the panel's origin.
fn no_script(headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
}

/// [`no_script`], and `Content-Disposition: attachment` (the file name kept) for every type that is not a raster
/// image, video or audio: a workflow's SVG or HTML output, or an uploaded one, is downloaded, never rendered.
pub fn protect_file(headers: &mut HeaderMap, kind: &str) {
    no_script(headers);
    if plays_inline(kind) {
        return;
    }
    let name = headers
        .get(header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // ComfyUI's `/view` sends `filename="…"` alone, without a disposition type before it.
            v.split(';')
                .map(str::trim)
                .find(|p| p.starts_with("filename"))
                .map(str::to_owned)
        });
    let value = match name {
        Some(param) => format!("attachment; {param}"),
        None => "attachment".to_owned(),
    };
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("attachment")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_browser_could_run_is_refused_and_files_are_downloads() {
        for kind in [
            "text/html",
            "image/svg+xml",
            "text/javascript",
            "application/javascript",
            "text/css",
            "application/xml",
            "text/xml",
            "application/xhtml+xml",
            "application/rss+xml",
        ] {
            assert!(can_run_script(kind), "{kind}");
        }
        for kind in [
            "application/json",
            "image/png",
            "text/plain",
            "video/mp4",
            "",
        ] {
            assert!(!can_run_script(kind), "{kind}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("inline; filename=\"a.pdf\""),
        );
        protect_file(&mut headers, "application/pdf");
        assert_eq!(
            headers[header::CONTENT_DISPOSITION],
            "attachment; filename=\"a.pdf\""
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], "sandbox");
        let mut headers = HeaderMap::new();
        protect_file(&mut headers, "image/webp");
        assert!(!headers.contains_key(header::CONTENT_DISPOSITION));
        protect_file(&mut headers, "");
        assert_eq!(headers[header::CONTENT_DISPOSITION], "attachment");
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("filename=\"x.html\""),
        );
        protect_file(&mut headers, "application/octet-stream");
        assert_eq!(
            headers[header::CONTENT_DISPOSITION],
            "attachment; filename=\"x.html\""
        );
    }
}
