//! The checkout: the one sequence every paid request passes, whatever its provider (FLUX, ComfyUI's paid nodes,
//! the confirmation of a parked prompt). Detached from the request, so a client that hangs up cannot cut it short:
//!
//! key claimed (or the answer a repeat gets) → the confirmation token → the reservation (budget, job, charge, token
//! used, key bound to the job: one transaction) → the provider's send → the answer kept for repeats (or the key
//! given back when nothing was made).
//!
//! The provider's part is a [`Purchase`]: how its token is checked and refused, what its reservation records, how
//! it sends (and settles its charge: spent, released, or kept reserved when the outcome is unknown) and which of
//! its answers a repeat gets back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use super::claims::{self, Claim, Claimed, Settle};
use super::confirm::Confirmer;
use super::refusal::Refusal;
use super::usd;
use crate::background::Background;
use crate::clock::{backoff, today};
use crate::model::Job;
use crate::store::{IdempotencyClaim, PaidJob, Record, Reservation, Store, StoreError};

/// How long a repeat waits for the first request under its key to make its job or be answered.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(30);
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const LONGEST_PAUSE: Duration = Duration::from_millis(500);

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
    confirmer: Arc<Confirmer>,
    background: Background,
    budget_micros: i64,
    in_flight_wait: Duration,
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
            confirmer,
            background,
            budget_micros,
            in_flight_wait: IN_FLIGHT_WAIT,
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
                    Some(key) => this.keyed(&order, &key, &mut purchase).await,
                }
            })
            .await?
    }

    /// The claim-first sequence ([`claims`]): a repeat gets the first answer; a new request's answer is kept, and
    /// a request that made nothing gives its key back.
    async fn keyed<P: Purchase>(
        &self,
        order: &Order,
        key: &str,
        purchase: &mut P,
    ) -> Result<Paid<P::Answer>, P::Error> {
        // Held (the claim renewed) until the key is settled.
        let _claimed = match self.claim::<_, P::Error>(order, key).await? {
            Ok(claimed) => claimed,
            Err(replay) => return Ok(replay),
        };
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
        // A failure to keep it is logged, not answered: the money has moved, and the key, bound to its job, still
        // answers a repeat with that job.
        let outcome = match &kept {
            Some((status, body)) => Settle::Keep {
                status: status.as_u16(),
                body,
            },
            None => Settle::GiveBack,
        };
        claims::settle(&self.store, order.scope, key, outcome).await;
        answer
    }

    /// Claims `key` for this request, or finds the answer a repeat gets: the kept answer, or the job the first
    /// request made. While the first request has neither (it is being judged, on this instance or another), this
    /// one waits for it, as a repeat of a paid request gets the first one's job rather than a refusal; for at
    /// most [`IN_FLIGHT_WAIT`] (a claim cut off by a crash is given back once [`claims::ABANDONED`]).
    async fn claim<A, E>(&self, order: &Order, key: &str) -> Result<Result<Claimed, Paid<A>>, E>
    where
        E: From<Refusal> + From<StoreError>,
    {
        let deadline = tokio::time::Instant::now() + self.in_flight_wait;
        let (store, background) = (&self.store, &self.background);
        let (scope, fingerprint) = (order.scope, order.fingerprint.as_str());
        let used_before = self.confirmer.forget_used_before();
        for attempt in 1.. {
            let claim = if attempt == 1 {
                claims::claim(store, background, scope, key, fingerprint, &used_before).await
            } else {
                claims::attempt(store, background, scope, key, fingerprint).await
            };
            match claim? {
                Claim::New(claimed) => return Ok(Ok(claimed)),
                Claim::Kept { status, body } => {
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
                    return Ok(Err(Paid::Replayed(status, body)));
                }
                Claim::Bound(job_id) => return Ok(Err(self.replay_job(&job_id).await?)),
                Claim::Reused => return Err(Refusal::IdempotencyKeyReused.into()),
                Claim::InFlight if tokio::time::Instant::now() < deadline => {
                    let pause = backoff(FIRST_PAUSE, attempt, LONGEST_PAUSE);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = self.background.stopping() => break,
                    }
                }
                Claim::InFlight => break,
            }
        }
        Err(Refusal::KeyInFlight.into())
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
            Reservation::KeyLost => return Err(Refusal::KeyInFlight.into()),
            Reservation::NotAwaiting(status) => {
                let status = status.map_or("gone", |s| s.as_str());
                return Err(Refusal::NotAwaitingConfirmation { status }.into());
            }
        };
        purchase.send(job).await.map(Paid::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::model::Backend;
    use crate::store::NewJob;

    #[derive(Debug, thiserror::Error)]
    enum Failed {
        #[error(transparent)]
        Refused(#[from] Refusal),
        #[error(transparent)]
        Store(#[from] StoreError),
        #[error(transparent)]
        Join(#[from] tokio::task::JoinError),
    }

    /// A purchase that counts how often it was judged; a repeat must never be.
    struct Counted(Arc<AtomicUsize>, Value);

    impl Purchase for Counted {
        type Answer = Job;
        type Error = Failed;

        async fn prepare(&mut self) -> Result<Prepared, Failed> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(Refusal::invalid("test", "a repeat is never judged").into())
        }

        async fn token_used(&self) -> Failed {
            Refusal::invalid("test", "unreachable").into()
        }

        fn record(&self) -> Record<'_> {
            let job = NewJob {
                backend: Backend::Flux,
                template: None,
                params: &self.1,
                workflow: &self.1,
                backend_url: None,
            };
            Record::New {
                job,
                approval: None,
            }
        }

        async fn send(&self, job: Job) -> Result<Job, Failed> {
            Ok(job)
        }

        fn keep(_: Result<&Job, &Failed>) -> Option<(StatusCode, Value)> {
            None
        }
    }

    /// A checkout whose repeats wait `in_flight_wait`, and key `k` claimed by a request on another instance.
    async fn claimed_elsewhere(
        in_flight_wait: Duration,
    ) -> (tempfile::TempDir, Store, Arc<Checkout>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let store = Store::open(&url).await.unwrap();
        let confirmer = Arc::new(Confirmer::new(Duration::from_secs(600)));
        let mut checkout = Checkout::new(store.clone(), confirmer, Background::new(), 5_000_000);
        checkout.in_flight_wait = in_flight_wait;
        let claimed = store.claim_idempotency_key("flux.generate", "k", "f");
        assert!(claimed.await.unwrap());
        (dir, store, Arc::new(checkout))
    }

    fn order() -> Order {
        Order {
            scope: "flux.generate",
            key: Some("k".into()),
            fingerprint: "f".into(),
        }
    }

    /// A key another instance claimed and is still judging: the repeat waits, is told to try again, and is never
    /// judged itself (it would pay a second time).
    #[tokio::test]
    async fn a_repeat_waits_for_the_first_request_then_is_told_to_come_back() {
        let (_dir, _store, checkout) = claimed_elsewhere(Duration::from_millis(300)).await;
        let judged = Arc::new(AtomicUsize::new(0));
        let purchase = Counted(judged.clone(), json!({}));
        let answer = checkout.pay(order(), purchase).await;
        assert!(matches!(answer, Err(Failed::Refused(Refusal::KeyInFlight))));
        assert_eq!(judged.load(Ordering::SeqCst), 0);
    }

    /// Once the first request has made its job, a repeat waiting for it is answered with that job.
    #[tokio::test]
    async fn a_waiting_repeat_is_answered_with_the_job_the_first_request_made() {
        let (_dir, store, checkout) = claimed_elsewhere(Duration::from_secs(30)).await;
        let judged = Arc::new(AtomicUsize::new(0));
        let repeat = {
            let (checkout, purchase) = (checkout.clone(), Counted(judged.clone(), json!({})));
            tokio::spawn(async move { checkout.pay(order(), purchase).await })
        };
        let first = Counted(judged.clone(), json!({}));
        let paid = PaidJob {
            record: first.record(),
            cost_micros: 1,
            day: "2026-12-07",
            budget_micros: 5_000_000,
            idempotency: Some(IdempotencyClaim {
                scope: "flux.generate",
                key: "k",
                fingerprint: "f",
            }),
            token_id: "t",
        };
        let Reservation::Reserved(job) = store.reserve_paid_job(paid).await.unwrap() else {
            panic!("the first request reserves");
        };
        match repeat.await.unwrap() {
            Ok(Paid::Replayed(status, body)) => {
                assert_eq!(
                    (status, &body["id"]),
                    (StatusCode::ACCEPTED, &json!(job.id))
                );
            }
            _ => panic!("the repeat is answered with the first request's job"),
        }
        assert_eq!(judged.load(Ordering::SeqCst), 0);
    }
}
