//! Money: paid jobs reserved against the day's budget (inside a transaction that holds the money lock,
//! `Store::money_transaction`), charges settled, confirmation tokens used once; idempotency keys claimed, renewed,
//! answered and given back (the protocol is `money::claims`'), and bound to their job in the reservation.

use serde_json::Value;
use sqlx::{Any, Transaction};

use super::{NewJob, Store, StoreError};
use crate::clock::now;
use crate::model::{Job, JobStatus};

/// Paid generation: budget reservations and idempotency keys.
impl Store {
    /// Reserves a paid job's price in one transaction, unless the day's budget cannot cover it: a new job is
    /// recorded `queued`, or a job that waited for its approval becomes `queued` (it must still wait). The money
    /// lock is taken before the day's usage is read, so two requests (on PostgreSQL: from any instances) can never
    /// both see the same room left; the token is used up and the request's claimed idempotency key bound to the job
    /// in the same transaction.
    pub async fn reserve_paid_job(&self, paid: PaidJob<'_>) -> Result<Reservation, StoreError> {
        let mut tx = self.money_transaction().await?;
        if let Record::Approve { job_id, .. } = &paid.record {
            let status: Option<(String,)> = sqlx::query_as("SELECT status FROM jobs WHERE id = $1")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
            match status.as_ref().map(|(s,)| JobStatus::parse(s)) {
                Some(Some(JobStatus::AwaitingConfirmation)) => {}
                other => {
                    tx.rollback().await?;
                    return Ok(Reservation::NotAwaiting(other.flatten()));
                }
            }
        }
        let usage = day_usage(&mut *tx, paid.day).await?;
        if usage.spent + usage.reserved + paid.cost_micros > paid.budget_micros {
            tx.rollback().await?;
            return Ok(Reservation::OverBudget(usage));
        }
        let created = now();
        let id = match paid.record {
            Record::New { job, approval } => {
                self.insert_reserved(&mut tx, job, approval, paid.cost_micros, &created)
                    .await?
            }
            Record::Approve { job_id, approval } => {
                sqlx::query(
                    "UPDATE jobs SET status = 'queued', cost_micros = $2, approval = $3 WHERE id = $1",
                )
                .bind(job_id)
                .bind(paid.cost_micros)
                .bind(approval.to_string())
                .execute(&mut *tx)
                .await?;
                job_id.to_owned()
            }
        };
        sqlx::query(
            "INSERT INTO charges (job_id, day, amount_micros, state, updated_at) VALUES ($1, $2, $3, 'reserved', $4)",
        )
        .bind(&id)
        .bind(paid.day)
        .bind(paid.cost_micros)
        .bind(&created)
        .execute(&mut *tx)
        .await?;
        if !use_token(&mut tx, paid.token_id, &id, &created).await? {
            tx.rollback().await?;
            return Ok(Reservation::TokenUsed);
        }
        if let Some(claim) = paid.idempotency
            && !bind_key(&mut tx, &claim, &id).await?
        {
            tx.rollback().await?;
            return Ok(Reservation::KeyLost);
        }
        tx.commit().await?;
        let job = self
            .job(&id)
            .await?
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))?;
        Ok(Reservation::Reserved(Box::new(job)))
    }

    /// A new paid job's row, `queued` with its price, claimed as any job this instance sends; answers its id.
    async fn insert_reserved(
        &self,
        tx: &mut Transaction<'static, Any>,
        new: NewJob<'_>,
        approval: Option<&Value>,
        cost_micros: i64,
        created: &str,
    ) -> Result<String, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let (claimed_by, lease_until) = self.claim_for(new.backend, new.backend_url);
        sqlx::query(
            "INSERT INTO jobs (id, backend, status, prompt, params, template, created_at, backend_url, cost_micros, \
                               approval, claimed_by, lease_until, prompt_text) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&id)
        .bind(new.backend.as_str())
        .bind(new.workflow.to_string())
        .bind(new.params.to_string())
        .bind(new.template)
        .bind(created)
        .bind(new.backend_url)
        .bind(cost_micros)
        .bind(approval.map(Value::to_string))
        .bind(claimed_by)
        .bind(lease_until)
        .bind(crate::model::prompt_text(new.params, new.workflow))
        .execute(&mut **tx)
        .await?;
        Ok(id)
    }

    /// A reserved charge becomes `spent` once the provider took the task (a task it certainly did not take is
    /// released by [`Store::release_paid_job`]). A charge already settled stays as it is.
    pub async fn mark_charge_spent(&self, job_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE charges SET state = 'spent', updated_at = $2 WHERE job_id = $1 AND state = 'reserved'",
        )
        .bind(job_id)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A paid job the provider certainly did not start: its price, its idempotency key and its confirmation token
    /// are given back, so the very same request can be tried again.
    pub async fn release_paid_job(&self, job_id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE charges SET state = 'released', updated_at = $2 WHERE job_id = $1 AND state = 'reserved'",
        )
        .bind(job_id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM idempotency_keys WHERE job_id = $1")
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM used_confirmations WHERE job_id = $1")
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What the day's paid jobs spent and hold reserved, in millionths of a dollar.
    pub async fn budget_usage(&self, day: &str) -> Result<BudgetUsage, StoreError> {
        day_usage(&self.pool, day).await
    }

    /// The record of an idempotency key younger than `since`, if one was claimed.
    pub async fn idempotency_record(
        &self,
        scope: &str,
        key: &str,
        since: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row: Option<IdempotencyRow> = sqlx::query_as(
            "SELECT fingerprint, job_id, response_status, response_body, created_at FROM idempotency_keys \
             WHERE scope = $1 AND key = $2 AND created_at >= $3",
        )
        .bind(scope)
        .bind(key)
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(fingerprint, job_id, status, body, claimed_at)| IdempotencyRecord {
                fingerprint,
                job_id,
                claimed_at,
                response: status.zip(body).and_then(|(status, body)| {
                    Some((
                        u16::try_from(status).ok()?,
                        serde_json::from_str(&body).ok()?,
                    ))
                }),
            },
        ))
    }

    /// Forgets keys older than `before`, so a key can be used again after its window, and the records of
    /// confirmation tokens used before `used_before` (by then every token they could be has expired: see
    /// `Confirmer::forget_used_before`).
    pub async fn prune_idempotency_keys(
        &self,
        before: &str,
        used_before: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM used_confirmations WHERE used_at < $1")
            .bind(used_before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims an idempotency key before its request is carried out; `false` when it is claimed already (a
    /// repeat, or one racing this one).
    pub async fn claim_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
    ) -> Result<bool, StoreError> {
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(fingerprint)
        .bind(crate::clock::now())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    /// Gives a claimed key back: its request made nothing (or, with `claimed_before`, was cut off by a crash
    /// before it was claimed), so a repeat may try again. A key with an answer is never given back.
    pub async fn release_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        claimed_before: Option<&str>,
    ) -> Result<(), StoreError> {
        // Without `claimed_before`, every claim is older than a time after all of them.
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 \
             AND job_id IS NULL AND response_status IS NULL AND created_at < $3",
        )
        .bind(scope)
        .bind(key)
        .bind(claimed_before.map_or_else(|| "9999".to_owned(), str::to_owned))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Renews the claim on a key whose request is still being carried out, so it is not taken as abandoned.
    pub async fn renew_idempotency_claim(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET created_at = $3 \
             WHERE scope = $1 AND key = $2 AND response_status IS NULL",
        )
        .bind(scope)
        .bind(key)
        .bind(crate::clock::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keeps the answer a key's first request got, for its repeats.
    pub async fn record_idempotent_response(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET response_status = $3, response_body = $4 WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .bind(i64::from(status))
        .bind(body.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// fingerprint, job id, response status, response body, when it was claimed.
type IdempotencyRow = (String, Option<String>, Option<i64>, Option<String>, String);

/// The day's spent and reserved sums, on the pool or inside a transaction.
/// Records a confirmation token as used by `job_id`; `false` when it already paid for a job.
pub(super) async fn use_token(
    tx: &mut sqlx::AnyConnection,
    token_id: &str,
    job_id: &str,
    at: &str,
) -> Result<bool, StoreError> {
    let taken = sqlx::query(
        "INSERT INTO used_confirmations (token_id, job_id, used_at) VALUES ($1, $2, $3) \
         ON CONFLICT (token_id) DO NOTHING",
    )
    .bind(token_id)
    .bind(job_id)
    .bind(at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(taken == 1)
}

/// Binds a claimed idempotency key to the job its request made, so a repeat is answered with that job whatever
/// happens next; `false` when the claim is no longer this request's (it went unrenewed past its time and was
/// given to another).
async fn bind_key(
    tx: &mut sqlx::AnyConnection,
    claim: &IdempotencyClaim<'_>,
    job_id: &str,
) -> Result<bool, StoreError> {
    let bound = sqlx::query(
        "UPDATE idempotency_keys SET job_id = $3 \
         WHERE scope = $1 AND key = $2 AND fingerprint = $4 AND job_id IS NULL AND response_status IS NULL",
    )
    .bind(claim.scope)
    .bind(claim.key)
    .bind(job_id)
    .bind(claim.fingerprint)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(bound == 1)
}

pub(super) async fn day_usage<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    day: &str,
) -> Result<BudgetUsage, StoreError> {
    let (spent, reserved): (i64, i64) = sqlx::query_as(
        // CAST: PostgreSQL sums BIGINTs as NUMERIC.
        "SELECT CAST(COALESCE(SUM(CASE WHEN state = 'spent' THEN amount_micros END), 0) AS BIGINT), \
                CAST(COALESCE(SUM(CASE WHEN state = 'reserved' THEN amount_micros END), 0) AS BIGINT) \
         FROM charges WHERE day = $1",
    )
    .bind(day)
    .fetch_one(executor)
    .await?;
    Ok(BudgetUsage { spent, reserved })
}

/// A paid job to record, with its price and the budget it must fit in.
/// What a paid job's reservation records.
pub enum Record<'a> {
    /// A new job, with the paid nodes and the estimate a person approved (a ComfyUI workflow).
    New {
        job: NewJob<'a>,
        approval: Option<&'a Value>,
    },
    /// The approval of a job that waits for one (a prompt parked at the gateway).
    Approve {
        job_id: &'a str,
        approval: &'a Value,
    },
}

pub struct PaidJob<'a> {
    pub record: Record<'a>,
    pub cost_micros: i64,
    /// The UTC day the price counts against, `YYYY-MM-DD`.
    pub day: &'a str,
    pub budget_micros: i64,
    pub idempotency: Option<IdempotencyClaim<'a>>,
    /// The confirmation token's id: recorded, so it pays once.
    pub token_id: &'a str,
}

/// An idempotency key this request claimed ([`Store::claim_idempotency_key`]), bound to its job when reserved.
pub struct IdempotencyClaim<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    /// The claiming request's: a claim lost meanwhile to a request with another body is never bound.
    pub fingerprint: &'a str,
}

pub enum Reservation {
    Reserved(Box<Job>),
    OverBudget(BudgetUsage),
    /// The confirmation token already paid for a job.
    TokenUsed,
    /// The request's claim on its idempotency key was lost (unrenewed past its time, and claimed by another).
    KeyLost,
    /// The job to approve does not wait for an approval (any more): its status now.
    NotAwaiting(Option<JobStatus>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetUsage {
    pub spent: i64,
    pub reserved: i64,
}

#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub fingerprint: String,
    pub job_id: Option<String>,
    /// When the key was claimed (RFC 3339, UTC).
    pub claimed_at: String,
    /// The status and body the first request was answered with, once known.
    pub response: Option<(u16, Value)>,
}
