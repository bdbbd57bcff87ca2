//! Failure shapes several domains share, each with its message written once: a request that cannot be forwarded,
//! fields that are wrong, a feature that is not configured, an upstream API that failed. Domain error enums hold
//! them; `http` turns them into answers.

use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::codes::Code;

/// A request a gateway (ComfyUI's, v0's) cannot forward as it is.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A path that would leave the upstream's API (`..`, encoded separators).
    #[error("the path {path:?} is not allowed")]
    InvalidPath { path: String },

    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },

    #[error("the request body could not be read (broken framing, or the client went away)")]
    BodyUnreadable,

    /// The client sent its body too slowly: silent longer than `ORCH_BODY_IDLE_SECS`, or longer in all than
    /// `ORCH_BODY_TIMEOUT_SECS`.
    #[error("the request body did not arrive within {} s", after.as_secs_f64())]
    BodyTimeout { after: std::time::Duration },
}

impl RequestError {
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidPath { .. } => Code::InvalidPath,
            Self::PayloadTooLarge { .. } => Code::PayloadTooLarge,
            Self::BodyUnreadable => Code::InvalidBody,
            Self::BodyTimeout { .. } => Code::BodyTimeout,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::InvalidPath { .. } | Self::BodyUnreadable => StatusCode::BAD_REQUEST,
        }
    }

    pub fn details(&self) -> Value {
        match self {
            Self::PayloadTooLarge { limit } => json!({ "limit_bytes": limit }),
            Self::BodyTimeout { after } => json!({ "after_secs": after.as_secs_f64() }),
            _ => json!({}),
        }
    }
}

/// Fields that are wrong, each with its problem: `validation_failed`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the request is not valid: {}", summary(&self.0))]
pub struct Invalid(pub Map<String, Value>);

impl Invalid {
    /// One field and its problem.
    pub fn field(field: &str, problem: impl Into<String>) -> Self {
        let mut fields = Map::new();
        fields.insert(field.to_owned(), Value::String(problem.into()));
        Self(fields)
    }

    pub fn details(&self) -> Value {
        json!({ "fields": self.0 })
    }
}

fn summary(fields: &Map<String, Value>) -> String {
    fields
        .iter()
        .map(|(field, problem)| format!("{field}: {}", problem.as_str().unwrap_or("invalid")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A feature whose key or folder is not set: 503 with its own code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} is not configured on the server")]
pub struct NotConfigured {
    pub code: Code,
    pub what: &'static str,
}

/// An upstream API (BFL, v0) failed or refused: the answer Orchestrator gives for it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    pub details: Value,
    pub retry_after: Option<u64>,
}

/// The JSON body of every error answer: `{"error": {code, message, details}}`.
pub fn error_body(code: Code, message: &str, details: Value) -> Value {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.as_str().to_owned(),
            message: message.to_owned(),
            details,
        },
    };
    serde_json::to_value(body).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_request_names_each_field() {
        let invalid = Invalid::field("width", "must be a multiple of 8");
        assert_eq!(
            invalid.to_string(),
            "the request is not valid: width: must be a multiple of 8"
        );
        assert_eq!(
            invalid.details()["fields"]["width"],
            "must be a multiple of 8"
        );
    }

    #[test]
    fn every_code_the_schema_names_is_a_code() {
        let schema =
            serde_json::to_value(<ErrorDetail as utoipa::PartialSchema>::schema()).unwrap();
        let description = schema["properties"]["code"]["description"]
            .as_str()
            .unwrap();
        let named: Vec<&str> = description.split('`').skip(1).step_by(2).collect();
        assert!(named.len() > 40, "{description}");
        for name in named {
            assert!(
                Code::ALL.iter().any(|code| code.as_str() == name),
                "{name} is not a code"
            );
        }
    }
}
