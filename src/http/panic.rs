//! A panic in a handler is an answer, not a dropped connection: the error page, or under `/api/` the JSON error.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use http::StatusCode;

use crate::error::ApiError;

/// Turns a panic in any handler into the error page (or, under `/api/`, the JSON error), instead of a dropped
/// connection; the panic is logged.
pub async fn catch_panics(request: Request, next: Next) -> Response {
    caught(request, |request| next.run(request)).await
}

/// Runs `handle` on the request, a panic turned into the error page or, under `/api/`, the JSON error (the
/// gateway's fast path, which skips the router's layers, goes through this too).
pub async fn caught<F, Fut>(request: Request, handle: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let api = request.uri().path().starts_with("/api/");
    let lang = crate::ui::tr(request.headers());
    match std::panic::AssertUnwindSafe(handle(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %why, "a request handler panicked");
            if api {
                ApiError::internal(format!("handler panicked: {why}")).into_response()
            } else {
                crate::ui::error_page(lang, StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    async fn panicking(_: Request) -> Response {
        panic!("a deliberate panic");
    }

    /// A panic in a handler, the gateway's fast path included, is an answer: the JSON error under `/api/`, the
    /// error page elsewhere, never a dropped connection.
    #[tokio::test]
    async fn a_panic_is_the_error_page_or_the_json_error() {
        let request = |path: &str| {
            Request::builder()
                .uri(path)
                .header("accept-language", "ru")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let api = caught(request("/api/comfy/x"), panicking).await;
        assert_eq!(api.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(api.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "internal");

        let page = caught(request("/jobs"), panicking).await;
        assert_eq!(page.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let html = axum::body::to_bytes(page.into_body(), 1 << 20)
            .await
            .unwrap();
        let html = String::from_utf8(html.to_vec()).unwrap();
        assert!(
            html.contains("<html") && html.contains("lang=\"ru\""),
            "{html}"
        );
    }
}
