//! One recovery loop for the jobs nobody follows, whatever their backend: after a restart, those an earlier
//! process left unfinished; in a fleet (PostgreSQL), those of an instance whose claims ran out (it died). Each is
//! claimed by this instance first, then settled by its backend's [`Driver`]: followed again, collected, resent if
//! it never reached its backend and costs nothing, `needs_reconcile` if it is paid and was cut off mid-send, or
//! `backend_lost`. A job is never sent twice by two instances: the claim decides which one settles it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::runner::Jobs;
use crate::config::Engine;
use crate::model::{Backend, Job};

/// At most this many jobs are taken over in one pass.
const TAKEOVER_BATCH: u32 = 100;

/// How long a restart's settling waits before it tries again the jobs whose backend did not answer.
const RESTART_RETRY: Duration = Duration::from_secs(10);

/// Why nobody follows a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphaned {
    /// An earlier process of this instance (or, on SQLite, of the one store) left it unfinished.
    Restart,
    /// Another instance of the fleet held it and stopped renewing its claim.
    TakenOver,
}

/// A backend's part in recovery: it settles the jobs of its backend that nobody follows.
pub trait Driver: Send + Sync + 'static {
    /// The jobs it settles.
    fn backend(&self) -> Backend;

    /// Whether this instance can settle `job` (it reaches the backend the job may have reached).
    fn reaches(&self, job: &Job) -> bool;

    /// Settles jobs this instance now claims; answers the ids of those it could not settle yet (their backend does
    /// not answer), to be tried again.
    fn settle(&self, jobs: Vec<Job>, why: Orphaned) -> BoxFuture<'_, Vec<String>>;
}

/// The loop: a restart's jobs (again, every [`RESTART_RETRY`], those whose backend did not answer) and, on
/// PostgreSQL, beside it, the expired claims of every backend every third of a lease. Each job is settled once: a
/// job settled or taken over is not settled again by a later pass. Ends when the server stops.
pub struct Recovery {
    jobs: Jobs,
    drivers: Vec<Arc<dyn Driver>>,
    /// The jobs this loop settled or took over: followed, polled or watched from then on, never settled again.
    settled: Mutex<HashSet<String>>,
}

impl Recovery {
    pub fn new(jobs: Jobs, drivers: Vec<Arc<dyn Driver>>) -> Self {
        Self {
            jobs,
            drivers,
            settled: Mutex::default(),
        }
    }

    pub async fn run(self) {
        // Apart, so a restart's slow pass (a link to wait for, a resend) never delays taking over a dead
        // instance's jobs.
        tokio::join!(self.after_restart(), self.take_over_expired());
    }

    /// Sleeps `pause`; false when the server stops meanwhile.
    async fn pause(&self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = self.jobs.background().stopping() => false,
        }
    }

    /// The jobs an earlier process left unfinished (recorded before this one started), until none is left.
    async fn after_restart(&self) {
        loop {
            let left = self.restart_pass().await;
            if left == 0 {
                return;
            }
            tracing::info!(left, "jobs wait for their backend to be reconciled");
            if !self.pause(RESTART_RETRY).await {
                return;
            }
        }
    }

    fn is_settled(&self, id: &str) -> bool {
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn mark_settled(&self, ids: impl IntoIterator<Item = String>) {
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(ids);
    }

    /// One pass over the jobs left unfinished and not settled yet; answers how many are left for the next.
    async fn restart_pass(&self) -> usize {
        let unfinished = match self.jobs.store().unfinished_jobs().await {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(%error, "cannot read the unfinished jobs yet");
                return 1;
            }
        };
        let mut left = 0;
        let mut settling = Vec::new();
        for driver in &self.drivers {
            let mut claimed = Vec::new();
            for job in unfinished.iter().filter(|j| {
                j.backend == driver.backend()
                    && j.created_at < self.jobs.started_at
                    && !self.jobs.is_followed(&j.id)
                    && !self.is_settled(&j.id)
            }) {
                match self.claim_after_restart(job).await {
                    Ok(true) => claimed.push(job.clone()),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(job = %job.id, %error, "cannot claim a job left unfinished");
                        left += 1;
                    }
                }
            }
            if !claimed.is_empty() {
                let ids: Vec<String> = claimed.iter().map(|j| j.id.clone()).collect();
                settling.push(async move {
                    let unsettled = driver.settle(claimed, Orphaned::Restart).await;
                    (ids, unsettled)
                });
            }
        }
        // Each backend at once: a ComfyUI that is slow to answer does not hold up FLUX's polls.
        for (ids, unsettled) in futures_util::future::join_all(settling).await {
            left += unsettled.len();
            self.mark_settled(ids.into_iter().filter(|id| !unsettled.contains(id)));
        }
        left
    }

    /// This instance's now: its own from before the restart, or nobody's. On PostgreSQL a job another instance
    /// claimed meanwhile is left to it; on SQLite there is no other instance, and every job left unfinished is this
    /// one's, whatever name it had before.
    async fn claim_after_restart(&self, job: &Job) -> Result<bool, crate::store::StoreError> {
        let (store, instance) = (self.jobs.store(), &self.jobs.instance);
        let until = crate::store::lease_until(self.jobs.lease);
        if store.claim_job(&job.id, instance, &until).await? {
            return Ok(true);
        }
        if store.engine() == Engine::Postgres {
            return Ok(false);
        }
        store.force_claim(&job.id, instance, &until).await?;
        Ok(true)
    }

    /// On PostgreSQL, every third of a lease, the jobs whose claims ran out (their instance died).
    async fn take_over_expired(&self) {
        if self.jobs.store().engine() != Engine::Postgres {
            return;
        }
        loop {
            self.take_over_pass().await;
            if !self.pause(self.jobs.lease / 3).await {
                return;
            }
        }
    }

    /// Takes over the jobs whose claims ran out and that this instance can settle, for every backend.
    async fn take_over_pass(&self) {
        let (store, instance) = (self.jobs.store(), &self.jobs.instance);
        for driver in &self.drivers {
            let expired = match store
                .expired_claims(instance, driver.backend(), TAKEOVER_BATCH)
                .await
            {
                Ok(expired) => expired,
                Err(error) => {
                    tracing::warn!(%error, "cannot look for jobs whose claim ran out");
                    continue;
                }
            };
            let mut taken = Vec::new();
            for (job, from) in expired {
                if !driver.reaches(&job) {
                    continue;
                }
                let until = crate::store::lease_until(self.jobs.lease);
                match store.take_over(&job.id, &from, instance, &until).await {
                    Ok(true) => {
                        tracing::warn!(job = %job.id, %from, "the job's instance stopped renewing its claim: taken over");
                        taken.push(job);
                    }
                    Ok(false) => {}
                    Err(error) => tracing::warn!(job = %job.id, %error, "cannot take a job over"),
                }
            }
            if !taken.is_empty() {
                self.mark_settled(taken.iter().map(|j| j.id.clone()));
                driver.settle(taken, Orphaned::TakenOver).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::config::ComfyBackend;
    use crate::jobs::gate::{Gate, Money};
    use crate::jobs::ledger::Ledger;
    use crate::money::checkout::Checkout;
    use crate::money::confirm::Confirmer;
    use crate::store::{NewJob, Store};

    /// A driver that notes each job it is given; one whose backend does not answer gives every job back.
    struct Noting {
        backend: Backend,
        answers: bool,
        given: Mutex<Vec<String>>,
    }

    impl Driver for Noting {
        fn backend(&self) -> Backend {
            self.backend
        }

        fn reaches(&self, _: &Job) -> bool {
            true
        }

        fn settle(&self, jobs: Vec<Job>, _: Orphaned) -> BoxFuture<'_, Vec<String>> {
            let ids: Vec<String> = jobs.into_iter().map(|j| j.id).collect();
            self.given.lock().unwrap().extend(ids.clone());
            let left = if self.answers { Vec::new() } else { ids };
            Box::pin(async move { left })
        }
    }

    fn noting(backend: Backend, answers: bool) -> Arc<Noting> {
        Arc::new(Noting {
            backend,
            answers,
            given: Mutex::default(),
        })
    }

    /// The job service of a process started after `store`'s jobs were recorded, on a ComfyUI nobody runs.
    fn jobs_after_restart(store: &Store, dir: &Path) -> Jobs {
        let gateway = crate::comfy::proxy::properties::gateway(ComfyBackend {
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static("127.0.0.1:9"),
        });
        let background = crate::background::Background::new();
        let confirmer = Arc::new(Confirmer::new(Duration::from_secs(600)));
        let checkout = Checkout::new(store.clone(), confirmer.clone(), background.clone(), 1);
        let money = Money {
            models: Arc::default(),
            gate: Gate::new(confirmer, false, 1_000_000),
            egress: crate::jobs::egress::Egress::new(
                store.clone(),
                &crate::config::ComfyOrgConfig {
                    api_key: None,
                    base_url: String::new(),
                    paid_node_max_micros: 1_000_000,
                },
            ),
            checkout: Arc::new(checkout),
        };
        let outputs = dir.join("outputs");
        let assets = crate::assets::Assets::new(dir.join("assets"), outputs.clone(), store.clone());
        let ledger = Ledger::new(store.clone(), background, None);
        Jobs::new(ledger, vec![gateway], outputs, money, assets)
    }

    /// A restart pass tried again because one backend did not answer settles that backend's jobs again, and no
    /// other's: a FLUX task settled once is not polled a second time.
    #[tokio::test]
    async fn a_restart_pass_tried_again_settles_each_job_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let store = Store::open(&url).await.unwrap();
        let (params, workflow) = (json!({}), json!({}));
        let mut ids = Vec::new();
        for (backend, url) in [
            (Backend::Comfy, Some("http://127.0.0.1:9")),
            (Backend::Flux, None),
        ] {
            let new = NewJob {
                backend,
                template: None,
                params: &params,
                workflow: &workflow,
                backend_url: url,
            };
            ids.push(store.insert_job(new).await.unwrap().id);
        }
        let (comfy, flux) = (noting(Backend::Comfy, false), noting(Backend::Flux, true));
        let drivers: Vec<Arc<dyn Driver>> = vec![comfy.clone(), flux.clone()];
        let recovery = Recovery::new(jobs_after_restart(&store, dir.path()), drivers);
        assert_eq!(recovery.restart_pass().await, 1, "ComfyUI's job is left");
        assert_eq!(recovery.restart_pass().await, 1, "and left again");
        assert_eq!(
            *comfy.given.lock().unwrap(),
            [ids[0].clone(), ids[0].clone()]
        );
        assert_eq!(*flux.given.lock().unwrap(), [ids[1].clone()]);
    }
}
