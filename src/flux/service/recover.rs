//! FLUX jobs nobody follows: after a restart, those an earlier process left; in a fleet, those of an instance
//! that died (their claims ran out). A task BFL took is polled again; one whose submit was cut off becomes
//! `needs_reconcile` (it may have been charged) and is never sent again.

use super::Flux;
use crate::codes::{Code, Failure};
use crate::model::{Backend, EventKind, Job, JobStatus};
use crate::store::JobChange;

impl Flux {
    /// After a restart: submitted tasks are polled again; a job whose submit was cut off by the stop becomes
    /// `needs_reconcile` (it may have been charged) and is never sent again.
    pub async fn reconcile(self) {
        let unfinished = match self.store().unfinished_jobs().await {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::error!(%error, "cannot read unfinished FLUX jobs");
                return;
            }
        };
        for job in unfinished
            .into_iter()
            .filter(|j| j.backend == Backend::Flux && j.created_at < self.0.started_at)
        {
            // On PostgreSQL a job another instance took over meanwhile is left to it.
            if let Some((instance, lease)) = self.store().claimant() {
                let until = crate::store::lease_until(lease);
                let claimed = self.store().claim_job(&job.id, instance, &until).await;
                if self.store().engine() == crate::config::Engine::Postgres
                    && !matches!(claimed, Ok(true))
                {
                    continue;
                }
            }
            self.settle(job).await;
        }
    }

    /// In a fleet: every third of a lease, the FLUX jobs of an instance that stopped renewing its claims (it died)
    /// are taken over and settled as after a restart. Ends when the server stops.
    pub async fn take_over_expired(self) {
        let jobs = &self.0.jobs;
        let Some((instance, lease)) = self.store().claimant() else {
            return;
        };
        // Alone on SQLite, every unfinished job is this instance's, settled at its start.
        if self.store().engine() != crate::config::Engine::Postgres {
            return;
        }
        let instance = instance.to_owned();
        loop {
            tokio::select! {
                () = tokio::time::sleep(lease / 3) => {}
                () = jobs.background().stopping() => return,
            }
            let expired = match self
                .store()
                .expired_claims(&instance, Backend::Flux, 100)
                .await
            {
                Ok(expired) => expired,
                Err(error) => {
                    tracing::warn!(%error, "cannot look for FLUX jobs whose claim ran out");
                    continue;
                }
            };
            for (job, from) in expired {
                let until = crate::store::lease_until(lease);
                if let Ok(true) = self
                    .store()
                    .take_over(&job.id, &from, &instance, &until)
                    .await
                {
                    tracing::warn!(job = %job.id, from = %from, "the FLUX job's instance stopped renewing its claim: taken over");
                    self.settle(job).await;
                }
            }
        }
    }

    /// A FLUX job nobody follows: polled again when BFL took it, else `needs_reconcile` (it may have been charged).
    async fn settle(&self, job: Job) {
        match job.provider_id.clone() {
            Some(provider_id) => {
                // A stop between storing the provider id and settling the charge leaves it reserved.
                if let Err(error) = self.store().mark_charge_spent(&job.id).await {
                    tracing::error!(job = %job.id, %error, "cannot record a FLUX charge as spent");
                }
                tracing::info!(job = %job.id, "polling a FLUX task nobody follows again");
                self.0.jobs.background().spawn(self.clone().follow(
                    job.id.clone(),
                    job.polling_url.clone(),
                    provider_id,
                ));
            }
            None => {
                let change = JobChange {
                    status: Some(JobStatus::NeedsReconcile),
                    error: Some(
                        Failure::new(
                            Code::SubmitInterrupted,
                            "Orchestrator stopped while this job was being sent to BFL. It may have been \
                             charged; it is not sent again. Check the BFL dashboard.",
                        )
                        .into_json(),
                    ),
                    ..Default::default()
                };
                self.0.jobs.change(&job.id, EventKind::State, change).await;
            }
        }
    }
}
