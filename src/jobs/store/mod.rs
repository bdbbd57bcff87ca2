//! The durable store. Every SQL statement of the project lives in this module.
//!
//! SQLite in WAL mode: readers never block the writer, and a crash leaves either the old or the new state. A busy
//! timeout makes concurrent writers wait instead of failing with `SQLITE_BUSY`.

use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::model::{Job, JobStatus, OutputFile, now};

mod approvals;
pub use approvals::{Approval, ApproveJob};

/// The columns a [`Job`] is read from, as a macro so that every statement stays a static string (sqlx refuses
/// SQL built at run time).
macro_rules! job_columns {
    () => {
        "id, backend, status, progress, current_node, template, params, error, outputs, comfy_prompt_id, \
         backend_url, provider_id, polling_url, cost_micros, actual_cost_micros, approval, created_at, started_at, \
         finished_at"
    };
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store URL is not a valid SQLite URL")]
    BadUrl(#[source] sqlx::Error),
    #[error("cannot open the store")]
    Open(#[source] sqlx::Error),
    #[error("cannot bring the store's schema up to date")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("store query failed")]
    Query(#[from] sqlx::Error),
}

/// Row counts and size, for the diagnostics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStats {
    pub jobs: i64,
    pub messages: i64,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating it on first run) the SQLite file and applies the embedded migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::BadUrl)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it returns, so a reservation, a used token or an idempotency claim
            // survives a power loss (NORMAL in WAL mode may lose the last commits). Orchestrator writes a few rows a
            // second at most; the extra fsync per commit costs nothing it would notice.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(StoreError::Open)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        Ok(Self { pool })
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let (jobs, messages): (i64, i64) =
            sqlx::query_as("SELECT (SELECT COUNT(*) FROM jobs), (SELECT COUNT(*) FROM messages)")
                .fetch_one(&self.pool)
                .await?;
        Ok(StoreStats { jobs, messages })
    }

    /// The journal mode SQLite actually uses, lower-cased (`wal` when all went well).
    pub async fn journal_mode(&self) -> Result<String, StoreError> {
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await?;
        Ok(mode.to_ascii_lowercase())
    }

    /// Names of the tables and indexes the migrations created, for checks and diagnostics.
    pub async fn schema_objects(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%' \
             AND name NOT LIKE '_sqlx%' ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(name,)| name).collect())
    }

    /// `PRAGMA integrity_check`'s verdict: `ok` when the file is sound.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        let (verdict,): (String,) = sqlx::query_as("PRAGMA integrity_check")
            .fetch_one(&self.pool)
            .await?;
        Ok(verdict)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Records a new job, `queued`.
    pub async fn insert_job(&self, new: NewJob<'_>) -> Result<Job, StoreError> {
        // v7: time-ordered (and monotonic within this process), so id order breaks created_at ties in insertion order.
        let id = uuid::Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO jobs (id, backend, status, prompt, params, template, created_at, backend_url) \
             VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(new.backend)
        .bind(new.workflow.to_string())
        .bind(new.params.to_string())
        .bind(new.template)
        .bind(now())
        .bind(new.backend_url)
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
            " FROM jobs WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(job_from_row))
    }

    /// The workflow a job submits (the `prompt` column).
    pub async fn workflow(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as("SELECT prompt FROM jobs WHERE id = ?")
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
        let (after_time, after_id) = match cursor.and_then(|c| c.split_once('~')) {
            Some((time, id)) => (Some(time.to_owned()), Some(id.to_owned())),
            None => (None, None),
        };
        // Separate statements with and without a cursor: an `OR` around the row-value comparison would keep
        // SQLite from seeking in the (created_at, id) index.
        let rows = match (&after_time, &after_id) {
            (Some(time), Some(id)) => {
                sqlx::query(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE (created_at, id) < (?2, ?3) AND (?1 IS NULL OR status = ?1) \
                     ORDER BY created_at DESC, id DESC LIMIT ?4"
                ))
                .bind(status.map(JobStatus::as_str))
                .bind(time)
                .bind(id)
                .bind(i64::from(limit) + 1)
                .fetch_all(&self.pool)
                .await?
            }
            _ => {
                sqlx::query(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE (?1 IS NULL OR status = ?1) ORDER BY created_at DESC, id DESC LIMIT ?2"
                ))
                .bind(status.map(JobStatus::as_str))
                .bind(i64::from(limit) + 1)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let mut jobs: Vec<Job> = rows.iter().map(job_from_row).collect();
        let next_cursor = if jobs.len() > limit as usize {
            jobs.truncate(limit as usize);
            jobs.last().map(|j| format!("{}~{}", j.created_at, j.id))
        } else {
            None
        };
        Ok(JobPage { jobs, next_cursor })
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
        let done = sqlx::query(
            "UPDATE jobs SET \
               status = COALESCE(?2, status), \
               progress = COALESCE(?3, progress), \
               current_node = CASE WHEN ?4 THEN ?5 ELSE current_node END, \
               error = COALESCE(?6, error), \
               outputs = COALESCE(?7, outputs), \
               comfy_prompt_id = COALESCE(?8, comfy_prompt_id), \
               started_at = CASE WHEN ?9 AND started_at IS NULL THEN ?11 ELSE started_at END, \
               finished_at = CASE WHEN ?10 THEN ?11 ELSE finished_at END, \
               provider_id = COALESCE(?12, provider_id), \
               polling_url = COALESCE(?13, polling_url) \
             WHERE id = ?1 AND status NOT IN ('succeeded', 'failed', 'cancelled', 'backend_lost')",
        )
        .bind(id)
        .bind(status.map(JobStatus::as_str))
        .bind(progress)
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
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Where a job that waited for a backend was sent; a finished job is not moved.
    pub async fn set_backend_url(&self, id: &str, backend_url: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET backend_url = ? WHERE id = ? \
             AND status NOT IN ('succeeded', 'failed', 'cancelled', 'backend_lost')",
        )
        .bind(backend_url)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Jobs not finished: what a restart must reconcile.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE status IN ('queued', 'submitted', 'running') ORDER BY created_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(job_from_row).collect())
    }
}

/// The numbered job events behind rejoinable streams.
impl Store {
    /// Records an event with the next number of its job; answers it as stored.
    pub async fn insert_event(&self, kind: &str, job: &Job) -> Result<StoredEvent, StoreError> {
        let snapshot = serde_json::to_string(job).unwrap_or_else(|_| "{}".into());
        let (seq, job_seq): (i64, i64) = sqlx::query_as(
            "INSERT INTO job_events (job_id, job_seq, kind, job, at) \
             SELECT ?1, COALESCE(MAX(job_seq), 0) + 1, ?2, ?3, ?4 FROM job_events WHERE job_id = ?1 \
             RETURNING seq, job_seq",
        )
        .bind(&job.id)
        .bind(kind)
        .bind(&snapshot)
        .bind(now())
        .fetch_one(&self.pool)
        .await?;
        Ok(StoredEvent {
            seq,
            job_seq,
            kind: kind.to_owned(),
            job: serde_json::from_str(&snapshot).unwrap_or(Value::Null),
        })
    }

    /// A job's events after its number `after`, oldest first.
    pub async fn job_events_after(
        &self,
        job_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, job_seq, kind, job FROM job_events WHERE job_id = ? AND job_seq > ? ORDER BY job_seq LIMIT ?",
        )
        .bind(job_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// Every job's events after the global number `after`, oldest first.
    pub async fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, job_seq, kind, job FROM job_events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// The number of the latest event of any job (0 when there is none).
    pub async fn last_event(&self) -> Result<i64, StoreError> {
        let (last,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM job_events")
            .fetch_one(&self.pool)
            .await?;
        Ok(last)
    }

    /// The number of a job's latest event (0 when it has none).
    pub async fn last_job_event(&self, job_id: &str) -> Result<i64, StoreError> {
        let (last,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(job_seq), 0) FROM job_events WHERE job_id = ?")
                .bind(job_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(last)
    }
}

type EventRow = (i64, i64, String, String);

/// One numbered change to a job, with the job as it was then.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredEvent {
    pub seq: i64,
    pub job_seq: i64,
    pub kind: String,
    pub job: Value,
}

impl From<EventRow> for StoredEvent {
    fn from((seq, job_seq, kind, job): EventRow) -> Self {
        Self {
            seq,
            job_seq,
            kind,
            job: serde_json::from_str(&job).unwrap_or(Value::Null),
        }
    }
}

/// The builder's conversation.
impl Store {
    pub async fn insert_message(&self, message: NewMessage<'_>) -> Result<Message, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let timestamp = now();
        let links = serde_json::to_string(message.links).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "INSERT INTO messages (id, role, content, job_id, timestamp, chat_id, links) VALUES (?, ?, ?, NULL, ?, ?, ?)",
        )
        .bind(&id)
        .bind(message.role)
        .bind(message.content)
        .bind(&timestamp)
        .bind(message.chat_id)
        .bind(&links)
        .execute(&self.pool)
        .await?;
        Ok(Message {
            id,
            role: message.role.to_owned(),
            content: message.content.to_owned(),
            chat_id: message.chat_id.map(str::to_owned),
            links: message.links.to_vec(),
            timestamp,
        })
    }

    /// The latest `limit` messages, oldest first.
    pub async fn messages(&self, limit: u32) -> Result<Vec<Message>, StoreError> {
        let rows: Vec<(String, String, String, Option<String>, String, String)> = sqlx::query_as(
            "SELECT id, role, content, chat_id, links, timestamp FROM \
               (SELECT * FROM messages ORDER BY timestamp DESC, id DESC LIMIT ?) ORDER BY timestamp, id",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, role, content, chat_id, links, timestamp)| Message {
                id,
                role,
                content,
                chat_id,
                links: serde_json::from_str(&links).unwrap_or_default(),
                timestamp,
            })
            .collect())
    }
}

pub struct NewMessage<'a> {
    /// `user`, `assistant` or `system`.
    pub role: &'a str,
    pub content: &'a str,
    pub chat_id: Option<&'a str>,
    pub links: &'a [Link],
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = BuilderLink)]
pub struct Link {
    pub label: String,
    pub url: String,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = BuilderMessage)]
pub struct Message {
    pub id: String,
    pub role: String,
    pub content: String,
    pub chat_id: Option<String>,
    pub links: Vec<Link>,
    pub timestamp: String,
}

/// Paid generation: budget reservations and idempotency keys.
impl Store {
    /// Records a paid job and reserves its price in one transaction, unless the day's budget cannot cover it.
    /// `BEGIN IMMEDIATE` takes SQLite's write lock before the day's usage is read, so two requests can never both
    /// see the same room left; with an idempotency key the key is claimed in the same transaction.
    pub async fn reserve_paid_job(&self, paid: PaidJob<'_>) -> Result<Reservation, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let usage = day_usage(&mut *tx, paid.day).await?;
        if usage.spent + usage.reserved + paid.cost_micros > paid.budget_micros {
            tx.rollback().await?;
            return Ok(Reservation::OverBudget(usage));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let created = now();
        let new = paid.job;
        sqlx::query(
            "INSERT INTO jobs (id, backend, status, prompt, params, template, created_at, backend_url, cost_micros, \
                               approval) \
             VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(new.backend)
        .bind(new.workflow.to_string())
        .bind(new.params.to_string())
        .bind(new.template)
        .bind(&created)
        .bind(new.backend_url)
        .bind(paid.cost_micros)
        .bind(paid.approval.map(Value::to_string))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO charges (job_id, day, amount_micros, state, updated_at) VALUES (?, ?, ?, 'reserved', ?)",
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
        if let Some(claim) = paid.idempotency {
            claim_key(&mut tx, &claim, &id, &created).await?;
        }
        tx.commit().await?;
        let job = self
            .job(&id)
            .await?
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))?;
        Ok(Reservation::Reserved(Box::new(job)))
    }

    /// A reserved charge becomes `spent` once the provider took the task (a task it certainly did not take is
    /// released by [`Store::release_paid_job`]). A charge already settled stays as it is.
    pub async fn mark_charge_spent(&self, job_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE charges SET state = 'spent', updated_at = ?2 WHERE job_id = ?1 AND state = 'reserved'",
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
            "UPDATE charges SET state = 'released', updated_at = ?2 WHERE job_id = ?1 AND state = 'reserved'",
        )
        .bind(job_id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM idempotency_keys WHERE job_id = ?")
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM used_confirmations WHERE job_id = ?")
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
            "SELECT fingerprint, job_id, response_status, response_body FROM idempotency_keys \
             WHERE scope = ? AND key = ? AND created_at >= ?",
        )
        .bind(scope)
        .bind(key)
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(fingerprint, job_id, status, body)| IdempotencyRecord {
                fingerprint,
                job_id,
                response: status.zip(body).and_then(|(status, body)| {
                    Some((
                        u16::try_from(status).ok()?,
                        serde_json::from_str(&body).ok()?,
                    ))
                }),
            }),
        )
    }

    /// Forgets keys older than `before`, so a key can be used again after its window.
    pub async fn prune_idempotency_keys(&self, before: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        // A token lives at most a day (FLUX_CONFIRM_TTL_SECS), so older records guard nothing.
        sqlx::query("DELETE FROM used_confirmations WHERE used_at < ?")
            .bind(before)
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
            "UPDATE idempotency_keys SET response_status = ?3, response_body = ?4 WHERE scope = ?1 AND key = ?2",
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

/// fingerprint, job id, response status, response body.
type IdempotencyRow = (String, Option<String>, Option<i64>, Option<String>);

/// The day's spent and reserved sums, on the pool or inside a transaction.
/// Records a confirmation token as used by `job_id`; `false` when it already paid for a job.
async fn use_token(
    tx: &mut sqlx::SqliteConnection,
    token_id: &str,
    job_id: &str,
    at: &str,
) -> Result<bool, StoreError> {
    let taken = sqlx::query(
        "INSERT INTO used_confirmations (token_id, job_id, used_at) VALUES (?, ?, ?) \
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

/// Claims an idempotency key for `job_id`.
async fn claim_key(
    tx: &mut sqlx::SqliteConnection,
    claim: &IdempotencyClaim<'_>,
    job_id: &str,
    at: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, fingerprint, job_id, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(claim.scope)
    .bind(claim.key)
    .bind(claim.fingerprint)
    .bind(job_id)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn day_usage<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    day: &str,
) -> Result<BudgetUsage, StoreError> {
    let (spent, reserved): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(CASE WHEN state = 'spent' THEN amount_micros END), 0), \
                COALESCE(SUM(CASE WHEN state = 'reserved' THEN amount_micros END), 0) \
         FROM charges WHERE day = ?",
    )
    .bind(day)
    .fetch_one(executor)
    .await?;
    Ok(BudgetUsage { spent, reserved })
}

/// A paid job to record, with its price and the budget it must fit in.
pub struct PaidJob<'a> {
    pub job: NewJob<'a>,
    pub cost_micros: i64,
    /// The UTC day the price counts against, `YYYY-MM-DD`.
    pub day: &'a str,
    pub budget_micros: i64,
    pub idempotency: Option<IdempotencyClaim<'a>>,
    /// The confirmation token's id: recorded, so it pays once.
    pub token_id: &'a str,
    /// For a ComfyUI workflow: its paid nodes and the estimate the person approved.
    pub approval: Option<&'a Value>,
}

pub struct IdempotencyClaim<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub fingerprint: &'a str,
}

pub enum Reservation {
    Reserved(Box<Job>),
    OverBudget(BudgetUsage),
    /// The confirmation token already paid for a job.
    TokenUsed,
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
    /// The status and body the first request was answered with, once known.
    pub response: Option<(u16, Value)>,
}

/// What a new job is made of.
pub struct NewJob<'a> {
    pub backend: &'a str,
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

fn job_from_row(row: &SqliteRow) -> Job {
    let json = |column: &str| {
        row.get::<Option<String>, _>(column)
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    };
    Job {
        id: row.get("id"),
        backend: row.get("backend"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_run_creates_a_wal_file_with_the_schema_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("orchestrator.db");
        let url = format!("sqlite://{}", file.display());

        let store = Store::open(&url).await.expect("created");
        assert!(file.exists());
        assert_eq!(store.journal_mode().await.unwrap(), "wal");
        // Every connection of the pool commits with synchronous=FULL (2), not the WAL default NORMAL (1).
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut connection = store.pool.acquire().await.unwrap();
            let (level,): (i64,) = sqlx::query_as("PRAGMA synchronous")
                .fetch_one(&mut *connection)
                .await
                .unwrap();
            assert_eq!(level, 2, "synchronous=FULL on every connection");
            held.push(connection);
        }
        drop(held);
        let objects = store.schema_objects().await.unwrap();
        for name in [
            "jobs",
            "messages",
            "jobs_status",
            "jobs_created_at",
            "messages_timestamp",
        ] {
            assert!(
                objects.iter().any(|o| o == name),
                "{name} missing: {objects:?}"
            );
        }
        store.close().await;

        let again = Store::open(&url)
            .await
            .expect("reopened without re-running migrations");
        assert_eq!(again.stats().await.unwrap().jobs, 0);
        assert_eq!(again.integrity_check().await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn jobs_page_newest_first_with_a_cursor_and_a_status_filter() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .unwrap();
        let params = serde_json::json!({});
        let mut ids = Vec::new();
        for _ in 0..5 {
            let new = NewJob {
                backend: "comfy",
                template: None,
                params: &params,
                workflow: &params,
                backend_url: None,
            };
            ids.push(store.insert_job(new).await.unwrap().id);
        }
        let done = JobChange {
            status: Some(JobStatus::Succeeded),
            finished: true,
            ..Default::default()
        };
        store.update_job(&ids[1], done).await.unwrap();

        let page_ids = |page: &JobPage| page.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
        let first = store.list_jobs(None, 2, None).await.unwrap();
        assert_eq!(page_ids(&first), [ids[4].clone(), ids[3].clone()]);
        let second = store
            .list_jobs(None, 2, first.next_cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(page_ids(&second), [ids[2].clone(), ids[1].clone()]);
        let third = store
            .list_jobs(None, 2, second.next_cursor.as_deref())
            .await
            .unwrap();
        assert_eq!((third.jobs.len(), third.next_cursor), (1, None));

        let succeeded = store
            .list_jobs(Some(JobStatus::Succeeded), 10, None)
            .await
            .unwrap();
        assert_eq!(page_ids(&succeeded), [ids[1].clone()]);
        assert!(succeeded.jobs[0].finished_at.is_some());
        // The four still queued are what a restart would reconcile.
        assert_eq!(store.unfinished_jobs().await.unwrap().len(), 4);
    }
}
