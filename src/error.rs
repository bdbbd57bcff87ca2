//! One error type for every API answer: a stable snake_case `code`, a human message, optional details.
//!
//! Only `http` and `ui` name it. The domains say what went wrong in their own enums ([`ComfyError`],
//! [`Refusal`], [`FluxError`], [`V0Error`], [`ServiceError`]); this module decides which HTTP status each gets.
//!
//! Internal causes are logged once, where the error is turned into a response (`http::response`), and never echoed
//! to the client.

use http::StatusCode;
use serde_json::{Value, json};

use crate::codes::Code;
use crate::comfy::error::ComfyError;
use crate::flux::error::FluxError;
use crate::jobs::egress::EgressError;
use crate::money::refusal::Refusal;
pub use crate::problems::{ErrorBody, ErrorDetail};
use crate::problems::{Invalid, NotConfigured, ProviderError, RequestError, error_body};
use crate::service::ServiceError;
use crate::v0::V0Error;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Host {host:?} is not allowed; add it to ORCH_ALLOWED_HOSTS if it is yours")]
    HostNotAllowed { host: String },

    #[error("cross-site request refused")]
    CrossOrigin { origin: Option<String> },

    #[error("a valid token is required (Authorization: Bearer …)")]
    Unauthorized,

    /// A call to the Comfy.org egress without the key of a running job.
    #[error("{0}")]
    EgressKeyInvalid(String),

    /// A ComfyUI page, script, style sheet, SVG or XML asked for on the panel's origin, where it could act as the
    /// panel: it is served on the editor's origin only.
    #[error("ComfyUI's pages and scripts are not served on the panel's origin; {}", match editor {
        Some(url) => format!("open ComfyUI's editor at {url}"),
        None => "the editor's own origin is off (ORCH_COMFY_BIND=off)".to_owned(),
    })]
    EditorOriginOnly { editor: Option<String> },

    #[error("this route expects a JSON body (Content-Type: application/json)")]
    UnsupportedMediaType,

    #[error(transparent)]
    Request(#[from] RequestError),

    #[error(transparent)]
    Comfy(#[from] ComfyError),

    #[error(transparent)]
    Service(#[from] ServiceError),

    #[error("ComfyUI's log was not found at {path}")]
    LogNotFound { path: String },

    #[error(transparent)]
    Validation(#[from] Invalid),

    #[error("ComfyUI refused the workflow: {message}")]
    ComfyRejected {
        message: String,
        job_id: String,
        details: Value,
    },

    #[error("no job {id}")]
    JobNotFound { id: String },

    #[error("the job is already {status}")]
    JobFinished { status: &'static str },

    #[error("the job is {status}: it can be deleted once it has ended")]
    JobRunning { status: &'static str },

    #[error("the job has no output named {name:?}")]
    OutputNotFound { name: String },

    #[error("no route for {path}")]
    NotFound { path: String },

    #[error("this route does not take {method}")]
    MethodNotAllowed { method: String },

    #[error("a job on {backend} cannot be cancelled: {why}")]
    JobNotCancellable { backend: String, why: &'static str },

    /// A money rule's refusal (generation disabled, no confirmation, over budget, …).
    #[error(transparent)]
    Refused(#[from] Refusal),

    #[error(transparent)]
    NotConfigured(#[from] NotConfigured),

    #[error("{0}")]
    PathsWrite(String),

    #[error(
        "extra_model_paths.yaml cannot be read the way ComfyUI reads it, so it was left as it is; fix it, or send force: true to replace it after a backup"
    )]
    ModelPathsUnparsable { problems: Vec<String> },

    #[error("too many requests; try again in {retry_after} s")]
    RateLimited { retry_after: u64 },

    /// An upstream API (BFL, v0) failed or refused.
    #[error(transparent)]
    Provider(#[from] ProviderError),

    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<FluxError> for ApiError {
    fn from(error: FluxError) -> Self {
        match error {
            FluxError::Refused(refusal) => Self::Refused(refusal),
            FluxError::Provider(error) => Self::Provider(error),
            FluxError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<V0Error> for ApiError {
    fn from(error: V0Error) -> Self {
        match error {
            V0Error::NotConfigured(what) => Self::NotConfigured(what),
            V0Error::Request(error) => Self::Request(error),
            V0Error::Provider(error) => Self::Provider(error),
            V0Error::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<EgressError> for ApiError {
    fn from(error: EgressError) -> Self {
        match error {
            EgressError::KeyInvalid => Self::EgressKeyInvalid(EgressError::KeyInvalid.to_string()),
            EgressError::OverCap { refusal, .. } | EgressError::Refused(refusal) => {
                Self::Refused(refusal)
            }
            EgressError::Request(error) => Self::Request(error),
            EgressError::Provider(error) => Self::Provider(error),
            EgressError::Store(error) => Self::internal(error),
            EgressError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl ApiError {
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(cause.into())
    }

    /// A 422 naming one field.
    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        Self::Validation(Invalid::field(field, problem))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::HostNotAllowed { .. }
            | Self::CrossOrigin { .. }
            | Self::EditorOriginOnly { .. } => StatusCode::FORBIDDEN,
            Self::Unauthorized | Self::EgressKeyInvalid(_) => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Request(error) => error.status(),
            Self::Comfy(error) => comfy_status(error),
            Self::NotFound { .. }
            | Self::LogNotFound { .. }
            | Self::JobNotFound { .. }
            | Self::OutputNotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Validation(_) | Self::ComfyRejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::JobFinished { .. } | Self::JobNotCancellable { .. } | Self::JobRunning { .. } => {
                StatusCode::CONFLICT
            }
            Self::Refused(refusal) => match refusal {
                Refusal::Invalid(_) | Refusal::IdempotencyKeyReused => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                Refusal::GenerationDisabled { .. } => StatusCode::FORBIDDEN,
                Refusal::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
                Refusal::NeedsConfirmation { .. }
                | Refusal::BudgetExceeded { .. }
                | Refusal::SpendCapReached { .. } => StatusCode::PAYMENT_REQUIRED,
                Refusal::Confirmation(_)
                | Refusal::NotAwaitingConfirmation { .. }
                | Refusal::KeyInFlight => StatusCode::CONFLICT,
                Refusal::Comfy(error) => comfy_status(error),
            },
            Self::PathsWrite(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ModelPathsUnparsable { .. } => StatusCode::CONFLICT,
            Self::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Provider(error) => error.status,
            Self::Service(error) => match error {
                ServiceError::External | ServiceError::NotInstalled | ServiceError::NoCommand => {
                    StatusCode::CONFLICT
                }
                ServiceError::CommandFailed { .. } => StatusCode::BAD_GATEWAY,
                ServiceError::Write { .. } | ServiceError::Supervisor(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code clients branch on.
    pub fn code(&self) -> Code {
        match self {
            Self::HostNotAllowed { .. } => Code::HostNotAllowed,
            Self::CrossOrigin { .. } => Code::CrossOriginRefused,
            Self::EditorOriginOnly { .. } => Code::EditorOriginOnly,
            Self::Unauthorized => Code::Unauthorized,
            Self::EgressKeyInvalid(_) => Code::EgressKeyInvalid,
            Self::UnsupportedMediaType => Code::UnsupportedMediaType,
            Self::Request(error) => error.code(),
            Self::Comfy(error) => error.code(),
            Self::NotFound { .. } => Code::NotFound,
            Self::MethodNotAllowed { .. } => Code::MethodNotAllowed,
            Self::LogNotFound { .. } => Code::LogNotFound,
            Self::Validation(_) => Code::ValidationFailed,
            Self::ComfyRejected { .. } => Code::ComfyRejected,
            Self::JobNotFound { .. } => Code::JobNotFound,
            Self::JobFinished { .. } => Code::JobFinished,
            Self::JobRunning { .. } => Code::JobRunning,
            Self::OutputNotFound { .. } => Code::OutputNotFound,
            Self::JobNotCancellable { .. } => Code::JobNotCancellable,
            Self::Refused(refusal) => refusal.code(),
            Self::PathsWrite(_) => Code::PathsWriteFailed,
            Self::ModelPathsUnparsable { .. } => Code::ModelPathsUnparsable,
            Self::NotConfigured(what) => what.code,
            Self::RateLimited { .. } => Code::RateLimited,
            Self::Provider(error) => error.code,
            Self::Service(error) => match error {
                ServiceError::External => Code::ServiceExternal,
                ServiceError::NotInstalled => Code::ServiceNotInstalled,
                ServiceError::NoCommand => Code::ServiceNotConfigured,
                ServiceError::CommandFailed { .. } => Code::ServiceCommandFailed,
                ServiceError::Write { .. } => Code::ServiceWriteFailed,
                ServiceError::Supervisor(_) => Code::ServiceStartFailed,
            },
            Self::Internal(_) => Code::Internal,
        }
    }

    /// What the client is told: the error's sentence (never an internal cause).
    pub fn message(&self) -> String {
        match self {
            Self::CrossOrigin { .. } => {
                "Cross-site request refused: state-changing requests must come from the panel's own origin"
                    .to_string()
            }
            other => other.to_string(),
        }
    }

    /// The structured facts of the error, for the body's `details`.
    pub fn details(&self) -> Value {
        match self {
            Self::HostNotAllowed { host } => json!({ "host": host }),
            Self::CrossOrigin { origin } => json!({ "origin": origin }),
            Self::EditorOriginOnly { editor } => json!({ "editor": editor }),
            Self::Request(error) => error.details(),
            Self::Comfy(error) => error.details(),
            Self::LogNotFound { path } => json!({ "path": path }),
            Self::Validation(invalid) => invalid.details(),
            Self::ComfyRejected {
                job_id, details, ..
            } => {
                let mut details = details.clone();
                details["job_id"] = json!(job_id);
                details
            }
            Self::Refused(refusal) => refusal.details(),
            Self::RateLimited { retry_after } => json!({ "retry_after_secs": retry_after }),
            Self::ModelPathsUnparsable { problems } => json!({ "problems": problems }),
            Self::Provider(error) => error.details.clone(),
            _ => json!({}),
        }
    }

    /// The JSON body every API error shares.
    pub fn body(&self) -> Value {
        error_body(self.code(), &self.message(), self.details())
    }

    /// When the client may try again, for `Retry-After`.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            Self::Provider(error) => error.retry_after,
            Self::Refused(Refusal::KeyInFlight) => Some(1),
            _ => None,
        }
    }
}

fn comfy_status(error: &ComfyError) -> StatusCode {
    match error {
        ComfyError::Unreachable { .. } | ComfyError::BadResponse(_) => StatusCode::BAD_GATEWAY,
        ComfyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        ComfyError::Offline { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ComfyError::Request(error) => error.status(),
        ComfyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_are_not_echoed() {
        let err = ApiError::internal("disk /secret/path exploded");
        let body = err.body().to_string();
        assert!(!body.contains("/secret/path"), "{body}");
        assert_eq!(err.body()["error"]["code"], "internal");
        // A domain's internal fault is as silent.
        let err = ApiError::from(ComfyError::internal("disk /secret/path exploded"));
        assert!(!err.body().to_string().contains("/secret/path"));
    }

    #[test]
    fn codes_and_statuses_match_the_contract() {
        let e = ApiError::from(ComfyError::Timeout {
            upstream: "http://127.0.0.1:8188".into(),
            seconds: 10.0,
        });
        assert_eq!((e.status().as_u16(), e.code()), (504, Code::ComfyTimeout));
        assert_eq!(e.body()["error"]["details"]["timeout_secs"], 10.0);
        let e = ApiError::from(ComfyError::Unreachable {
            upstream: "http://127.0.0.1:8188".into(),
        });
        assert_eq!(
            (e.status().as_u16(), e.code()),
            (502, Code::ComfyUnreachable)
        );
        assert_eq!(
            e.body()["error"]["details"]["upstream"],
            "http://127.0.0.1:8188"
        );
    }
}
