//! What a driver's send of a job came to, settled in one place, whichever the backend and whichever the path (the
//! checkout's first send, Orchestrator's queue, a restart): the job's state and its charge move together.

use super::Ledger;
use crate::codes::Failure;
use crate::model::{EventKind, JobStatus};
use crate::store::JobChange;

/// The one outcome every backend's send reports.
pub enum Sent {
    /// The backend took the job: a paid one's charge is spent. (The driver records what it took it as.)
    Taken,
    /// The backend certainly did not take it: the job failed; a paid one's price, key and token go back, so the
    /// very same request can be tried again.
    NotTaken(Failure),
    /// It may have taken it (no answer, or one that is not the backend's own): a paid job is `needs_reconcile`,
    /// its charge kept reserved and the job never sent again, for a person to check; a free one failed.
    Unknown(Failure),
}

impl Ledger {
    /// Records what the send of job `id` came to; `paid`: the job holds a reservation.
    pub async fn settle_sent(&self, id: &str, sent: Sent, paid: bool) {
        match sent {
            Sent::Taken => {
                if paid && let Err(error) = self.store.mark_charge_spent(id).await {
                    tracing::error!(job = %id, %error, "cannot record a paid job's charge as spent");
                }
            }
            Sent::NotTaken(failure) => {
                self.fail(id, failure).await;
                if paid {
                    self.release(id).await;
                }
            }
            Sent::Unknown(failure) if paid => {
                let change = JobChange {
                    status: Some(JobStatus::NeedsReconcile),
                    error: Some(failure.into_json()),
                    ..Default::default()
                };
                self.change(id, EventKind::State, change).await;
            }
            Sent::Unknown(failure) => self.fail(id, failure).await,
        }
    }

    /// Gives a paid job's reservation (its price, key and token) back: its backend certainly did not take it, or
    /// it was withdrawn before it was sent.
    pub async fn release(&self, id: &str) {
        if let Err(error) = self.store.release_paid_job(id).await {
            tracing::error!(job = %id, %error, "cannot release a paid job its backend did not take");
        }
    }
}
