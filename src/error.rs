//! One error type for every API answer: a stable snake_case `code`, a human message, optional details.
//!
//! Internal causes are logged once, where the error is turned into a response (`http::response`), and never echoed
//! to the client.

use http::StatusCode;
use serde_json::{Value, json};

use crate::service::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Host {host:?} is not allowed; add it to ORCH_ALLOWED_HOSTS if it is yours")]
    HostNotAllowed { host: String },

    #[error("cross-site request refused")]
    CrossOrigin { origin: Option<String> },

    #[error("a valid token is required (Authorization: Bearer …)")]
    Unauthorized,

    /// A ComfyUI page, script, style sheet, SVG or XML asked for on the panel's origin, where it could act as the
    /// panel: it is served on the editor's origin only.
    #[error("ComfyUI's pages and scripts are not served on the panel's origin; {}", match editor {
        Some(url) => format!("open ComfyUI's editor at {url}"),
        None => "the editor's own origin is off (ORCH_COMFY_BIND=off)".to_owned(),
    })]
    EditorOriginOnly { editor: Option<String> },

    #[error("this route expects a JSON body (Content-Type: application/json)")]
    UnsupportedMediaType,

    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },

    #[error("the path {path:?} is not allowed")]
    InvalidPath { path: String },

    #[error("the request body could not be read (broken framing, or the client went away)")]
    RequestBodyUnreadable,

    #[error("ComfyUI at {upstream} is unreachable")]
    ComfyUnreachable { upstream: String },

    #[error("ComfyUI at {upstream} did not answer within {seconds} s")]
    ComfyTimeout { upstream: String, seconds: f64 },

    #[error("ComfyUI at {upstream} is offline, so {what}")]
    ComfyOffline {
        upstream: String,
        what: &'static str,
    },

    #[error("ComfyUI answered with something that is not what it should be: {0}")]
    ComfyBadResponse(String),

    #[error("{0}")]
    Service(#[from] crate::service::ServiceError),

    #[error("ComfyUI's log was not found at {path}")]
    LogNotFound { path: String },

    #[error("the request is not valid: {}", summary(.fields))]
    Validation {
        fields: serde_json::Map<String, Value>,
    },

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

    #[error("the job has no output named {name:?}")]
    OutputNotFound { name: String },

    #[error("no route for {path}")]
    NotFound { path: String },

    #[error("this route does not take {method}")]
    MethodNotAllowed { method: String },

    #[error("a job on {backend} cannot be cancelled: {why}")]
    JobNotCancellable { backend: String, why: &'static str },

    #[error("Generation disabled. Set ALLOW_GENERATION=true on the server to allow paid calls")]
    GenerationDisabled { details: Value },

    /// A paid workflow without a valid approval: 402, the dry run (paid nodes, estimate, a new token) in details.
    #[error("{message}")]
    NeedsConfirmation {
        code: &'static str,
        message: String,
        details: Value,
    },

    #[error("the job does not wait for a confirmation: it is {status}")]
    NotAwaitingConfirmation { status: &'static str },

    #[error("{what} is not configured on the server")]
    NotConfigured {
        code: &'static str,
        what: &'static str,
    },

    #[error("{0}")]
    PathsWrite(String),

    #[error(
        "extra_model_paths.yaml cannot be read the way ComfyUI reads it, so it was left as it is; fix it, or send force: true to replace it after a backup"
    )]
    ModelPathsUnparsable { problems: Vec<String> },

    #[error("{message}")]
    Confirmation {
        code: &'static str,
        message: &'static str,
    },

    #[error(
        "the day's budget for paid generation (FLUX and paid ComfyUI nodes) cannot cover this request: ${price:.3} needed, ${left:.3} of ${limit:.2} left"
    )]
    BudgetExceeded {
        price: f64,
        limit: f64,
        spent: f64,
        reserved: f64,
        left: f64,
    },

    #[error(
        "this Idempotency-Key was used with another request body; use a new key for a new request"
    )]
    IdempotencyKeyReused,

    #[error("too many requests; try again in {retry_after} s")]
    RateLimited { retry_after: u64 },

    #[error("{message}")]
    Provider {
        status: StatusCode,
        code: &'static str,
        message: String,
        details: Value,
        retry_after: Option<u64>,
    },

    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(cause.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::HostNotAllowed { .. }
            | Self::CrossOrigin { .. }
            | Self::EditorOriginOnly { .. } => StatusCode::FORBIDDEN,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidPath { .. } | Self::RequestBodyUnreadable => StatusCode::BAD_REQUEST,
            Self::ComfyUnreachable { .. } | Self::ComfyBadResponse(_) => StatusCode::BAD_GATEWAY,
            Self::ComfyTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ComfyOffline { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound { .. }
            | Self::LogNotFound { .. }
            | Self::JobNotFound { .. }
            | Self::OutputNotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Validation { .. } | Self::ComfyRejected { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::JobFinished { .. } | Self::JobNotCancellable { .. } => StatusCode::CONFLICT,
            Self::GenerationDisabled { .. } => StatusCode::FORBIDDEN,
            Self::NeedsConfirmation { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::NotAwaitingConfirmation { .. } => StatusCode::CONFLICT,
            Self::PathsWrite(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ModelPathsUnparsable { .. } => StatusCode::CONFLICT,
            Self::NotConfigured { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Confirmation { .. } => StatusCode::CONFLICT,
            Self::BudgetExceeded { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Provider { status, .. } => *status,
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

    /// The stable code clients branch on; never change one once shipped.
    pub fn code(&self) -> &'static str {
        match self {
            Self::HostNotAllowed { .. } => "host_not_allowed",
            Self::CrossOrigin { .. } => "cross_origin_refused",
            Self::EditorOriginOnly { .. } => "editor_origin_only",
            Self::Unauthorized => "unauthorized",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::InvalidPath { .. } => "invalid_path",
            Self::RequestBodyUnreadable => "invalid_body",
            Self::ComfyUnreachable { .. } => "comfy_unreachable",
            Self::ComfyTimeout { .. } => "comfy_timeout",
            Self::ComfyOffline { .. } => "comfy_offline",
            Self::ComfyBadResponse(_) => "comfy_bad_response",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::LogNotFound { .. } => "log_not_found",
            Self::Validation { .. } => "validation_failed",
            Self::ComfyRejected { .. } => "comfy_rejected",
            Self::JobNotFound { .. } => "job_not_found",
            Self::JobFinished { .. } => "job_finished",
            Self::OutputNotFound { .. } => "output_not_found",
            Self::JobNotCancellable { .. } => "job_not_cancellable",
            Self::GenerationDisabled { .. } => "generation_disabled",
            Self::NeedsConfirmation { code, .. } => code,
            Self::NotAwaitingConfirmation { .. } => "not_awaiting_confirmation",
            Self::PathsWrite(_) => "paths_write_failed",
            Self::ModelPathsUnparsable { .. } => "model_paths_unparsable",
            Self::NotConfigured { code, .. } => code,
            Self::Confirmation { code, .. } => code,
            Self::BudgetExceeded { .. } => "budget_exceeded",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::RateLimited { .. } => "rate_limited",
            Self::Provider { code, .. } => code,
            Self::Service(error) => match error {
                ServiceError::External => "service_external",
                ServiceError::NotInstalled => "service_not_installed",
                ServiceError::NoCommand => "service_not_configured",
                ServiceError::CommandFailed { .. } => "service_command_failed",
                ServiceError::Write { .. } => "service_write_failed",
                ServiceError::Supervisor(_) => "service_start_failed",
            },
            Self::Internal(_) => "internal",
        }
    }

    fn details(&self) -> Value {
        match self {
            Self::HostNotAllowed { host } => json!({ "host": host }),
            Self::CrossOrigin { origin } => json!({ "origin": origin }),
            Self::EditorOriginOnly { editor } => json!({ "editor": editor }),
            Self::PayloadTooLarge { limit } => json!({ "limit_bytes": limit }),
            Self::ComfyUnreachable { upstream } | Self::ComfyOffline { upstream, .. } => {
                json!({ "upstream": upstream })
            }
            Self::LogNotFound { path } => json!({ "path": path }),
            Self::Validation { fields } => json!({ "fields": fields }),
            Self::ComfyRejected {
                job_id, details, ..
            } => {
                let mut details = details.clone();
                details["job_id"] = json!(job_id);
                details
            }
            Self::ComfyTimeout { upstream, seconds } => {
                json!({ "upstream": upstream, "timeout_secs": seconds })
            }
            Self::BudgetExceeded {
                price,
                limit,
                spent,
                reserved,
                left,
            } => {
                json!({ "price": price, "limit": limit, "spent": spent, "reserved": reserved, "left": left, "currency": "USD" })
            }
            Self::RateLimited { retry_after } => json!({ "retry_after_secs": retry_after }),
            Self::ModelPathsUnparsable { problems } => json!({ "problems": problems }),
            Self::Provider { details, .. }
            | Self::GenerationDisabled { details }
            | Self::NeedsConfirmation { details, .. } => details.clone(),
            Self::NotAwaitingConfirmation { status } => json!({ "status": status }),
            _ => json!({}),
        }
    }

    /// The JSON body every API error shares.
    pub fn body(&self) -> Value {
        let message = match self {
            Self::CrossOrigin { .. } => {
                "Cross-site request refused: state-changing requests must come from the panel's own origin"
                    .to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message,
                details: self.details(),
            },
        };
        serde_json::to_value(body).unwrap_or_default()
    }
}

/// The body of every error answer of the API.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable and snake_case; clients branch on it. Among them: `host_not_allowed`, `cross_origin_refused`,
    /// `unauthorized`, `editor_origin_only`, `unsupported_media_type`, `payload_too_large`, `invalid_body`, `invalid_path`, `not_found`,
    /// `method_not_allowed`, `validation_failed`, `comfy_unreachable`, `comfy_timeout`, `comfy_offline`, `comfy_bad_response`,
    /// `comfy_rejected`, `job_not_found`, `job_finished`, `job_not_cancellable`, `output_not_found`,
    /// `log_not_found`, `generation_disabled`, `flux_not_configured`, `v0_not_configured`,
    /// `comfy_dir_not_configured`, `confirmation_required`, `confirmation_expired`, `confirmation_mismatch`,
    /// `confirmation_used`, `not_awaiting_confirmation`, `comfy_org_not_configured`, `budget_exceeded`, `idempotency_key_reused`, `rate_limited`,
    /// `model_paths_unparsable`, `paths_write_failed`, `service_external`, `service_not_installed`,
    /// `service_not_configured`, `service_command_failed`, `bfl_unreachable`, `bfl_outcome_unknown`,
    /// `v0_timeout`, `v0_unreachable`, `v0_error`, `internal`.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
    /// Machine-readable specifics: `fields` (per-field problems) for `validation_failed`, `retry_after_secs`
    /// for `rate_limited`, `upstream` for ComfyUI errors, and so on.
    #[schema(value_type = Object)]
    pub details: Value,
}

pub type ApiResult<T> = Result<T, ApiError>;

fn summary(fields: &serde_json::Map<String, Value>) -> String {
    fields
        .iter()
        .map(|(field, problem)| format!("{field}: {}", problem.as_str().unwrap_or("invalid")))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// 402: the day's budget (all in millionths of a dollar) cannot cover `price`.
    pub fn budget_exceeded(price: i64, limit: i64, spent: i64, reserved: i64) -> Self {
        let usd = |micros: i64| micros as f64 / 1_000_000.0;
        Self::BudgetExceeded {
            price: usd(price),
            limit: usd(limit),
            spent: usd(spent),
            reserved: usd(reserved),
            left: usd((limit - spent - reserved).max(0)),
        }
    }

    /// A 422 naming one field.
    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        let mut fields = serde_json::Map::new();
        fields.insert(field.to_owned(), Value::String(problem.into()));
        Self::Validation { fields }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_are_not_echoed() {
        let err = ApiError::internal("disk /secret/path exploded");
        let body = err.body().to_string();
        assert!(!body.contains("/secret/path"), "{body}");
        assert_eq!(err.body()["error"]["code"], "internal");
    }

    #[test]
    fn codes_and_statuses_match_the_contract() {
        let e = ApiError::ComfyTimeout {
            upstream: "http://127.0.0.1:8188".into(),
            seconds: 10.0,
        };
        assert_eq!((e.status().as_u16(), e.code()), (504, "comfy_timeout"));
        let e = ApiError::ComfyUnreachable {
            upstream: "http://127.0.0.1:8188".into(),
        };
        assert_eq!((e.status().as_u16(), e.code()), (502, "comfy_unreachable"));
        assert_eq!(
            e.body()["error"]["details"]["upstream"],
            "http://127.0.0.1:8188"
        );
    }
}
