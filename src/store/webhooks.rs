//! The webhook outbox: deliveries owed to `JOB_WEBHOOK_URL`, one per ended job, until the receiver takes them.

use super::{Store, StoreError};

/// Owes the receiver word of job `job_id`'s end, inside the transaction of its final change (a job ends once; a
/// second row for it is not made).
pub(super) async fn owe(
    tx: &mut sqlx::AnyConnection,
    job_id: &str,
    at: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO webhook_outbox (id, job_id, next_at, created_at) VALUES ($1, $2, $3, $3) \
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(job_id)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A delivery waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub job_id: String,
    pub attempts: i64,
    pub next_at: String,
}

impl Store {
    /// Deliveries due by `now`, the longest waiting first.
    pub async fn due_webhooks(&self, now: &str, limit: i64) -> Result<Vec<Delivery>, StoreError> {
        let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
            "SELECT id, job_id, attempts, next_at FROM webhook_outbox \
             WHERE next_at IS NOT NULL AND next_at <= $1 ORDER BY next_at, id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, job_id, attempts, next_at)| Delivery {
                id,
                job_id,
                attempts,
                next_at,
            })
            .collect())
    }

    /// When the next delivery is due, if any is.
    pub async fn next_webhook_at(&self) -> Result<Option<String>, StoreError> {
        let (next,): (Option<String>,) =
            sqlx::query_as("SELECT MIN(next_at) FROM webhook_outbox WHERE next_at IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(next)
    }

    /// Takes `delivery` for this sender until `until`; `false` when another sender took it first (a fleet).
    pub async fn claim_webhook(
        &self,
        delivery: &Delivery,
        until: &str,
    ) -> Result<bool, StoreError> {
        let claimed =
            sqlx::query("UPDATE webhook_outbox SET next_at = $3 WHERE id = $1 AND next_at = $2")
                .bind(&delivery.id)
                .bind(&delivery.next_at)
                .bind(until)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(claimed == 1)
    }

    /// The receiver took it: nothing is owed any more.
    pub async fn webhook_delivered(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM webhook_outbox WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A failed attempt: tried again at `next_at`, or never (`None`: given up).
    pub async fn webhook_failed(
        &self,
        id: &str,
        attempts: i64,
        next_at: Option<&str>,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = $2, next_at = $3, last_error = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(attempts)
        .bind(next_at)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The outbox: how many deliveries wait, and how many were given up.
    pub async fn webhook_backlog(&self) -> Result<(i64, i64), StoreError> {
        let (waiting, given_up): (i64, i64) =
            sqlx::query_as("SELECT COUNT(next_at), COUNT(*) - COUNT(next_at) FROM webhook_outbox")
                .fetch_one(&self.pool)
                .await?;
        Ok((waiting, given_up))
    }
}
