//! Jobs: recorded, changed (never once finished), listed a page at a time.

use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Engine, Store, StoreError};
use crate::clock::now;
use crate::model::{Backend, Job, JobStatus, OutputFile};

impl Store {
    /// Records a new job, `queued`.
    pub async fn insert_job(&self, new: NewJob<'_>) -> Result<Job, StoreError> {
        // v7: time-ordered (and monotonic within this process), so id order breaks created_at ties in insertion order.
        let id = uuid::Uuid::now_v7().to_string();
        let (claimed_by, lease_until) = self.claim_for(new.backend, new.backend_url);
        sqlx::query(
            "INSERT INTO jobs (id, backend, status, prompt, params, template, created_at, backend_url, claimed_by, \
                               lease_until, prompt_text) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&id)
        .bind(new.backend.as_str())
        .bind(new.workflow.to_string())
        .bind(new.params.to_string())
        .bind(new.template)
        .bind(now())
        .bind(new.backend_url)
        .bind(claimed_by)
        .bind(lease_until)
        .bind(crate::model::prompt_text(new.params, new.workflow))
        .execute(&self.pool)
        .await?;
        self.job(&id)
            .await?
            .ok_or_else(|| StoreError::Query(sqlx::Error::RowNotFound))
    }

    pub async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(job_from_row))
    }

    /// The workflow a job submits (the `prompt` column).
    pub async fn workflow(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT prompt FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row
            .and_then(|(text,)| text)
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Newest first; `cursor` is the `next_cursor` of the previous page.
    pub async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<JobPage, StoreError> {
        // Separate statements with and without a cursor: an `OR` around the row-value comparison would keep
        // SQLite from seeking in the (created_at, id) index.
        let rows = match after(cursor) {
            Some((time, id)) => {
                sqlx::query(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE (created_at, id) < ($2, $3) AND ($1 IS NULL OR status = $1) \
                     ORDER BY created_at DESC, id DESC LIMIT $4"
                ))
                .bind(status.map(JobStatus::as_str))
                .bind(time)
                .bind(id)
                .bind(i64::from(limit) + 1)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE ($1 IS NULL OR status = $1) ORDER BY created_at DESC, id DESC LIMIT $2"
                ))
                .bind(status.map(JobStatus::as_str))
                .bind(i64::from(limit) + 1)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(page(&rows, limit))
    }

    /// Applies `change` to the job's row, unless the job has finished: a finished job never changes again (a
    /// cancel that raced a submit must not be overwritten by `submitted`). Answers whether the row changed.
    pub async fn update_job(&self, id: &str, change: JobChange) -> Result<bool, StoreError> {
        let JobChange {
            status,
            progress,
            current_node,
            error,
            outputs,
            comfy_prompt_id,
            provider_id,
            polling_url,
            started,
            finished,
        } = change;
        let owes_webhook = self.webhooks && status.is_some_and(JobStatus::is_final);
        let update = sqlx::query(
            "UPDATE jobs SET \
               status = COALESCE($2, status), \
               progress = CASE WHEN $14 THEN $3 ELSE progress END, \
               current_node = CASE WHEN $4 THEN $5 ELSE current_node END, \
               error = COALESCE($6, error), \
               outputs = COALESCE($7, outputs), \
               comfy_prompt_id = COALESCE($8, comfy_prompt_id), \
               started_at = CASE WHEN $9 AND started_at IS NULL THEN $11 ELSE started_at END, \
               finished_at = CASE WHEN $10 THEN $11 ELSE finished_at END, \
               provider_id = COALESCE($12, provider_id), \
               polling_url = COALESCE($13, polling_url) \
             WHERE id = $1 AND status NOT IN ('succeeded', 'failed', 'cancelled', 'backend_lost')",
        )
        .bind(id)
        .bind(status.map(JobStatus::as_str))
        // Never a NULL float: sqlx 0.9.0's Any driver declares a NULL double as PostgreSQL's float4, and the
        // statement, prepared with that type, then refuses the next real value (8 bytes for 4).
        .bind(progress.unwrap_or_default())
        .bind(current_node.is_some())
        .bind(current_node.flatten())
        .bind(error.map(|e| e.to_string()))
        .bind(outputs.map(|o| serde_json::to_string(&o).unwrap_or_else(|_| "[]".into())))
        .bind(comfy_prompt_id)
        .bind(started)
        .bind(finished)
        .bind(now())
        .bind(provider_id)
        .bind(polling_url)
        .bind(progress.is_some());
        if !owes_webhook {
            return Ok(update.execute(&self.pool).await?.rows_affected() == 1);
        }
        // The final change and the webhook delivery it owes commit together, or neither does.
        let mut tx = self.pool.begin().await?;
        let changed = update.execute(&mut *tx).await?.rows_affected() == 1;
        if changed {
            super::webhooks::owe(&mut tx, id, &now()).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Where a job that waited for a backend was sent; a finished job is not moved.
    pub async fn set_backend_url(&self, id: &str, backend_url: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET backend_url = $1 WHERE id = $2 \
             AND status NOT IN ('succeeded', 'failed', 'cancelled', 'backend_lost')",
        )
        .bind(backend_url)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Jobs not finished: what a restart must reconcile.
    /// On PostgreSQL only those this instance claimed (or nobody did): another instance's are its own, or,
    /// once their lease runs out, any instance's to take over. Not the fleet's queue, which the dispatcher sends.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mine = match self.engine {
            Engine::Postgres => self.claimant().map(|(instance, _)| instance.to_owned()),
            Engine::Sqlite => None,
        };
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE status IN ('queued', 'submitted', 'running') \
             AND NOT (status = 'queued' AND claimed_by IS NULL AND backend_url IS NULL AND backend = 'comfy') \
             AND (CAST($1 AS TEXT) IS NULL OR claimed_by IS NULL OR claimed_by = $1) ORDER BY created_at"
        ))
        .bind(mine)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(job_from_row).collect())
    }
}

/// What deleting a job did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    /// The row is gone (its events with it).
    Removed,
    /// A paid job: its row stays, without outputs, so its charge still counts against the day's budget.
    OutputsForgotten,
    /// It has not ended.
    Running(JobStatus),
    NotFound,
}

impl Store {
    /// Deletes a job that has ended: its row and events, or (a paid job, whose charge must stay) only its outputs'
    /// record. The files are the caller's to remove.
    pub async fn delete_job(&self, id: &str, by: &str) -> Result<Deleted, StoreError> {
        let mut tx = self.read_then_write_transaction().await?;
        let row: Option<(String, Option<i64>, Option<String>)> =
            sqlx::query_as("SELECT status, cost_micros, claimed_by FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((status, cost, holder)) = row else {
            return Ok(Deleted::NotFound);
        };
        let status = JobStatus::parse(&status).unwrap_or(JobStatus::Failed);
        if !status.is_final() {
            return Ok(Deleted::Running(status));
        }
        // Another instance of the fleet ran it and keeps its files: it is told here, in the same transaction. (On
        // SQLite there is one instance, the one deleting, whatever name an earlier run had.)
        if let Some(holder) = holder
            .filter(|holder| holder != by)
            .filter(|_| self.engine() == super::Engine::Postgres)
        {
            sqlx::query(
                "INSERT INTO deleted_outputs (job_id, holder, deleted_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (job_id) DO NOTHING",
            )
            .bind(id)
            .bind(holder)
            .bind(crate::clock::now())
            .execute(&mut *tx)
            .await?;
        }
        let deleted = if cost.is_some() {
            sqlx::query("UPDATE jobs SET outputs = '[]' WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            Deleted::OutputsForgotten
        } else {
            sqlx::query("DELETE FROM webhook_outbox WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM jobs WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            Deleted::Removed
        };
        tx.commit().await?;
        Ok(deleted)
    }
}

impl Store {
    /// Jobs deleted elsewhere whose files `holder` keeps (at most `limit`): for it to remove.
    pub async fn deleted_outputs(
        &self,
        holder: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT job_id FROM deleted_outputs WHERE holder = $1 ORDER BY deleted_at LIMIT $2",
        )
        .bind(holder)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// The files of a job deleted elsewhere are gone: forgets it.
    pub async fn forget_deleted_outputs(&self, job_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM deleted_outputs WHERE job_id = $1")
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// What a new job is made of.
pub struct NewJob<'a> {
    pub backend: Backend,
    pub template: Option<&'a str>,
    pub params: &'a Value,
    pub workflow: &'a Value,
    pub backend_url: Option<&'a str>,
}

/// A change to a job; `None` leaves a field as it is.
#[derive(Debug, Default, PartialEq)]
pub struct JobChange {
    pub status: Option<JobStatus>,
    pub progress: Option<f64>,
    /// `Some(None)` clears the current node.
    pub current_node: Option<Option<String>>,
    pub error: Option<Value>,
    pub outputs: Option<Vec<OutputFile>>,
    pub comfy_prompt_id: Option<String>,
    pub provider_id: Option<String>,
    pub polling_url: Option<String>,
    /// Sets `started_at` (once).
    pub started: bool,
    pub finished: bool,
}

pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
}

/// The `created_at` and id a keyset cursor (`created_at~id`, a page's `next_cursor`) continues after.
pub(super) fn after(cursor: Option<&str>) -> Option<(&str, &str)> {
    cursor.and_then(|c| c.split_once('~'))
}

/// A page of at most `limit` jobs from `rows`, read one past it: the extra row says another page follows.
pub(super) fn page(rows: &[AnyRow], limit: u32) -> JobPage {
    let mut jobs: Vec<Job> = rows.iter().map(job_from_row).collect();
    let next_cursor = if jobs.len() > limit as usize {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| format!("{}~{}", j.created_at, j.id))
    } else {
        None
    };
    JobPage { jobs, next_cursor }
}

pub(super) fn job_from_row(row: &AnyRow) -> Job {
    let json = |column: &str| {
        row.get::<Option<String>, _>(column)
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    };
    Job {
        id: row.get("id"),
        backend: Backend::parse(row.get("backend")),
        status: JobStatus::parse(row.get::<String, _>("status").as_str())
            .unwrap_or(JobStatus::NeedsReconcile),
        progress: row.get("progress"),
        current_node: row.get("current_node"),
        template: row.get("template"),
        params: json("params").unwrap_or(Value::Null),
        error: json("error"),
        outputs: json("outputs")
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
        comfy_prompt_id: row.get("comfy_prompt_id"),
        backend_url: row.get("backend_url"),
        provider_id: row.get("provider_id"),
        polling_url: row.get("polling_url"),
        cost_usd: row
            .get::<Option<i64>, _>("cost_micros")
            .map(|micros| micros as f64 / 1_000_000.0),
        actual_cost_usd: row
            .get::<Option<i64>, _>("actual_cost_micros")
            .map(|micros| micros as f64 / 1_000_000.0),
        approval: json("approval"),
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
    }
}
