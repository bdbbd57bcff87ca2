//! After a restart: the jobs an earlier process left unfinished, settled against ComfyUI.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::follow::{Follower, Listening};
use super::{JobError, Jobs};
use crate::codes::{Code, Failure};
use crate::model::{Backend, EventKind};
use crate::model::{Job, JobStatus};
use crate::store::JobChange;

impl Jobs {
    /// After a restart: every job left queued, submitted or running is settled against ComfyUI. Finished runs are
    /// collected from `/history`, runs still in `/queue` are followed again (the job's client id is derived from
    /// its id, so ComfyUI's events reach the new socket), queued jobs ComfyUI never received are sent, and
    /// anything else is `backend_lost`. While ComfyUI does not answer, it tries again every 10 s.
    pub async fn reconcile(self) {
        loop {
            match self.reconcile_once().await {
                Ok(0) => return,
                Ok(left) => tracing::info!(left, "jobs wait for ComfyUI to be reconciled"),
                Err(error) => tracing::warn!(%error, "cannot reconcile jobs yet"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(10)) => {}
                () = self.background.stopping() => return,
            }
        }
    }

    /// One pass; answers how many jobs are still unsettled.
    async fn reconcile_once(&self) -> Result<usize, JobError> {
        // Jobs this process is following already (submitted since start-up) are not touched.
        let unfinished: Vec<Job> = {
            let jobs = self.store.unfinished_jobs().await?;
            let followed = self.followers.lock().unwrap_or_else(|p| p.into_inner());
            jobs.into_iter()
                .filter(|j| {
                    j.backend == Backend::Comfy
                        && j.created_at < self.started_at
                        && !followed.contains_key(&j.id)
                })
                .collect()
        };
        let mut queues: HashMap<String, Option<crate::comfy::api::Queue>> = HashMap::new();
        let mut left = 0;
        for job in unfinished {
            // This instance's now (its own from before the restart, or nobody's); on PostgreSQL a job another
            // instance claimed meanwhile is left to it. On SQLite there is no other instance: every job left
            // unfinished is this one's, whatever name it had before.
            let until = crate::store::lease_until(self.lease);
            let claimed = self
                .store
                .claim_job(&job.id, &self.instance, &until)
                .await?;
            if !claimed && self.store.engine() == crate::config::Engine::Postgres {
                continue;
            }
            if !claimed {
                self.store
                    .force_claim(&job.id, &self.instance, &until)
                    .await?;
            }
            let gateway = self.backend_of(&job).clone();
            let origin = gateway.backend().origin();
            if !queues.contains_key(&origin) {
                let queue = gateway.queue().await.ok();
                queues.insert(origin.clone(), queue);
            }
            let Some(queued) = queues[&origin].as_ref() else {
                left += 1;
                continue;
            };
            let workflow = self.store.workflow(&job.id).await?.unwrap_or(Value::Null);
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
                        self.change(&job.id, EventKind::State, change).await;
                        let listening = Listening { link, heard };
                        self.follow(gateway.clone(), &job.id, &prompt_id, &workflow, listening);
                    }
                    None => left += 1,
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
        Ok(left)
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
        self.change(id, EventKind::State, change).await;
    }
}
