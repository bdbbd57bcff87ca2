//! A ComfyUI job's paid calls through the Comfy.org egress, and the stop of one whose call would pass its cap: the
//! job fails with `spend_cap_reached` and what it spent, and ComfyUI's run of it is interrupted (the nodes still
//! running may finish, but each further paid call is refused the same way).

use crate::codes::{Code, Failure};
use crate::jobs::egress::EgressError;
use crate::model::{EventKind, JobStatus};
use crate::store::JobChange;

use super::Jobs;

impl Jobs {
    /// Forwards one call of a job's API nodes to Comfy.org ([`crate::jobs::egress::Egress::forward`]); a call over
    /// its job's cap stops the job.
    pub async fn call_comfy_org<B>(
        &self,
        request: http::Request<B>,
        path: &str,
    ) -> Result<http::Response<reqwest::Body>, EgressError>
    where
        B: http_body::Body<Data = bytes::Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.money.egress.forward(request, path).await {
            Err(EgressError::OverCap { job_id, refusal }) => {
                // On its own: a ComfyUI that hangs up does not leave the job failed and its prompt running.
                let failure = Failure::new(Code::SpendCapReached, refusal.to_string())
                    .with_details(refusal.details());
                let jobs = self.clone();
                let stop = tokio::spawn(async move { jobs.stop_over_cap(&job_id, failure).await });
                let _ = stop.await;
                Err(EgressError::Refused(refusal))
            }
            answer => answer,
        }
    }

    /// The job fails with the refusal (once: the calls refused after the first find it ended), then its run is
    /// interrupted.
    async fn stop_over_cap(&self, job_id: &str, failure: Failure) {
        let change = JobChange {
            error: Some(failure.into_json()),
            ..crate::jobs::ledger::finished(JobStatus::Failed)
        };
        if !self.ledger.change(job_id, EventKind::State, change).await {
            return;
        }
        tracing::warn!(
            job = job_id,
            "a paid call would pass the job's cap: the job is stopped"
        );
        let Ok(Some(job)) = self.store().job(job_id).await else {
            return;
        };
        let Some(prompt_id) = &job.comfy_prompt_id else {
            return;
        };
        // A prompt not recorded yet (its run spent at once) is withdrawn by its send instead.
        if let Err(error) = self.take_out_of_comfy(&job, prompt_id).await {
            tracing::warn!(job = job_id, %error, "cannot stop the run of a job stopped at its cap");
        }
    }
}
