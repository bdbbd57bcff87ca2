//! Claim-first `Idempotency-Key`s (Stripe's rules, the v2 API's protocol): a key is claimed in the store before
//! the work starts, so a repeat finds the first request's answer, or that it is still being answered, on any
//! instance. A claim is renewed while its work runs ([`RENEW_EVERY`]); one a crash left unanswered is given back
//! once it is [`ABANDONED`].

use chrono::{TimeDelta, Utc};
use serde_json::Value;

use super::keys::WINDOW;
use crate::background::Background;
use crate::clock::timestamp as at;
use crate::store::{Store, StoreError};

/// A claim with no answer this old was cut off by a crash: a request at work renews its claim every
/// [`RENEW_EVERY`], however long it takes (assets uploaded to a slow ComfyUI, say).
pub const ABANDONED: TimeDelta = TimeDelta::minutes(2);
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

/// What a key is, for a request with this fingerprint.
pub enum Claim {
    /// New, and now this request's; renewed while the [`Claimed`] is held, until it is [`settle`]d.
    New(Claimed),
    /// The first request's kept answer.
    Kept { status: u16, body: Value },
    /// The first request made this job and has no answer kept (it is still being answered, or was cut off after
    /// its job was recorded): the job is the answer.
    Bound(String),
    /// The key came before with another body.
    Reused,
    /// The first request is still being answered (or the key is contended): try again shortly.
    InFlight,
}

/// Claims `key` in `scope` for a request whose body has this `fingerprint`. Keys past their window are forgotten
/// first, so such a key is claimed anew, and with them the confirmation tokens used before `used_before`.
pub async fn claim(
    store: &Store,
    background: &Background,
    scope: &'static str,
    key: &str,
    fingerprint: &str,
    used_before: &str,
) -> Result<Claim, StoreError> {
    let since = at(Utc::now() - WINDOW);
    if let Err(error) = store.prune_idempotency_keys(&since, used_before).await {
        tracing::warn!(%error, "cannot forget old idempotency keys");
    }
    attempt(store, background, scope, key, fingerprint).await
}

/// [`claim`] again, for a repeat that found the key [`Claim::InFlight`] (nothing is forgotten this time).
pub async fn attempt(
    store: &Store,
    background: &Background,
    scope: &'static str,
    key: &str,
    fingerprint: &str,
) -> Result<Claim, StoreError> {
    let now = Utc::now();
    let since = at(now - WINDOW);
    for _ in 0..3 {
        if store.claim_idempotency_key(scope, key, fingerprint).await? {
            let claimed = keep_claimed(store.clone(), background, scope, key, RENEW_EVERY);
            return Ok(Claim::New(claimed));
        }
        let Some(record) = store.idempotency_record(scope, key, &since).await? else {
            // Given back (or forgotten) meanwhile: claimed anew.
            continue;
        };
        if record.fingerprint != fingerprint {
            return Ok(Claim::Reused);
        }
        match (record.response, record.job_id) {
            (Some((status, body)), _) => return Ok(Claim::Kept { status, body }),
            (None, Some(job_id)) => return Ok(Claim::Bound(job_id)),
            (None, None) if record.claimed_at < at(now - ABANDONED) => {
                store
                    .release_idempotency_key(scope, key, Some(&at(now - ABANDONED)))
                    .await?;
            }
            (None, None) => return Ok(Claim::InFlight),
        }
    }
    Ok(Claim::InFlight)
}

/// A claim being renewed; renewal stops when this is dropped.
pub struct Claimed {
    _renewing: tokio_util::sync::DropGuard,
}

/// Renews the claim on `key` every `every` until the answer is dropped (or the server stops).
fn keep_claimed(
    store: Store,
    background: &Background,
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
pub enum Settle<'a> {
    /// Its answer, for repeats.
    Keep { status: u16, body: &'a Value },
    /// It made nothing: the key is given back and a repeat is judged anew.
    GiveBack,
}

/// Records a claimed key's outcome.
pub async fn settle(store: &Store, scope: &str, key: &str, outcome: Settle<'_>) {
    let done = match outcome {
        Settle::Keep { status, body } => {
            store
                .record_idempotent_response(scope, key, status, body)
                .await
        }
        Settle::GiveBack => store.release_idempotency_key(scope, key, None).await,
    };
    if let Err(error) = done {
        tracing::error!(%error, scope, "cannot settle an idempotency key");
    }
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
