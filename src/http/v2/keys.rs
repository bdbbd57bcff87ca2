//! Stripe's `Idempotency-Key` rules for the v2 writes that make something (a job, an asset): the same key and body
//! is answered as the first time (`Idempotency-Replayed: true`), another body is `idempotency_key_reuse`, a repeat
//! while the first is being answered `idempotency_conflict` with `Retry-After`.
//!
//! The handlers claim a key, do the work and settle the key in a task of their own, so a client that hangs up in
//! between cannot leave a key claimed with nothing to answer its repeats with; only a crash can, and such a claim
//! is given back once it is abandoned (the protocol is [`crate::money::claims`]').

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};

use super::{V2Error, V2Result};
use crate::app::AppState;
use crate::codes::Code;
use crate::money::claims::{self, Claim, Claimed, Settle};

/// A request's `Idempotency-Key` ([`crate::money::keys::key_of`]), or the contract's 400.
pub(super) fn key_of(headers: &HeaderMap) -> V2Result<Option<String>> {
    crate::money::keys::key_of(headers)
        .map_err(|bad| V2Error::invalid(format!("Idempotency-Key {bad}")))
}

/// What a key's first request was answered with.
pub(super) enum Prior {
    /// The key is new, and now claimed for this request, which [`settle`]s it; the claim is renewed while the
    /// [`Claimed`] is held.
    New(Claimed),
    /// The first request made this job or asset, and was answered with this status.
    Made { id: String, status: StatusCode },
    /// The first request made a job and was refused (ComfyUI refused the workflow): the same refusal again.
    Refused { status: StatusCode, body: Value },
}

/// The rules for `key` in `scope`, for a request whose body has this `fingerprint` (the claim protocol is
/// [`crate::money::claims`]'), in the contract's words.
pub(super) async fn prior(
    state: &AppState,
    scope: &'static str,
    key: &str,
    fingerprint: &str,
) -> V2Result<Prior> {
    let used_before = state.jobs.gate().forget_used_before();
    let claim = claims::claim(
        state.jobs.store(),
        state.jobs.background(),
        scope,
        key,
        fingerprint,
        &used_before,
    )
    .await
    .map_err(V2Error::internal)?;
    match claim {
        Claim::New(claimed) => Ok(Prior::New(claimed)),
        Claim::Kept { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            Ok(match body["id"].as_str() {
                Some(id) if status.is_success() => Prior::Made {
                    id: id.to_owned(),
                    status,
                },
                _ => Prior::Refused { status, body },
            })
        }
        Claim::Bound(id) => Ok(Prior::Made {
            id,
            status: StatusCode::CREATED,
        }),
        Claim::Reused => Err(V2Error::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::IdempotencyKeyReuse,
            "this Idempotency-Key came before with another body",
        )),
        Claim::InFlight => Err(V2Error::new(
            StatusCode::CONFLICT,
            Code::IdempotencyConflict,
            "a request under this Idempotency-Key is still being answered",
        )
        .retry_after(1)),
    }
}

/// What a claimed key's request came to.
pub(super) enum Outcome<'a> {
    /// It made this job or asset, answered with `status`.
    Made { id: &'a str, status: StatusCode },
    /// It made a job, then was refused: repeats get the refusal, not a second job.
    Refused(&'a V2Error),
    /// It made nothing: the key is given back and a repeat is judged anew.
    Nothing,
}

/// Records a claimed key's outcome (nothing to do without a key).
pub(super) async fn settle(state: &AppState, scope: &str, key: Option<&str>, outcome: Outcome<'_>) {
    let Some(key) = key else {
        return;
    };
    let (made, refusal);
    let settled = match outcome {
        Outcome::Made { id, status } => {
            made = json!({ "id": id });
            Settle::Keep {
                status: status.as_u16(),
                body: &made,
            }
        }
        Outcome::Refused(error) => {
            refusal = error.envelope();
            Settle::Keep {
                status: error.status().as_u16(),
                body: &refusal,
            }
        }
        Outcome::Nothing => Settle::GiveBack,
    };
    claims::settle(state.jobs.store(), scope, key, settled).await;
}

/// Runs a keyed write (claim, work, settle) to its end in a task of its own, whether or not its client waits.
pub(super) async fn detached<F>(state: &AppState, work: F) -> V2Result<Response>
where
    F: Future<Output = V2Result<Response>> + Send + 'static,
{
    state
        .jobs
        .background()
        .spawn(work)
        .await
        .map_err(V2Error::internal)?
}

/// Marks an answer as a repeat's.
pub(super) fn replayed(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("idempotency-replayed", HeaderValue::from_static("true"));
    response
}

/// The first request's refusal, again.
pub(super) fn refusal(status: StatusCode, body: Value) -> Response {
    replayed((status, Json(body)).into_response())
}
