//! FLUX jobs nobody follows (the recovery loop claims them: after a restart, those an earlier process left; in a
//! fleet, those of an instance that died). A task BFL took is polled again; one whose submit was cut off becomes
//! `needs_reconcile` (it may have been charged) and is never sent again.

use futures_util::future::BoxFuture;

use super::Flux;
use crate::codes::{Code, Failure};
use crate::jobs::ledger::Sent;
use crate::jobs::recovery::{Driver, Orphaned};
use crate::model::{Backend, EventKind, Job, JobStatus};
use crate::store::JobChange;

/// FLUX's part in recovery ([`crate::jobs::recovery`]).
pub struct FluxDriver(pub(super) Flux);

impl Driver for FluxDriver {
    fn backend(&self) -> Backend {
        Backend::Flux
    }

    /// BFL is reached from every instance.
    fn reaches(&self, _job: &Job) -> bool {
        true
    }

    fn settle(&self, jobs: Vec<Job>, _why: Orphaned) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            for job in jobs {
                self.0.settle(job).await;
            }
            Vec::new()
        })
    }
}

impl Flux {
    /// FLUX's driver for the recovery loop.
    pub fn driver(&self) -> FluxDriver {
        FluxDriver(self.clone())
    }

    /// A FLUX job nobody follows: polled again when BFL took it, else `needs_reconcile` (it may have been charged).
    async fn settle(&self, job: Job) {
        match job.provider_id.clone() {
            Some(provider_id) => {
                // A stop between storing the provider id and settling the charge leaves it reserved.
                let ledger = &self.0.ledger;
                ledger.settle_sent(&job.id, Sent::Taken, true).await;
                tracing::info!(job = %job.id, "polling a FLUX task nobody follows again");
                self.0.ledger.background().spawn(self.clone().follow(
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
                self.0
                    .ledger
                    .change(&job.id, EventKind::State, change)
                    .await;
            }
        }
    }
}
