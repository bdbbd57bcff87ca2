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
use crate::app::AppState;
use crate::clock::timestamp as at;
use crate::codes::Code;

use crate::money::keys::WINDOW;

/// A claim with no answer this old was cut off by a crash: a request at work renews its claim every
/// [`RENEW_EVERY`], however long it takes (assets uploaded to a slow ComfyUI, say).
const ABANDONED: TimeDelta = TimeDelta::minutes(2);
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

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

/// The rules for `key` in `scope`, for a request whose body has this `fingerprint`.
pub(super) async fn prior(
    state: &AppState,
    scope: &'static str,
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
            return Ok(Prior::New(keep_claimed(
                store.clone(),
                state.jobs.background(),
                scope,
                key,
                RENEW_EVERY,
            )));
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

/// A claim being renewed; renewal stops when this is dropped.
pub(super) struct Claimed {
    _renewing: tokio_util::sync::DropGuard,
}

/// Renews the claim on `key` every `every` until the answer is dropped (or the server stops).
fn keep_claimed(
    store: crate::store::Store,
    background: &crate::background::Background,
    scope: &'static str,
    key: &str,
    every: std::time::Duration,
) -> Claimed {
    let renewing = tokio_util::sync::CancellationToken::new();
    let (until, key, stopping) = (renewing.clone(), key.to_owned(), background.clone());
    background.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                () = until.cancelled() => return,
                () = stopping.stopping() => return,
                _ = tick.tick() => {
                    if let Err(error) = store.renew_idempotency_claim(scope, &key).await {
                        tracing::warn!(%error, scope, "cannot renew an idempotency key's claim");
                    }
                }
            }
        }
    });
    Claimed {
        _renewing: renewing.drop_guard(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A request still at work long after its claim keeps the claim fresh, so a repeat is told to wait
    /// (`idempotency_conflict`) rather than given the key back and a second job.
    #[tokio::test]
    async fn a_claim_is_renewed_while_its_work_runs_and_no_longer() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let store = crate::store::Store::open(&url).await.unwrap();
        assert!(
            store
                .claim_idempotency_key("v2.jobs", "k", "f")
                .await
                .unwrap()
        );
        let claimed_at = || async {
            let far = "2000-01-01T00:00:00Z";
            store
                .idempotency_record("v2.jobs", "k", far)
                .await
                .unwrap()
                .unwrap()
                .claimed_at
        };
        let first = claimed_at().await;
        let background = crate::background::Background::new();
        let every = std::time::Duration::from_millis(20);
        let claim = keep_claimed(store.clone(), &background, "v2.jobs", "k", every);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while claimed_at().await == first {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the claim was never renewed"
            );
            tokio::task::yield_now().await;
        }
        drop(claim);
        assert!(background.finish(std::time::Duration::from_secs(5)).await);
    }
}
