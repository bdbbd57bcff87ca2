//! The durable store. Every SQL statement of the project lives in this module, one file per kind of record:
//! [`jobs`], their numbered [`events`], the builder's [`messages`], and [`money`] (reservations, charges,
//! confirmation tokens, idempotency keys; [`approvals`] of paid workflows).
//!
//! Two engines behind one set of statements (sqlx's `Any` driver; placeholders are `$1`, which both read):
//! SQLite, embedded, for one machine, and PostgreSQL, for a fleet of Orchestrators sharing one store
//! (`DATABASE_URL=postgres://…`). Each has its own migrations (`migrations/sqlite`, `migrations/postgres`), and a
//! test holds their schemas equal.
//!
//! SQLite in WAL mode: readers never block the writer, and a crash leaves either the old or the new state. A busy
//! timeout makes concurrent writers wait instead of failing with `SQLITE_BUSY`.

use std::time::Duration;

use crate::config::Engine;
use crate::model::Backend;
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Executor, Transaction};

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
mod assets;
mod egress;
mod events;
mod fleet;
mod gallery;
mod jobs;
mod messages;
mod money;
mod people;
#[cfg(test)]
mod tests;
mod webhooks;

pub use assets::AssetRecord;
pub use egress::{CallOutcome, Metered};
pub use events::{EventWakeups, StoredEvent};
pub use fleet::Instance;
pub use gallery::{GalleryQuery, JobFilter};
pub use jobs::{Deleted, JobChange, JobPage, NewJob};
pub use messages::{Link, Message, NewMessage};
pub use money::{BudgetUsage, IdempotencyClaim, IdempotencyRecord, PaidJob, Record, Reservation};
pub use people::Changed;
pub use webhooks::Delivery;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store URL is not a valid SQLite or PostgreSQL URL")]
    BadUrl(#[source] sqlx::Error),
    #[error("cannot open the store")]
    Open(#[source] sqlx::Error),
    #[error("cannot bring the store's schema up to date")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("store query failed")]
    Query(#[from] sqlx::Error),
    /// A record another one names is gone (the job an idempotency key was claimed for).
    #[error("a record the store should hold is gone: {0}")]
    Gone(&'static str),
}

/// Row counts and size, for the diagnostics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStats {
    pub jobs: i64,
    pub messages: i64,
    /// The database's size as its server reports it (PostgreSQL); `None` for a SQLite file.
    pub size_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
    /// The instance this store records claims for, and how long a claim lasts ([`Store::for_instance`]); a store
    /// opened without one (a tool, a test setting rows up) claims nothing.
    claimant: Option<(std::sync::Arc<str>, Duration)>,
    /// Whether a job's final change also owes a webhook delivery ([`Store::owing_webhooks`]).
    webhooks: bool,
}

/// SQLite's settings, for every connection of the pool. FULL: a commit is on disk before it returns, so a
/// reservation, a used token or an idempotency claim survives a power loss (NORMAL in WAL mode may lose the last
/// commits). Orchestrator writes a few rows a second at most; the extra fsync per commit costs nothing it would
/// notice.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                              PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;";

impl Store {
    /// Opens the store at `url` and applies the embedded migrations; a SQLite file is created on first run.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, true).await
    }

    /// Opens the store at `url` as it is, to look at it (`orchestrator doctor`): no migration is applied.
    pub async fn open_unmigrated(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, false).await
    }

    async fn connect(url: &str, migrate: bool) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let engine = Engine::of_url(url).ok_or_else(|| {
            StoreError::BadUrl(sqlx::Error::Configuration(
                "the scheme must be sqlite: or postgres:".into(),
            ))
        })?;
        let url = match engine {
            // Created when missing (`mode=rwc`), unless the URL says otherwise.
            Engine::Sqlite if !url.contains("mode=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let options = url
            .parse::<sqlx::any::AnyConnectOptions>()
            .map_err(StoreError::BadUrl)?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        connection.execute(sqlx::raw_sql(SQLITE_PRAGMAS)).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(StoreError::Open)?;
        if migrate {
            migrator(engine)
                .run(&pool)
                .await
                .map_err(StoreError::Migrate)?;
        }
        Ok(Self {
            pool,
            engine,
            claimant: None,
            webhooks: false,
        })
    }

    /// The instance this store claims jobs for, and the length of a lease, when it has one.
    pub fn claimant(&self) -> Option<(&str, Duration)> {
        self.claimant
            .as_ref()
            .map(|(instance, lease)| (&**instance, *lease))
    }

    /// The same store, recording the jobs this instance sends as its claims, each under a lease of `lease`.
    pub fn for_instance(mut self, instance: &str, lease: Duration) -> Self {
        self.claimant = Some((instance.into(), lease));
        self
    }

    /// A store whose jobs' final changes each owe `JOB_WEBHOOK_URL` a delivery, in the same transaction.
    pub fn owing_webhooks(mut self) -> Self {
        self.webhooks = true;
        self
    }

    /// The claim a job recorded now gets: this instance's, with its lease, unless the job is for the fleet's
    /// queue (a ComfyUI job with no backend chosen yet), which any instance may claim.
    fn claim_for(
        &self,
        backend: Backend,
        backend_url: Option<&str>,
    ) -> (Option<String>, Option<String>) {
        match &self.claimant {
            Some((instance, lease)) if backend != Backend::Comfy || backend_url.is_some() => {
                (Some(instance.to_string()), Some(lease_until(*lease)))
            }
            _ => (None, None),
        }
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// How many migrations the store has applied, and how many this version of Orchestrator has: a store behind
    /// (opened unmigrated by an older or a newer copy) has fewer.
    pub async fn migrations(&self) -> Result<(i64, i64), StoreError> {
        let expected = i64::try_from(migrator(self.engine).iter().count()).unwrap_or(i64::MAX);
        // No table yet: nothing applied (a new, empty database).
        let applied: Result<(i64,), _> =
            sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await;
        let applied = match applied {
            Ok((applied,)) => applied,
            Err(sqlx::Error::Database(_)) => 0,
            Err(error) => return Err(error.into()),
        };
        Ok((applied, expected))
    }

    /// A transaction that holds the money lock from its first statement to its end, so two reservations (from
    /// this process or, on PostgreSQL, from any instance of the fleet) never both read the day's usage before
    /// either writes: SQLite's write lock (`BEGIN IMMEDIATE`), PostgreSQL's lock on `charges`.
    async fn money_transaction(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self.read_then_write_transaction().await?;
        if self.engine == Engine::Postgres {
            // EXCLUSIVE: others may read charges meanwhile, not write them or take this lock.
            tx.execute("LOCK TABLE charges IN EXCLUSIVE MODE").await?;
        }
        Ok(tx)
    }

    /// A transaction that reads, then writes what it read decides. On SQLite it takes the write lock at its start
    /// (`BEGIN IMMEDIATE`, which waits out the busy timeout): a deferred one that read first fails at once with
    /// `SQLITE_BUSY` when another connection wrote meanwhile, however long the busy timeout is.
    async fn read_then_write_transaction(&self) -> Result<Transaction<'static, Any>, StoreError> {
        match self.engine {
            Engine::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Engine::Postgres => Ok(self.pool.begin().await?),
        }
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let (jobs, messages): (i64, i64) =
            sqlx::query_as("SELECT (SELECT COUNT(*) FROM jobs), (SELECT COUNT(*) FROM messages)")
                .fetch_one(&self.pool)
                .await?;
        // SQLite's size is its files', which the caller measures on disk; PostgreSQL's is the server's to say.
        let size_bytes = match self.engine {
            Engine::Sqlite => None,
            Engine::Postgres => {
                let (size,): (i64,) = sqlx::query_as("SELECT pg_database_size(current_database())")
                    .fetch_one(&self.pool)
                    .await?;
                Some(u64::try_from(size).unwrap_or_default())
            }
        };
        Ok(StoreStats {
            jobs,
            messages,
            size_bytes,
        })
    }

    /// The journal mode SQLite actually uses, lower-cased (`wal` when all went well); PostgreSQL has none.
    pub async fn journal_mode(&self) -> Result<Option<String>, StoreError> {
        if self.engine == Engine::Postgres {
            return Ok(None);
        }
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(mode.to_ascii_lowercase()))
    }

    /// Names of the tables and indexes the migrations created (not those a primary key or a unique constraint
    /// made, nor each engine's own full-text search, `search_*`), for checks and diagnostics.
    pub async fn schema_objects(&self) -> Result<Vec<String>, StoreError> {
        let sql = match self.engine {
            Engine::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%' \
                 AND name NOT LIKE '_sqlx%' AND name NOT LIKE 'search\\_%' ESCAPE '\\' ORDER BY name"
            }
            Engine::Postgres => {
                "SELECT CAST(c.relname AS TEXT) AS name FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i') \
                 AND c.relname NOT LIKE '\\_sqlx%' AND c.relname NOT LIKE '%\\_pkey' AND c.relname NOT LIKE '%\\_key' \
                 AND c.relname NOT LIKE 'search\\_%' ORDER BY name"
            }
        };
        let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(name,)| name).collect())
    }

    /// Each table's columns as `table.column type-class null|not null`, sorted: what the two engines' migrations
    /// must agree on (`integer`, `real` or `text`, whatever each engine calls it).
    pub async fn schema_columns(&self) -> Result<Vec<String>, StoreError> {
        let sql = match self.engine {
            Engine::Sqlite => {
                "SELECT m.name || '.' || p.name || ' ' || \
                   CASE WHEN p.type LIKE '%INT%' THEN 'integer' WHEN p.type = 'REAL' THEN 'real' ELSE 'text' END \
                   || CASE WHEN p.\"notnull\" = 1 OR p.pk = 1 THEN ' not null' ELSE ' null' END \
                 FROM sqlite_master m JOIN pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%' \
                 AND m.name NOT LIKE 'search\\_%' ESCAPE '\\'"
            }
            Engine::Postgres => {
                "SELECT CAST(table_name || '.' || column_name || ' ' || \
                   CASE WHEN data_type IN ('bigint', 'integer') THEN 'integer' \
                        WHEN data_type = 'double precision' THEN 'real' ELSE 'text' END \
                   || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE ' null' END AS TEXT) \
                 FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx%'"
            }
        };
        let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&self.pool).await?;
        let mut columns: Vec<String> = rows.into_iter().map(|(c,)| c).collect();
        columns.sort();
        Ok(columns)
    }

    /// Whether the store is sound: SQLite's `PRAGMA integrity_check` (`ok` when the file is sound); on PostgreSQL,
    /// which checks its own pages, `ok` once it answers.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        let sql = match self.engine {
            Engine::Sqlite => "PRAGMA integrity_check",
            Engine::Postgres => "SELECT CAST('ok' AS TEXT)",
        };
        let (verdict,): (String,) = sqlx::query_as(sql).fetch_one(&self.pool).await?;
        Ok(verdict)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The embedded migrations of `engine`.
fn migrator(engine: Engine) -> sqlx::migrate::Migrator {
    match engine {
        Engine::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Engine::Postgres => sqlx::migrate!("./migrations/postgres"),
    }
}

/// The end of a lease of `lease` taken now, as stored.
pub fn lease_until(lease: Duration) -> String {
    let until = chrono::Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
    until.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
