//! The web panel: server-rendered pages (askama templates in `templates/`), one small hand-written script and a
//! stylesheet (embedded from `assets/`), in English and Russian ([`i18n`]).
//!
//! Every page is whole HTML from the server, so nothing depends on the script to show; the script adds the live
//! parts (status, progress, the FLUX confirmation) and, if it fails, says so in a banner instead of leaving a
//! blank area. Unknown pages and server errors get a styled page with a way back.

pub mod i18n;
mod job_pages;

use askama::Template;
use axum::extract::{Path, Request, State};
use axum::response::{Html, IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::Message;
use i18n::{Lang, Tr};
use job_pages::{job, jobs};

/// The panel's pages, the error pages and the assets, as one router; `api` is the OpenAPI document `/api-docs`
/// lists.
pub fn router(api: &'static utoipa::openapi::OpenApi) -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/", get(home))
        .route("/diagnostics", get(diagnostics))
        .route("/builder", get(builder))
        .route("/settings", get(settings))
        .route("/api-docs", get(move |headers| api_docs(headers, api)))
        .route("/jobs", get(jobs))
        .route("/gallery", get(gallery))
        .route("/jobs/{id}", get(job))
        .route("/editor", get(editor))
        .route("/assets/{*path}", get(asset))
}

/// JSON to embed in `<script type="application/json">`: `<`, `>` and `&` escaped so no text can close the element.
pub fn script_json(value: &Value) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The visitor's language, from the `lang` cookie or `Accept-Language`.
pub fn tr(headers: &HeaderMap) -> Tr {
    Tr {
        lang: Lang::from_headers(headers),
    }
}

/// Renders a page; a template that fails to render is a server error, shown as the error page.
fn render(template: &impl Template, lang: Tr) -> Response {
    match template.render() {
        Ok(html) => page_response(StatusCode::OK, html),
        Err(error) => {
            tracing::error!(%error, "a page template failed to render");
            error_page(lang, StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

fn page_response(status: StatusCode, html: String) -> Response {
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; \
             script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    t: Tr,
    page: &'static str,
    code: u16,
    title: &'static str,
    text: &'static str,
}

/// The styled 404 or 500 page.
pub fn error_page(t: Tr, status: StatusCode) -> Response {
    let (title, text) = if status == StatusCode::NOT_FOUND {
        (t.s("error.title.404"), t.s("error.text.404"))
    } else {
        (t.s("error.title.500"), t.s("error.text.500"))
    };
    let page = ErrorPage {
        t,
        page: "error",
        code: status.as_u16(),
        title,
        text,
    };
    let html = page.render().unwrap_or_else(|_| {
        format!(
            "<!doctype html><title>{0}</title><h1>{0}</h1><p>{title}</p><a href=\"/\">/</a>",
            status.as_u16()
        )
    });
    page_response(status, html)
}

/// A page for any path the router does not know; JSON under `/api/`.
pub async fn not_found(headers: HeaderMap, request: Request) -> Response {
    let path = request.uri().path();
    if path.starts_with("/api/") || path == "/api" {
        return ApiError::NotFound {
            path: path.chars().take(256).collect(),
        }
        .into_response();
    }
    error_page(tr(&headers), StatusCode::NOT_FOUND)
}

#[derive(rust_embed::Embed)]
#[folder = "assets/"]
struct Assets;

/// `/assets/{*path}`: the stylesheet, the script and the icon, embedded in the binary.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let Some(file) = Assets::get(&path) else {
        return not_found(headers, Request::new(axum::body::Body::empty())).await;
    };
    let content_type = match path.rsplit('.').next() {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = (StatusCode::OK, file.data.into_owned()).into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, value);
    }
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    t: Tr,
    page: &'static str,
    templates: Vec<(String, String)>,
    flux_models: Vec<(&'static str, &'static str, String)>,
    templates_json: String,
}

pub async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let t = tr(&headers);
    let manifests: Vec<_> = state.templates.manifests().collect();
    let page = HomePage {
        t,
        page: "home",
        templates: manifests
            .iter()
            .map(|m| (m.name.clone(), m.title.clone()))
            .collect(),
        flux_models: crate::bfl::catalog::MODELS
            .iter()
            .map(|m| {
                (
                    m.name,
                    m.label,
                    format!("{:.3}", crate::money::usd(m.price_micros)),
                )
            })
            .collect(),
        templates_json: script_json(&in_language(json!(manifests), t.code())),
    };
    render(&page, t)
}

/// The manifests as the page's script reads them: each label and help in the page's language only (else English).
fn in_language(mut manifests: Value, lang: &str) -> Value {
    let params = manifests
        .as_array_mut()
        .into_iter()
        .flatten()
        .filter_map(|m| m["params"].as_object_mut())
        .flat_map(|params| params.values_mut());
    for param in params {
        for field in ["label", "help"] {
            if let Some(texts) = param.get_mut(field).and_then(Value::as_object_mut) {
                let text = texts.get(lang).or_else(|| texts.get("en")).cloned();
                texts.clear();
                if let Some(text) = text {
                    texts.insert(lang.to_owned(), text);
                }
            }
        }
    }
    manifests
}

#[derive(Template)]
#[template(path = "diagnostics.html")]
struct DiagnosticsPage {
    t: Tr,
    page: &'static str,
    models_dir: String,
}

pub async fn diagnostics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let t = tr(&headers);
    let page = DiagnosticsPage {
        t,
        page: "diagnostics",
        models_dir: state
            .config
            .models_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
    };
    render(&page, t)
}

#[derive(Template)]
#[template(path = "builder.html")]
struct BuilderPage {
    t: Tr,
    page: &'static str,
    v0_configured: bool,
    messages: Vec<Message>,
}

pub async fn builder(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let t = tr(&headers);
    let messages = match state.store.messages(200).await {
        Ok(messages) => messages,
        Err(error) => {
            tracing::error!(%error, "cannot read the builder's messages");
            return error_page(t, StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    let page = BuilderPage {
        t,
        page: "builder",
        v0_configured: state.v0.is_configured(),
        messages,
    };
    render(&page, t)
}

/// One route as the API page lists it.
struct ApiRoute {
    method: String,
    path: String,
    summary: String,
    statuses: String,
}

#[derive(Template)]
#[template(path = "api-docs.html")]
struct ApiDocsPage {
    t: Tr,
    page: &'static str,
    version: String,
    /// Routes by tag, in the document's order.
    groups: Vec<(String, Vec<ApiRoute>)>,
}

/// `/api-docs`: the routes of the OpenAPI document, rendered here (no script, no CDN).
async fn api_docs(headers: HeaderMap, document: &utoipa::openapi::OpenApi) -> Response {
    let t = tr(&headers);
    let mut groups: Vec<(String, Vec<ApiRoute>)> = document
        .tags
        .iter()
        .flatten()
        .map(|tag| (tag.name.clone(), Vec::new()))
        .collect();
    for (path, item) in &document.paths.paths {
        let operations = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let tag = operation
                .tags
                .as_ref()
                .and_then(|tags| tags.first())
                .cloned()
                .unwrap_or_default();
            let summary = operation
                .summary
                .clone()
                .or_else(|| operation.description.clone())
                .unwrap_or_default();
            let statuses = operation
                .responses
                .responses
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(" ");
            let route = ApiRoute {
                method: method.to_owned(),
                path: path.clone(),
                summary,
                statuses,
            };
            match groups.iter_mut().find(|(name, _)| *name == tag) {
                Some((_, routes)) => routes.push(route),
                None => groups.push((tag, vec![route])),
            }
        }
    }
    groups.retain(|(_, routes)| !routes.is_empty());
    let page = ApiDocsPage {
        t,
        page: "api-docs",
        version: serde_json::to_value(&document.openapi)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        groups,
    };
    render(&page, t)
}

#[derive(Template)]
#[template(path = "gallery.html")]
struct GalleryPage {
    t: Tr,
    page: &'static str,
    templates: Vec<(String, String)>,
    statuses: [&'static str; 3],
}

/// `/gallery`: every output as a thumbnail, newest first, filtered and searched (the script reads `/api/gallery`).
pub async fn gallery(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let t = tr(&headers);
    let page = GalleryPage {
        t,
        page: "gallery",
        templates: state
            .templates
            .manifests()
            .map(|m| (m.name.clone(), m.title.clone()))
            .collect(),
        // The states a job with outputs can end in.
        statuses: ["succeeded", "cancelled", "failed"],
    };
    render(&page, t)
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    t: Tr,
    page: &'static str,
    /// Variable, value, source key, whether the value differs per machine (masked in screenshots).
    rows: Vec<(&'static str, String, &'static str, bool)>,
}

pub async fn settings(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let t = tr(&headers);
    let rows = state
        .config
        .effective()
        .into_iter()
        .map(|(key, value)| {
            let source = match state.config.sources.get(key).copied() {
                Some("flag") => "source.flag",
                Some("env") => "source.env",
                Some("dotenv") => "source.dotenv",
                _ => "source.default",
            };
            // Values that differ from one machine or run to the next.
            let dynamic = matches!(
                key,
                "DATA_DIR"
                    | "COMFY_LOG_FILE"
                    | "ORCH_BIND"
                    | "COMFY_URL"
                    | "COMFY_COMMAND"
                    | "BFL_BASE_URL"
                    | "V0_BASE_URL"
                    | "COMFY_DIR"
                    | "ORCH_WORKERS"
                    | "MODELS_DIR"
                    | "TEMPLATES_DIR"
            );
            (key, value, source, dynamic)
        })
        .collect();
    render(
        &SettingsPage {
            t,
            page: "settings",
            rows,
        },
        t,
    )
}

/// `/editor`: to ComfyUI's editor on its own origin (the panel's nav links here), under the name the panel was
/// opened with; a 404 page when the editor is off.
pub async fn editor(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(addr) = state.editor_addr() else {
        return error_page(tr(&headers), StatusCode::NOT_FOUND);
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let url = crate::address::editor_url(addr, host);
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, url),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_json_cannot_close_its_script_element() {
        let text = script_json(&json!({ "a": "</script><script>alert(1)</script>&" }));
        assert!(!text.contains("</") && !text.contains('&'));
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["a"], "</script><script>alert(1)</script>&");
    }
}
