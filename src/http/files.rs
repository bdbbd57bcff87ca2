//! A file answered from disk: tower-http's file serving (`Range`: 206, or 416 when a range cannot be met;
//! `If-Modified-Since`), named for download, and never rendered as a page on the panel's origin.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::header;
use tower::ServiceExt;

use crate::error::{ApiError, ApiResult};

/// `path`'s bytes as `content_type`, with `name` in `Content-Disposition`; `request` carries the client's `Range`.
pub async fn serve(
    path: &std::path::Path,
    content_type: &str,
    name: &str,
    request: Request,
) -> ApiResult<Response> {
    let mime = content_type
        .parse()
        .unwrap_or(mime::APPLICATION_OCTET_STREAM);
    let served = tower_http::services::ServeFile::new_with_mime(path, &mime)
        .oneshot(request)
        .await
        .map_err(ApiError::internal)?;
    let mut response = served.map(Body::new);
    named(&mut response, name);
    Ok(response)
}

/// Names the file for download, and keeps it from acting as a page: a workflow can write an SVG or an HTML file,
/// which on the panel's origin must not render, let alone script.
pub fn named(response: &mut Response, name: &str) {
    let base_name = name
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .replace(['"', '\r', '\n'], "");
    if let Ok(value) = format!("inline; filename=\"{base_name}\"").parse() {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    let kind = super::gateway::essence(response.headers());
    super::gateway::protect_file(response.headers_mut(), &kind);
}
