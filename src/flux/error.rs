//! Why a FLUX request did not become a running task, as the flux module says it; `http` turns it into an answer.

use http::StatusCode;
use serde_json::Value;

use crate::codes::Code;
use crate::comfy::body::BoxError;
use crate::money::refusal::Refusal;
use crate::problems::{ProviderError, error_body};

#[derive(Debug, thiserror::Error)]
pub enum FluxError {
    /// A money rule refused it; nothing was sent.
    #[error(transparent)]
    Refused(#[from] Refusal),

    /// BFL refused it, could not be reached, or its answer was lost.
    #[error(transparent)]
    Provider(#[from] ProviderError),

    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl From<crate::store::StoreError> for FluxError {
    fn from(error: crate::store::StoreError) -> Self {
        Self::internal(error)
    }
}

impl From<tokio::task::JoinError> for FluxError {
    fn from(error: tokio::task::JoinError) -> Self {
        Self::internal(error)
    }
}

impl FluxError {
    pub fn internal(cause: impl Into<BoxError>) -> Self {
        Self::Internal(cause.into())
    }

    /// A submit whose outcome is unknown: its answer is kept for an idempotent repeat, which must never send again.
    pub(super) fn after_job(&self) -> Option<(StatusCode, Value)> {
        match self {
            Self::Provider(error) if error.code == Code::BflOutcomeUnknown => Some((
                error.status,
                error_body(error.code, &error.message, error.details.clone()),
            )),
            _ => None,
        }
    }
}
