//! ComfyUI's host/origin check, as its server applies it to every request.

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// ComfyUI's `create_origin_only_middleware`: every OPTIONS gets an empty 200; a request carrying both `Host` and
/// `Origin` to a loopback host must have matching host and origin, or it gets 403 with an empty body.
pub(super) async fn origin_check(request: Request, next: Next) -> Response {
    if request.method() == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    let headers = request.headers();
    if let (Some(host), Some(origin)) = (
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
    ) {
        let host = host.to_ascii_lowercase();
        let host_name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
        let loopback = host_name == "localhost"
            || host_name
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            let netloc = origin
                .split_once("://")
                .map_or("", |(_, rest)| rest)
                .to_ascii_lowercase();
            let strip = |s: &str| {
                s.rsplit_once(':')
                    .map_or(s.to_owned(), |(h, _)| h.to_owned())
            };
            let matches = if host.contains(':') && netloc.contains(':') {
                host == netloc
            } else {
                strip(&host) == strip(&netloc)
            };
            if !matches {
                return StatusCode::FORBIDDEN.into_response();
            }
        }
    }
    next.run(request).await
}
