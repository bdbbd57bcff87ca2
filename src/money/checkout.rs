//! The checkout: the one sequence every paid request passes, whatever its provider (FLUX, ComfyUI's paid nodes,
//! the confirmation of a parked prompt). Detached from the request, so a client that hangs up cannot cut it short:
//!
//! key's lock → the answer a repeat gets → the confirmation token → the reservation (budget, job, charge, token
//! used, key claimed: one transaction) → the provider's send → the answer kept for repeats.
//!
//! The provider's part is a [`Purchase`]: how its token is checked and refused, what its reservation records, how
//! it sends (and settles its charge: spent, released, or kept reserved when the outcome is unknown) and which of
//! its answers a repeat gets back.

use std::future::Future;
use std::sync::Arc;

use http::StatusCode;
use serde_json::{Value, json};

use super::confirm::Confirmer;
use super::keys::{KeyLocks, WINDOW};
use super::refusal::Refusal;
use super::usd;
use crate::background::Background;
use crate::clock::{timestamp, today};
use crate::model::Job;
use crate::store::{IdempotencyClaim, PaidJob, Record, Reservation, Store, StoreError};

/// A paid request under its `Idempotency-Key`, when it has one.
pub struct Order {
    /// Which kind of request the key is for (`jobs.submit`, `flux.generate`, …): one key may serve each once.
    pub scope: &'static str,
    pub key: Option<String>,
    /// [`super::keys::fingerprint`] of the request's canonical text.
    pub fingerprint: String,
}

/// A paid request found ready to pay for: its price, and the confirmation token that pays it.
pub struct Prepared {
    pub price_micros: i64,
    pub token_id: String,
}

/// How a paid request was answered.
pub enum Paid<A> {
    Done(A),
    /// A repeat under an `Idempotency-Key`: the first answer.
    Replayed(StatusCode, Value),
}

/// The provider's half of a paid request.
pub trait Purchase: Send + Sync + 'static {
    type Answer: Send + 'static;
    type Error: From<Refusal> + From<StoreError> + From<tokio::task::JoinError> + Send + 'static;

    /// Its price and the id of the confirmation token that pays it, or the refusal in this surface's words. Runs
    /// after a repeat's answer was looked for (a repeat is answered as the first request was, whatever changed
    /// since), before anything is reserved.
    fn prepare(&mut self) -> impl Future<Output = Result<Prepared, Self::Error>> + Send;

    /// The refusal for a token found, in the reservation's transaction, to have paid already.
    fn token_used(&self) -> impl Future<Output = Self::Error> + Send;

    /// What the reservation records: a new job, or the approval of a waiting one.
    fn record(&self) -> Record<'_>;

    /// Sends the reserved job and settles its charge.
    fn send(&self, job: Job) -> impl Future<Output = Result<Self::Answer, Self::Error>> + Send;

    /// The answer a repeat under the key gets, when this one is to be kept: an accepted request's, and one whose
    /// outcome is unknown (it must never be sent again). A request refused before anything was sent keeps nothing.
    fn keep(answer: Result<&Self::Answer, &Self::Error>) -> Option<(StatusCode, Value)>;
}

/// The day's budget as it stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetNow {
    pub limit: f64,
    pub spent: f64,
    pub reserved: f64,
    pub left: f64,
}

pub struct Checkout {
    store: Store,
    locks: KeyLocks,
    confirmer: Arc<Confirmer>,
    background: Background,
    budget_micros: i64,
}

impl Checkout {
    pub fn new(
        store: Store,
        confirmer: Arc<Confirmer>,
        background: Background,
        budget_micros: i64,
    ) -> Self {
        Self {
            store,
            locks: KeyLocks::default(),
            confirmer,
            background,
            budget_micros,
        }
    }

    /// The confirmation tokens every paid provider issues and checks.
    pub fn confirmer(&self) -> &Confirmer {
        &self.confirmer
    }

    /// The day's budget (shared by every provider), for dry runs and `GET /api/flux/budget`.
    pub async fn budget(&self, day: &str) -> Result<BudgetNow, StoreError> {
        let usage = self.store.budget_usage(day).await?;
        let limit = self.budget_micros;
        Ok(BudgetNow {
            limit: usd(limit),
            spent: usd(usage.spent),
            reserved: usd(usage.reserved),
            left: usd((limit - usage.spent - usage.reserved).max(0)),
        })
    }

    /// Runs `purchase` through the checkout, on a task of its own.
    pub async fn pay<P: Purchase>(
        self: &Arc<Self>,
        order: Order,
        mut purchase: P,
    ) -> Result<Paid<P::Answer>, P::Error> {
        let this = self.clone();
        self.background
            .spawn(async move {
                match order.key.clone() {
                    None => this.reserve_and_send(&mut purchase, None).await,
                    Some(key) => {
                        // One lock per key and scope: a key is its scope's (v1's and FLUX's are two).
                        let lock = format!("{}\n{key}", order.scope);
                        let keyed = this.keyed(&order, &key, &mut purchase);
                        this.locks.with(&lock, keyed).await
                    }
                }
            })
            .await?
    }

    /// The sequence under the key's lock: a repeat gets the first answer; a new request's answer is kept.
    async fn keyed<P: Purchase>(
        &self,
        order: &Order,
        key: &str,
        purchase: &mut P,
    ) -> Result<Paid<P::Answer>, P::Error> {
        if let Some(replay) = self.prior::<_, P::Error>(order, key).await? {
            return Ok(replay);
        }
        let claim = IdempotencyClaim {
            scope: order.scope,
            key,
            fingerprint: &order.fingerprint,
        };
        let answer = self.reserve_and_send(purchase, Some(claim)).await;
        let kept = match &answer {
            Ok(Paid::Done(done)) => P::keep(Ok(done)),
            Ok(Paid::Replayed(..)) => None,
            Err(error) => P::keep(Err(error)),
        };
        // A failure to keep it is logged, not answered: the money has moved, and the key, claimed with its job,
        // still answers a repeat with that job.
        if let Some((status, body)) = kept
            && let Err(error) = self
                .store
                .record_idempotent_response(order.scope, key, status.as_u16(), &body)
                .await
        {
            tracing::error!(scope = order.scope, %error, "cannot keep the answer of an idempotent request");
        }
        answer
    }

    /// What a repeat under `key` is answered with: the kept answer, or the job the first request made before it
    /// was cut off (a crash). Another body under the key is refused. Keys and used tokens past their time are
    /// forgotten when a key is new.
    async fn prior<A, E>(&self, order: &Order, key: &str) -> Result<Option<Paid<A>>, E>
    where
        E: From<Refusal> + From<StoreError>,
    {
        let since = timestamp(chrono::Utc::now() - WINDOW);
        let Some(record) = self
            .store
            .idempotency_record(order.scope, key, &since)
            .await?
        else {
            let used_before = self.confirmer.forget_used_before();
            if let Err(error) = self
                .store
                .prune_idempotency_keys(&since, &used_before)
                .await
            {
                tracing::warn!(%error, "cannot forget old idempotency keys");
            }
            return Ok(None);
        };
        if record.fingerprint != order.fingerprint {
            return Err(Refusal::IdempotencyKeyReused.into());
        }
        if let Some((status, body)) = record.response {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            return Ok(Some(Paid::Replayed(status, body)));
        }
        match record.job_id {
            Some(id) => Ok(Some(self.replay_job(&id).await?)),
            None => Ok(None),
        }
    }

    /// The answer of a request that made job `id`: the job as it is now.
    async fn replay_job<A>(&self, id: &str) -> Result<Paid<A>, StoreError> {
        let job = self
            .store
            .job(id)
            .await?
            .ok_or(StoreError::Gone("the job of an idempotency key"))?;
        let body = json!({ "id": job.id, "status": job.status });
        Ok(Paid::Replayed(StatusCode::ACCEPTED, body))
    }

    async fn reserve_and_send<P: Purchase>(
        &self,
        purchase: &mut P,
        claim: Option<IdempotencyClaim<'_>>,
    ) -> Result<Paid<P::Answer>, P::Error> {
        let Prepared {
            price_micros,
            token_id,
        } = purchase.prepare().await?;
        let day = today();
        let paid = PaidJob {
            record: purchase.record(),
            cost_micros: price_micros,
            day: &day,
            budget_micros: self.budget_micros,
            idempotency: claim,
            token_id: &token_id,
        };
        let job = match self.store.reserve_paid_job(paid).await? {
            Reservation::Reserved(job) => *job,
            Reservation::OverBudget(usage) => {
                let refusal = Refusal::budget_exceeded(
                    price_micros,
                    self.budget_micros,
                    usage.spent,
                    usage.reserved,
                );
                return Err(refusal.into());
            }
            Reservation::TokenUsed => return Err(purchase.token_used().await),
            Reservation::KeyReused => return Err(Refusal::IdempotencyKeyReused.into()),
            // A repeat that raced the first request (from another instance): the first request's job answers.
            Reservation::KeyClaimed(job_id) => {
                let id = job_id.unwrap_or_default();
                return Ok(self.replay_job(&id).await?);
            }
            Reservation::NotAwaiting(status) => {
                let status = status.map_or("gone", |s| s.as_str());
                return Err(Refusal::NotAwaitingConfirmation { status }.into());
            }
        };
        purchase.send(job).await.map(Paid::Done)
    }
}
