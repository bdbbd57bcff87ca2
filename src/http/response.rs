//! An [`ApiError`] as an HTTP answer: its status, the JSON body, `Retry-After` when it has one; logged once, here.

use axum::Json;
use axum::response::{IntoResponse, Response};

use crate::comfy::error::ComfyError;
use crate::error::ApiError;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code().as_str();
        match &self {
            Self::Internal(cause) | Self::Comfy(ComfyError::Internal(cause)) => {
                tracing::error!(error = %cause, code, "internal error")
            }
            Self::Comfy(ComfyError::BadResponse(why)) => {
                tracing::warn!(why, code, "bad answer from ComfyUI")
            }
            _ => tracing::debug!(code, %status, "request refused"),
        }
        let retry_after = self.retry_after();
        let mut response = (status, Json(self.body())).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        response
    }
}
