//! The Comfy.org egress's records: the key a job's calls come with (kept as its hash), each call priced and counted
//! against the job's cap under the money lock (so two calls, on any instances, never both see the same room left),
//! then settled at what Comfy.org reported, at its estimate, or refunded.

use sqlx::Row;

use super::{Store, StoreError};
use crate::clock::now;
use crate::model::JobStatus;

/// What the egress may do with one call.
#[derive(Debug, PartialEq, Eq)]
pub enum Metered {
    /// No job has this key.
    UnknownKey,
    /// The key's job has ended: its keys open nothing any more.
    Ended,
    /// The call would take the job past its cap; nothing was counted.
    OverCap {
        job_id: String,
        spent_micros: i64,
        cap_micros: i64,
    },
    /// Counted at its estimate; settle it with [`Store::settle_egress_call`] once Comfy.org has answered.
    Admitted { call_id: String },
}

/// How a counted call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Comfy.org took it and said what it cost.
    Reported(i64),
    /// Comfy.org took it, or may have (no answer): it stays at its estimate.
    Estimated,
    /// Comfy.org refused it: it cost nothing.
    Refunded,
}

impl Store {
    /// Gives a job the hash of the key its calls will carry (a new send replaces an older key).
    pub async fn set_egress_key(&self, job_id: &str, key_hash: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET egress_key_hash = $2 WHERE id = $1")
            .bind(job_id)
            .bind(key_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The job a key belongs to, while that job has not ended (a free call, such as a poll, needs no more).
    pub async fn running_job_of_egress_key(
        &self,
        key_hash: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM jobs WHERE egress_key_hash = $1 \
               AND status NOT IN ('succeeded', 'failed', 'cancelled', 'backend_lost')",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(id,)| id))
    }

    /// Prices one call of the job holding `key_hash` against its cap, in one transaction under the money lock:
    /// admitted (the job's spend grows by the estimate at once) or refused.
    pub async fn meter_egress_call(
        &self,
        key_hash: &str,
        route: &str,
        estimate_micros: i64,
    ) -> Result<Metered, StoreError> {
        let mut tx = self.money_transaction().await?;
        let row = sqlx::query(
            "SELECT id, status, COALESCE(cost_micros, 0) AS cap, COALESCE(actual_cost_micros, 0) AS spent \
             FROM jobs WHERE egress_key_hash = $1",
        )
        .bind(key_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(Metered::UnknownKey);
        };
        let job_id: String = row.get("id");
        let status: String = row.get("status");
        let (cap_micros, spent_micros): (i64, i64) = (row.get("cap"), row.get("spent"));
        if JobStatus::parse(&status).is_none_or(JobStatus::is_final) {
            tx.rollback().await?;
            return Ok(Metered::Ended);
        }
        if spent_micros.saturating_add(estimate_micros) > cap_micros {
            tx.rollback().await?;
            return Ok(Metered::OverCap {
                job_id,
                spent_micros,
                cap_micros,
            });
        }
        let call_id = uuid::Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO egress_calls (id, job_id, route, estimate_micros, cost_micros, source, state, created_at) \
             VALUES ($1, $2, $3, $4, $4, 'estimate', 'open', $5)",
        )
        .bind(&call_id)
        .bind(&job_id)
        .bind(route)
        .bind(estimate_micros)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE jobs SET actual_cost_micros = $2 WHERE id = $1")
            .bind(&job_id)
            .bind(spent_micros + estimate_micros)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Metered::Admitted { call_id })
    }

    /// A counted call answered: the job's spend moves from the call's estimate to what it cost. When the job has
    /// ended meanwhile and its charge was settled, the charge follows.
    pub async fn settle_egress_call(
        &self,
        call_id: &str,
        outcome: CallOutcome,
    ) -> Result<(), StoreError> {
        let mut tx = self.money_transaction().await?;
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT job_id, estimate_micros FROM egress_calls WHERE id = $1 AND state = 'open'",
        )
        .bind(call_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((job_id, estimate)) = row else {
            tx.rollback().await?;
            return Ok(());
        };
        let (cost, source, state) = match outcome {
            CallOutcome::Reported(micros) => (micros.max(0), "reported", "charged"),
            CallOutcome::Estimated => (estimate, "estimate", "charged"),
            CallOutcome::Refunded => (0, "estimate", "refunded"),
        };
        sqlx::query(
            "UPDATE egress_calls SET cost_micros = $2, source = $3, state = $4 WHERE id = $1",
        )
        .bind(call_id)
        .bind(cost)
        .bind(source)
        .bind(state)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE jobs SET actual_cost_micros = COALESCE(actual_cost_micros, 0) + $2 WHERE id = $1",
        )
        .bind(&job_id)
        .bind(cost - estimate)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE charges SET amount_micros = (SELECT actual_cost_micros FROM jobs WHERE id = $1), updated_at = $2 \
             WHERE job_id = $1 AND state = 'spent' AND EXISTS (SELECT 1 FROM jobs WHERE id = $1 \
               AND status IN ('succeeded', 'failed', 'cancelled', 'backend_lost'))",
        )
        .bind(&job_id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A paid ComfyUI job's charge settled once it has ended: spent at the sum of its calls through the egress
    /// (none: nothing). A job still running keeps its whole reservation; a job never given an egress key (FLUX's,
    /// or one sent before the egress existed) keeps its charge as it was settled.
    pub async fn settle_egress_charge(&self, job_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE charges SET amount_micros = COALESCE((SELECT actual_cost_micros FROM jobs WHERE id = $1), 0), \
               state = 'spent', updated_at = $2 WHERE job_id = $1 AND state IN ('reserved', 'spent') \
               AND EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND egress_key_hash IS NOT NULL \
                 AND status IN ('succeeded', 'failed', 'cancelled', 'backend_lost'))",
        )
        .bind(job_id)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
