//! The per-client limit on the paid and remote routes (`/api/flux/*`, `/api/v0/*`): a GCRA limiter (governor)
//! keyed by the client's IP address, answering 429 with `Retry-After` when a client goes too fast.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

pub async fn limit(
    State(limiter): State<Arc<crate::app::limits::PaidLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    match limiter.check(client) {
        Ok(()) => next.run(request).await,
        Err(retry_after) => ApiError::RateLimited {
            retry_after: retry_after.max(1),
        }
        .into_response(),
    }
}
