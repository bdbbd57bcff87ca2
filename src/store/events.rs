//! The numbered job events behind rejoinable streams.

use serde_json::Value;

use sqlx::Executor;

use super::{Engine, Store, StoreError};
use crate::clock::now;
use crate::model::{EventKind, Job};

/// The numbered job events behind rejoinable streams.
impl Store {
    /// Records an event with the next number of its job; answers it as stored.
    pub async fn insert_event(
        &self,
        kind: EventKind,
        job: &Job,
    ) -> Result<StoredEvent, StoreError> {
        let snapshot = serde_json::to_string(job).unwrap_or_else(|_| "{}".into());
        // On PostgreSQL, instances of a fleet write events at once: the table lock, held to the commit, makes
        // the numbers commit in order, so a reader that resumes after n never misses a smaller one committed
        // later. (SQLite has one writer at a time anyway.)
        let mut tx = self.pool.begin().await?;
        if self.engine == Engine::Postgres {
            tx.execute("LOCK TABLE job_events IN EXCLUSIVE MODE")
                .await?;
        }
        let (seq, job_seq): (i64, i64) = sqlx::query_as(
            "INSERT INTO job_events (job_id, job_seq, kind, job, at) \
             SELECT $1, COALESCE(MAX(job_seq), 0) + 1, $2, $3, $4 FROM job_events WHERE job_id = $1 \
             RETURNING seq, job_seq",
        )
        .bind(&job.id)
        .bind(kind.as_str())
        .bind(&snapshot)
        .bind(now())
        .fetch_one(&mut *tx)
        .await?;
        if self.engine == Engine::Postgres {
            // Delivered at the commit, to every instance's event pump: the wake-up; the table stays the truth.
            tx.execute(concat!("SELECT pg_notify('", events_channel!(), "', '')"))
                .await?;
        }
        tx.commit().await?;
        Ok(StoredEvent {
            seq,
            job_seq,
            kind,
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
            "SELECT seq, job_seq, kind, job FROM job_events WHERE job_id = $1 AND job_seq > $2 ORDER BY job_seq LIMIT $3",
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
            "SELECT seq, job_seq, kind, job FROM job_events WHERE seq > $1 ORDER BY seq LIMIT $2",
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
            sqlx::query_as("SELECT COALESCE(MAX(job_seq), 0) FROM job_events WHERE job_id = $1")
                .bind(job_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(last)
    }
}

type EventRow = (i64, i64, String, String);

/// The channel PostgreSQL notifies at the commit of each event.
macro_rules! events_channel {
    () => {
        "orchestrator_events"
    };
}
use events_channel;

/// Wake-ups from PostgreSQL when any instance of the fleet stores an event (`LISTEN`, on a connection of its own).
pub struct EventWakeups(sqlx::postgres::PgListener);

impl EventWakeups {
    pub async fn listen(database_url: &str) -> Result<Self, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect(database_url)
            .await
            .map_err(StoreError::Open)?;
        listener.listen(events_channel!()).await?;
        Ok(Self(listener))
    }

    /// Resolves at the next notification; after a lost connection (the listener reconnects on the next call),
    /// after a second.
    pub async fn next(&mut self) {
        if self.0.recv().await.is_err() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// One numbered change to a job, with the job as it was then.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredEvent {
    pub seq: i64,
    pub job_seq: i64,
    pub kind: EventKind,
    pub job: Value,
}

impl From<EventRow> for StoredEvent {
    fn from((seq, job_seq, kind, job): EventRow) -> Self {
        Self {
            seq,
            job_seq,
            kind: EventKind::parse(&kind),
            job: serde_json::from_str(&job).unwrap_or(Value::Null),
        }
    }
}
