//! An [`ApiError`] as an HTTP answer: its status, the JSON body, `Retry-After` when it has one; logged once, here.

use axum::Json;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(cause) => {
                tracing::error!(error = %cause, code = self.code(), "internal error")
            }
            Self::ComfyBadResponse(why) => {
                tracing::warn!(why, code = self.code(), "bad answer from ComfyUI")
            }
            _ => tracing::debug!(code = self.code(), %status, "request refused"),
        }
        let retry_after = match &self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            Self::Provider { retry_after, .. } => *retry_after,
            _ => None,
        };
        let mut response = (status, Json(self.body())).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        response
    }
}
