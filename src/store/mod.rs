//! The durable store. Every SQL statement of the project lives in this module, one file per kind of record:
//! [`jobs`], their numbered [`events`], the builder's [`messages`], and [`money`] (reservations, charges,
//! confirmation tokens, idempotency keys; [`approvals`] of paid workflows). A PostgreSQL engine plugs in here.
//!
//! SQLite in WAL mode: readers never block the writer, and a crash leaves either the old or the new state. A busy
//! timeout makes concurrent writers wait instead of failing with `SQLITE_BUSY`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// The columns a [`Job`] is read from, as a macro so that every statement stays a static string (sqlx refuses
/// SQL built at run time).
macro_rules! job_columns {
    () => {
        "id, backend, status, progress, current_node, template, params, error, outputs, comfy_prompt_id, \
         backend_url, provider_id, polling_url, cost_micros, actual_cost_micros, approval, created_at, started_at, \
         finished_at"
    };
}

mod approvals;
mod events;
mod jobs;
mod messages;
mod money;
#[cfg(test)]
mod tests;

pub use approvals::{Approval, ApproveJob};
pub use events::StoredEvent;
pub use jobs::{JobChange, JobPage, NewJob};
pub use messages::{Link, Message, NewMessage};
pub use money::{BudgetUsage, IdempotencyClaim, IdempotencyRecord, PaidJob, Reservation};

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
}
