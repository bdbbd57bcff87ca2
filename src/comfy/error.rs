//! What can go wrong talking to ComfyUI, as the comfy module says it; `http` turns it into an answer.

use serde_json::{Value, json};

use super::body::BoxError;
use crate::codes::Code;
use crate::problems::RequestError;

#[derive(Debug, thiserror::Error)]
pub enum ComfyError {
    #[error("ComfyUI at {upstream} is unreachable")]
    Unreachable { upstream: String },

    #[error("ComfyUI at {upstream} did not answer within {seconds} s")]
    Timeout { upstream: String, seconds: f64 },

    #[error("ComfyUI at {upstream} is offline, so {what}")]
    Offline {
        upstream: String,
        what: &'static str,
    },

    #[error("ComfyUI answered with something that is not what it should be: {0}")]
    BadResponse(String),

    /// A request that cannot be forwarded as it is.
    #[error(transparent)]
    Request(#[from] RequestError),

    /// A fault on Orchestrator's side (a file that cannot be written, a request that cannot be built).
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl ComfyError {
    pub fn internal(cause: impl Into<BoxError>) -> Self {
        Self::Internal(cause.into())
    }

    pub fn code(&self) -> Code {
        match self {
            Self::Unreachable { .. } => Code::ComfyUnreachable,
            Self::Timeout { .. } => Code::ComfyTimeout,
            Self::Offline { .. } => Code::ComfyOffline,
            Self::BadResponse(_) => Code::ComfyBadResponse,
            Self::Request(error) => error.code(),
            Self::Internal(_) => Code::Internal,
        }
    }

    pub fn details(&self) -> Value {
        match self {
            Self::Unreachable { upstream } | Self::Offline { upstream, .. } => {
                json!({ "upstream": upstream })
            }
            Self::Timeout { upstream, seconds } => {
                json!({ "upstream": upstream, "timeout_secs": seconds })
            }
            Self::Request(error) => error.details(),
            _ => json!({}),
        }
    }

    /// The message a job's error keeps: an internal cause is logged, never stored for clients.
    pub fn failure(&self) -> crate::codes::Failure {
        crate::codes::Failure::new(self.code(), self.to_string())
    }
}
