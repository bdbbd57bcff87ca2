//! The fleet's rows: the instances with their heartbeats, each job's claim and its lease, the shared secret.
//!
//! A job is sent to ComfyUI only by the instance that claims it. A job recorded for a backend the recording
//! instance chose is claimed by it from the start (in the insert); a job recorded while no ComfyUI answered is the
//! fleet's: any instance with an online backend claims the oldest (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so two
//! instances never take the same one and neither waits for the other). An instance renews the leases of all its
//! claims in one statement; a claim whose lease ran out may be taken over by another instance.

use serde::Serialize;
use serde_json::Value;

use super::jobs::job_from_row;
use super::{Engine, Store, StoreError};
use crate::clock::now;
use crate::model::{Backend, Job};

/// One instance as the fleet sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Instance {
    pub id: String,
    /// Where the other instances reach it.
    pub url: String,
    pub version: String,
    pub started_at: String,
    pub heartbeat_at: String,
    /// The ComfyUI backends it reaches: `[{url, online}]` at its last heartbeat.
    #[schema(value_type = Vec<Object>)]
    pub backends: Value,
}

impl Instance {
    /// Whether its last heartbeat is older than `lease`: stopped, or cut off from the store.
    pub fn is_stale(&self, lease: std::time::Duration) -> bool {
        let stale_before =
            chrono::Utc::now() - chrono::Duration::from_std(lease).unwrap_or_default();
        chrono::DateTime::parse_from_rfc3339(&self.heartbeat_at)
            .map_or(true, |at| at < stale_before)
    }
}

impl Store {
    /// Registers this instance, or records its heartbeat: the row is written whole each time (a restart, or a
    /// row removed meanwhile, is registered again).
    pub async fn register_instance(&self, instance: &Instance) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instances (id, url, version, started_at, heartbeat_at, backends) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, version = excluded.version, \
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, backends = excluded.backends",
        )
        .bind(&instance.id)
        .bind(&instance.url)
        .bind(&instance.version)
        .bind(&instance.started_at)
        .bind(&instance.heartbeat_at)
        .bind(instance.backends.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An instance that stops cleanly dates its last heartbeat `stale_at` (a lease ago): listed as stopped at once,
    /// and a process starting under its name right after need not wait to tell whether it lives.
    pub async fn mark_stopped(
        &self,
        instance: &str,
        started_at: &str,
        stale_at: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET heartbeat_at = $3 WHERE id = $1 AND started_at = $2")
            .bind(instance)
            .bind(started_at)
            .bind(stale_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every lease `instance` holds renewed to `lease_until`, in one statement whatever the number of jobs.
    /// Answers how many claims were renewed.
    pub async fn renew_leases(&self, instance: &str, lease_until: &str) -> Result<u64, StoreError> {
        let renewed = sqlx::query(
            "UPDATE jobs SET lease_until = $2 WHERE claimed_by = $1 AND finished_at IS NULL",
        )
        .bind(instance)
        .bind(lease_until)
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected())
    }

    /// Every instance that ever registered, the most recent heartbeat first.
    pub async fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        let rows: Vec<(String, String, String, String, String, String)> = sqlx::query_as(
            "SELECT id, url, version, started_at, heartbeat_at, backends FROM instances \
             ORDER BY heartbeat_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, url, version, started_at, heartbeat_at, backends)| Instance {
                    id,
                    url,
                    version,
                    started_at,
                    heartbeat_at,
                    backends: serde_json::from_str(&backends).unwrap_or(Value::Null),
                },
            )
            .collect())
    }

    /// Whether any job waits in the fleet's queue (an indexed look, no scan).
    pub async fn has_claimable(&self) -> Result<bool, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM jobs WHERE status = 'queued' AND claimed_by IS NULL AND backend = 'comfy' \
             AND backend_url IS NULL ORDER BY created_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Claims the oldest job of the fleet's queue for `instance`, to send to `backend_url`: answers it, or `None`
    /// when none is left. On PostgreSQL a row another instance is claiming meanwhile is skipped, not waited for.
    pub async fn claim_next(
        &self,
        instance: &str,
        backend_url: &str,
        lease_until: &str,
    ) -> Result<Option<Job>, StoreError> {
        let sql = match self.engine {
            Engine::Postgres => concat!(
                "UPDATE jobs SET claimed_by = $1, lease_until = $2, backend_url = $3 WHERE id = (",
                "SELECT id FROM jobs WHERE status = 'queued' AND claimed_by IS NULL AND backend = 'comfy' ",
                "AND backend_url IS NULL ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING ",
                job_columns!()
            ),
            // One writer at a time: the statement is atomic as it stands.
            Engine::Sqlite => concat!(
                "UPDATE jobs SET claimed_by = $1, lease_until = $2, backend_url = $3 WHERE id = (",
                "SELECT id FROM jobs WHERE status = 'queued' AND claimed_by IS NULL AND backend = 'comfy' ",
                "AND backend_url IS NULL ORDER BY created_at LIMIT 1) RETURNING ",
                job_columns!()
            ),
        };
        let row = sqlx::query(sql)
            .bind(instance)
            .bind(lease_until)
            .bind(backend_url)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job_from_row))
    }

    /// Claims job `id` for `instance` unless another instance holds a live claim on it; answers whether it is
    /// `instance`'s now. What every send to ComfyUI checks first, so a job is sent only by its claimant.
    pub async fn claim_job(
        &self,
        id: &str,
        instance: &str,
        lease_until: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET claimed_by = $2, lease_until = $3 WHERE id = $1 \
             AND (claimed_by IS NULL OR claimed_by = $2 OR lease_until < $4) \
             AND status NOT IN ('succeeded', 'failed', 'cancelled', 'backend_lost')",
        )
        .bind(id)
        .bind(instance)
        .bind(lease_until)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims job `id` for `instance` whoever held it: for SQLite's one instance, whose name may have changed.
    pub async fn force_claim(
        &self,
        id: &str,
        instance: &str,
        lease_until: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET claimed_by = $2, lease_until = $3 WHERE id = $1")
            .bind(id)
            .bind(instance)
            .bind(lease_until)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Which instance claims job `id`, if any.
    pub async fn job_claimant(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT claimed_by FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(claimant,)| claimant))
    }

    /// Jobs of `backend` whose claim, by another instance, has run out while it followed them: candidates for a
    /// takeover, each with the instance that held it. At most `limit`, oldest first.
    pub async fn expired_claims(
        &self,
        instance: &str,
        backend: Backend,
        limit: u32,
    ) -> Result<Vec<(Job, String)>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            ", claimed_by FROM jobs WHERE finished_at IS NULL AND claimed_by IS NOT NULL ",
            "AND claimed_by <> $1 AND lease_until < $2 AND backend = $4 ",
            "AND status IN ('queued', 'submitted', 'running') ORDER BY created_at LIMIT $3"
        ))
        .bind(instance)
        .bind(now())
        .bind(i64::from(limit))
        .bind(backend.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| {
                use sqlx::Row;
                (job_from_row(row), row.get::<String, _>("claimed_by"))
            })
            .collect())
    }

    /// Takes job `id` over from `from`, whose lease ran out: answers whether `instance` holds it now (another
    /// instance may have been quicker, or `from` came back and renewed it).
    pub async fn take_over(
        &self,
        id: &str,
        from: &str,
        instance: &str,
        lease_until: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET claimed_by = $3, lease_until = $4 WHERE id = $1 AND claimed_by = $2 \
             AND lease_until < $5 AND finished_at IS NULL",
        )
        .bind(id)
        .bind(from)
        .bind(instance)
        .bind(lease_until)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives a job that never reached ComfyUI back to the fleet's queue, for any instance to send. Never a paid
    /// one: it may have been charged.
    pub async fn requeue(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET claimed_by = NULL, lease_until = NULL, backend_url = NULL, status = 'queued' \
             WHERE id = $1 AND comfy_prompt_id IS NULL AND cost_micros IS NULL AND status IN ('queued', 'submitted')",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The fleet's shared secret `name`: made by the first instance that asks (32 random bytes, as hex text), read
    /// by the others, so every instance signs and checks with the same key.
    pub async fn fleet_secret(&self, name: &str) -> Result<String, StoreError> {
        use ring::rand::SecureRandom;
        let mut fresh = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut fresh)
            .expect("the operating system's random source works");
        let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        sqlx::query(
            "INSERT INTO fleet_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(&fresh)
        .execute(&self.pool)
        .await?;
        let (value,): (String,) = sqlx::query_as("SELECT value FROM fleet_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(value)
    }
}
