//! Stripe's `Idempotency-Key` rules for the v2 writes that make something (a job, an asset): the same key and body
//! is answered as the first time (`Idempotency-Replayed: true`), another body is `idempotency_key_reuse`, a repeat
//! while the first is being answered `idempotency_conflict` with `Retry-After`.
//!
//! The handlers claim a key, do the work and settle the key in a task of their own, so a client that hangs up in
//! between cannot leave a key claimed with nothing to answer its repeats with; only a crash can, and such a claim
//! is given back once it is [`ABANDONED`].

use axum::Json;
use axum::response::{IntoResponse, Response};
use chrono::{TimeDelta, Utc};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};

use super::{V2Error, V2Result};
use crate::AppState;
use crate::codes::Code;
use crate::jobs::model::timestamp as at;

/// Keys are remembered a day, as the contract says.
const WINDOW: TimeDelta = TimeDelta::hours(24);
/// A claim with no answer this old was cut off by a crash: the work it guarded takes seconds.
const ABANDONED: TimeDelta = TimeDelta::minutes(2);

/// A request's `Idempotency-Key`: 1 to 255 printable ASCII characters.
pub(super) fn key_of(headers: &HeaderMap) -> V2Result<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(V2Error::invalid(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        )),
    }
}

/// What a key's first request was answered with.
pub(super) enum Prior {
    /// The key is new, and now claimed for this request, which [`settle`]s it.
    New,
    /// The first request made this job or asset, and was answered with this status.
    Made { id: String, status: StatusCode },
    /// The first request made a job and was refused (ComfyUI refused the workflow): the same refusal again.
    Refused { status: StatusCode, body: Value },
}

/// The rules for `key` in `scope`, for a request whose body has this `fingerprint`.
pub(super) async fn prior(
    state: &AppState,
    scope: &str,
    key: &str,
    fingerprint: &str,
) -> V2Result<Prior> {
    let store = state.jobs.store();
    let now = Utc::now();
    let since = at(now - WINDOW);
    for _ in 0..3 {
        if store
            .claim_idempotency_key(scope, key, fingerprint)
            .await
            .map_err(V2Error::internal)?
        {
            return Ok(Prior::New);
        }
        let Some(record) = store
            .idempotency_record(scope, key, &since)
            .await
            .map_err(V2Error::internal)?
        else {
            // Claimed longer ago than the window: forgotten now, then claimed anew.
            store
                .prune_idempotency_keys(&since, &state.jobs.gate().forget_used_before())
                .await
                .map_err(V2Error::internal)?;
            continue;
        };
        if record.fingerprint != fingerprint {
            return Err(V2Error::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                Code::IdempotencyKeyReuse,
                "this Idempotency-Key came before with another body",
            ));
        }
        match record.response {
            Some((status, body)) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                return Ok(match body["id"].as_str() {
                    Some(id) if status.is_success() => Prior::Made {
                        id: id.to_owned(),
                        status,
                    },
                    _ => Prior::Refused { status, body },
                });
            }
            None if record.claimed_at < at(now - ABANDONED) => {
                store
                    .release_idempotency_key(scope, key, Some(&at(now - ABANDONED)))
                    .await
                    .map_err(V2Error::internal)?;
            }
            None => {
                return Err(V2Error::new(
                    StatusCode::CONFLICT,
                    Code::IdempotencyConflict,
                    "a request under this Idempotency-Key is still being answered",
                )
                .retry_after(1));
            }
        }
    }
    Err(V2Error::internal("an idempotency key could not be claimed"))
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
    let store = state.jobs.store();
    let done = match outcome {
        Outcome::Made { id, status } => {
            store
                .record_idempotent_response(scope, key, status.as_u16(), &json!({ "id": id }))
                .await
        }
        Outcome::Refused(error) => {
            store
                .record_idempotent_response(scope, key, error.status().as_u16(), &error.envelope())
                .await
        }
        Outcome::Nothing => store.release_idempotency_key(scope, key, None).await,
    };
    if let Err(error) = done {
        tracing::error!(%error, scope, "cannot settle an idempotency key");
    }
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
