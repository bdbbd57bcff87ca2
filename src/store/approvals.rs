//! Workflows with paid ComfyUI nodes: kept until a person approves their price, then reserved against the same
//! daily budget as FLUX (settled with what their calls through the Comfy.org egress cost: `store::egress`).

use serde_json::Value;

use super::{NewJob, Store, StoreError};
use crate::clock::now;
use crate::model::Job;

impl Store {
    /// Records a job that waits for a person's approval of its paid nodes; nothing is reserved yet.
    pub async fn insert_awaiting_job(
        &self,
        new: NewJob<'_>,
        approval: &Value,
    ) -> Result<Job, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO jobs (id, backend, status, prompt, params, template, created_at, backend_url, approval, \
                               prompt_text) \
             VALUES ($1, $2, 'awaiting_confirmation', $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(new.backend.as_str())
        .bind(new.workflow.to_string())
        .bind(new.params.to_string())
        .bind(new.template)
        .bind(now())
        .bind(new.backend_url)
        .bind(approval.to_string())
        .bind(crate::model::prompt_text(new.params, new.workflow))
        .execute(&self.pool)
        .await?;
        self.job(&id)
            .await?
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// A job found to need an approval only when it was about to be sent (it waited for a ComfyUI, or was being
    /// moved): it waits, with its dry run, and nothing is sent.
    pub async fn await_approval(&self, job_id: &str, approval: &Value) -> Result<(), StoreError> {
        sqlx::query(
            // Nobody's while it waits: whichever instance the person confirms on claims and sends it.
            "UPDATE jobs SET status = 'awaiting_confirmation', approval = $2, claimed_by = NULL, lease_until = NULL \
             WHERE id = $1 AND status IN ('queued', 'submitted') AND cost_micros IS NULL",
        )
        .bind(job_id)
        .bind(approval.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A paid job's charge settled once its cost is known: `charge_micros` spent against the day, `actual_micros`
    /// (what the provider reported) recorded on the job.
    pub async fn settle_charge(
        &self,
        job_id: &str,
        charge_micros: i64,
        actual_micros: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE jobs SET actual_cost_micros = $2 WHERE id = $1")
            .bind(job_id)
            .bind(actual_micros)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE charges SET amount_micros = $2, state = 'spent', updated_at = $3 WHERE job_id = $1",
        )
        .bind(job_id)
        .bind(charge_micros)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
