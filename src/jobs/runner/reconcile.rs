//! After a restart: the jobs an earlier process left unfinished, settled against ComfyUI.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::Jobs;
use super::follow::{Follower, Listening};
use crate::codes::{Code, Failure};
use crate::jobs::recovery::{Driver, Orphaned};
use crate::model::{Backend, EventKind};
use crate::model::{Job, JobStatus};
use crate::store::JobChange;

/// ComfyUI's part in recovery ([`crate::jobs::recovery`]).
pub struct ComfyDriver(pub(in crate::jobs) Jobs);

impl Driver for ComfyDriver {
    fn backend(&self) -> Backend {
        Backend::Comfy
    }

    /// A job that has a backend may have reached it: only an instance that can ask that ComfyUI settles it.
    fn reaches(&self, job: &Job) -> bool {
        match &job.backend_url {
            Some(url) => self.0.backends.iter().any(|b| &b.backend().origin() == url),
            None => job.comfy_prompt_id.is_none(),
        }
    }

    fn settle(&self, jobs: Vec<Job>, why: Orphaned) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            match why {
                Orphaned::Restart => self.0.settle_after_restart(jobs).await,
                Orphaned::TakenOver => {
                    // Each in the background: watching a job taken over lasts until it ends.
                    for job in jobs {
                        let this = self.0.clone();
                        self.0
                            .background()
                            .spawn(async move { this.settle_taken_over(job).await });
                    }
                    Vec::new()
                }
            }
        })
    }
}

impl Jobs {
    /// After a restart: jobs left queued, submitted or running are settled against ComfyUI. Finished runs are
    /// collected from `/history`, runs still in `/queue` are followed again (the job's client id is derived from
    /// its id, so ComfyUI's events reach the new socket), queued jobs ComfyUI never received are sent, and
    /// anything else is `backend_lost`. Answers the ids of those that wait for their ComfyUI to answer.
    async fn settle_after_restart(&self, unfinished: Vec<Job>) -> Vec<String> {
        let mut queues: HashMap<String, Option<crate::comfy::api::Queue>> = HashMap::new();
        let mut left = Vec::new();
        for job in unfinished {
            let gateway = self.backend_of(&job).clone();
            let origin = gateway.backend().origin();
            if !queues.contains_key(&origin) {
                let queue = gateway.queue().await.ok();
                queues.insert(origin.clone(), queue);
            }
            let Some(queued) = queues[&origin].as_ref() else {
                left.push(job.id.clone());
                continue;
            };
            let workflow = self.stored_workflow(&job.id).await;
            // The prompt id, or, for a job whose submit was cut short, whatever ComfyUI queued under its id.
            let found = queued.prompts().find(|prompt| {
                job.comfy_prompt_id.as_deref() == Some(prompt.prompt_id.as_str())
                    || prompt.job_id.as_deref() == Some(job.id.as_str())
            });
            if let Some(prompt) = found {
                let prompt_id = prompt.prompt_id.clone();
                let link = self.link(&gateway);
                match link.ready(Duration::from_secs(10)).await.ok() {
                    Some(_) => {
                        let heard = link.register(&prompt_id);
                        let change = JobChange {
                            comfy_prompt_id: Some(prompt_id.clone()),
                            ..Default::default()
                        };
                        self.ledger.change(&job.id, EventKind::State, change).await;
                        let listening = Listening { link, heard };
                        self.follow(gateway.clone(), &job.id, &prompt_id, &workflow, listening);
                    }
                    None => left.push(job.id.clone()),
                }
                continue;
            }
            if let Some(prompt_id) = &job.comfy_prompt_id {
                let follower = Follower::new(
                    self.clone(),
                    gateway.clone(),
                    job.id.clone(),
                    prompt_id.clone(),
                    &workflow,
                );
                match follower.history_entry().await {
                    Some(_) => follower.collect_outputs().await,
                    None => {
                        self.lose(
                            &job.id,
                            Code::BackendLost,
                            "ComfyUI no longer knows the job (it was restarted?)",
                        )
                        .await;
                    }
                }
                continue;
            }
            // Recorded, reserved, and cut off while being sent: it may have been charged, so it is never resent.
            if job.cost_usd.is_some() {
                self.leave_cut_off_paid_job(&job.id, "Orchestrator stopped")
                    .await;
                continue;
            }
            // Recorded but never accepted by ComfyUI: a local run costs nothing, so it is sent now.
            if let Err(error) = self.send_to_comfy(job.clone(), &workflow).await {
                tracing::warn!(job = %job.id, %error, "resubmitting a job after a restart failed");
            }
        }
        left
    }

    /// A paid job reserved and cut off while it was being sent (`who` stopped): it may have been charged, so it is
    /// never sent again; `needs_reconcile`, for a person to check.
    pub(super) async fn leave_cut_off_paid_job(&self, id: &str, who: &str) {
        let message = format!(
            "{who} while this paid workflow was being sent to ComfyUI. It may have been charged; it is not sent \
             again. Check ComfyUI's queue and the Comfy.org account."
        );
        let change = JobChange {
            status: Some(JobStatus::NeedsReconcile),
            error: Some(Failure::new(Code::SubmitInterrupted, message).into_json()),
            ..Default::default()
        };
        self.ledger.change(id, EventKind::State, change).await;
    }
}
