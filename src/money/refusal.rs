//! Why a paid request was not sent: the money rules' refusals, for FLUX and for ComfyUI's paid nodes alike.

use serde_json::{Value, json};

use crate::codes::Code;
use crate::comfy::error::ComfyError;
use crate::money::confirm::TokenProblem;
use crate::problems::{Invalid, NotConfigured};

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Invalid(#[from] Invalid),

    #[error("Generation disabled. Set ALLOW_GENERATION=true on the server to allow paid calls")]
    GenerationDisabled { details: Value },

    #[error(transparent)]
    NotConfigured(#[from] NotConfigured),

    /// A paid workflow without a valid approval: 402, the dry run (paid nodes, estimate, a new token) in details.
    #[error("{message}")]
    NeedsConfirmation {
        problem: TokenProblem,
        message: String,
        details: Value,
    },

    /// A confirmation token that cannot pay for this request: 409.
    #[error("{}", .0.message())]
    Confirmation(TokenProblem),

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

    /// A call of a running job's paid nodes would take it past what was confirmed for it: 402.
    #[error(
        "this call would take the job past the amount confirmed for it: ${spent:.3} of ${cap:.3} spent; the run is stopped"
    )]
    SpendCapReached { spent: f64, cap: f64 },

    #[error(
        "this Idempotency-Key was used with another request body; use a new key for a new request"
    )]
    IdempotencyKeyReused,

    /// The first request under the key is still being judged (on another instance, or held up past the wait).
    #[error(
        "a request under this Idempotency-Key is still being answered; send it again in a moment"
    )]
    KeyInFlight,

    #[error("the job does not wait for a confirmation: it is {status}")]
    NotAwaitingConfirmation { status: &'static str },

    /// No ComfyUI answers, and the rule needs one (to tell which nodes cost money, or to send to).
    #[error(transparent)]
    Comfy(#[from] ComfyError),
}

impl Refusal {
    /// The day's budget (all in millionths of a dollar) cannot cover `price`.
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

    /// A refusal naming one field.
    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        Self::Invalid(Invalid::field(field, problem))
    }

    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::ValidationFailed,
            Self::GenerationDisabled { .. } => Code::GenerationDisabled,
            Self::NotConfigured(what) => what.code,
            Self::NeedsConfirmation { problem, .. } | Self::Confirmation(problem) => problem.code(),
            Self::BudgetExceeded { .. } => Code::BudgetExceeded,
            Self::SpendCapReached { .. } => Code::SpendCapReached,
            Self::IdempotencyKeyReused => Code::IdempotencyKeyReused,
            Self::KeyInFlight => Code::IdempotencyConflict,
            Self::NotAwaitingConfirmation { .. } => Code::NotAwaitingConfirmation,
            Self::Comfy(error) => error.code(),
        }
    }

    pub fn details(&self) -> Value {
        match self {
            Self::Invalid(invalid) => invalid.details(),
            Self::GenerationDisabled { details } | Self::NeedsConfirmation { details, .. } => {
                details.clone()
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
            Self::NotAwaitingConfirmation { status } => json!({ "status": status }),
            Self::SpendCapReached { spent, cap } => {
                json!({ "spent_usd": spent, "cap_usd": cap, "currency": "USD" })
            }
            Self::Comfy(error) => error.details(),
            _ => json!({}),
        }
    }
}
