//! This instance among the others on one store: its heartbeat, which renews the leases of the jobs it follows, and
//! settling the jobs it took over from an instance whose leases ran out (it died; `jobs::recovery` takes them). The
//! fleet's event pump is the ledger's.
//!
//! A job taken over is settled by the rules of a restart's reconciliation: one that never reached ComfyUI goes back
//! to the fleet's queue (a paid one becomes `needs_reconcile`: it may have been charged); one ComfyUI finished is
//! recorded with its outputs; one still in ComfyUI's queue is watched there until it ends; one ComfyUI no longer
//! knows is `backend_lost`. ComfyUI sends a prompt's events only to the socket that posted it, which died with its
//! instance: a job taken over is watched through `/history` and `/queue`, without its progress.

use std::time::Duration;

use serde_json::{Value, json};

use super::Jobs;
use super::follow::Follower;
use crate::clock::now;
use crate::codes::Code;
use crate::comfy::proxy::ComfyGateway;
use crate::model::{EventKind, Job, JobStatus};
use crate::store::{Instance, JobChange};

/// How often a job taken over is looked for in its ComfyUI's history and queue.
const WATCH_EVERY: Duration = Duration::from_secs(1);

impl Jobs {
    /// This instance's name in the fleet.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Registers this instance, reachable at `url`, then beats every third of a lease: the backends as it sees
    /// them, every lease it holds renewed (one statement), the jobs of instances whose leases ran out taken
    /// over, and the files of its jobs deleted through other instances removed. Ends when the server stops, or
    /// when another process, older, turns out to beat under this name (`name_taken` is then cancelled).
    pub async fn keep_fleet(self, url: String, name_taken: tokio_util::sync::CancellationToken) {
        let started_at = now();
        let every = self.lease / 3;
        let mut beaten = false;
        loop {
            if beaten && self.name_taken_by_an_older_process(&started_at).await {
                name_taken.cancel();
                return;
            }
            beaten = true;
            let instance = Instance {
                id: self.instance.to_string(),
                url: url.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at: started_at.clone(),
                heartbeat_at: now(),
                backends: self.backend_states(),
            };
            let until = crate::store::lease_until(self.lease);
            let beat = match self.store().register_instance(&instance).await {
                Ok(()) => self.store().renew_leases(&self.instance, &until).await,
                Err(error) => Err(error),
            };
            if let Err(error) = beat {
                tracing::warn!(%error, "cannot record this instance's heartbeat");
            }
            // Alone on SQLite, every unfinished job is this instance's, settled at its start (the jobs of an
            // instance that died are taken over by `jobs::recovery`).
            if self.store().engine() == crate::config::Engine::Postgres {
                self.remove_deleted_outputs().await;
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.background().stopping() => break,
            }
        }
        let stale_at = chrono::Utc::now() - self.lease - Duration::from_secs(1);
        let stale_at = crate::clock::timestamp(stale_at);
        if let Err(error) = self
            .store()
            .mark_stopped(&self.instance, &started_at, &stale_at)
            .await
        {
            tracing::warn!(%error, "cannot record this instance's stop");
        }
    }

    /// Whether another process beat under this instance's name since this one's last beat (two started at once, so
    /// neither saw the other's heartbeat at its start), and started first: this one, the younger, then stops. The
    /// older goes on; the younger finds this out at its own next beat.
    async fn name_taken_by_an_older_process(&self, started_at: &str) -> bool {
        let Ok(instances) = self.store().instances().await else {
            return false;
        };
        let Some(row) = instances.iter().find(|i| *i.id == *self.instance) else {
            return false;
        };
        if row.started_at == started_at {
            return false;
        }
        if row.started_at.as_str() < started_at {
            tracing::error!(instance = %self.instance, "another Orchestrator, started earlier, runs under this instance's name: stopping; give each its own ORCH_INSTANCE_ID");
            return true;
        }
        tracing::warn!(instance = %self.instance, "another Orchestrator started under this instance's name after this one; it will stop");
        false
    }

    /// Each backend as this instance sees it now, from its WebSocket (no request of its own): `[{url, online}]`,
    /// `online` null for a backend no job has needed yet.
    fn backend_states(&self) -> Value {
        let states = self.backends.iter().map(|backend| {
            let url = backend.backend().origin();
            json!({ "online": self.links.is_up(&url), "url": url })
        });
        Value::Array(states.collect())
    }

    /// A job taken over from an instance that died, settled by the rules of a restart's reconciliation.
    pub(super) async fn settle_taken_over(self, job: Job) {
        // Re-read: the row as it is now that it is this instance's.
        let job = match self.store().job(&job.id).await {
            Ok(Some(job)) if !job.status.is_final() => job,
            _ => return,
        };
        let mut prompt_id = job.comfy_prompt_id.clone();
        // Posted, and cut off before ComfyUI's answer was recorded: ComfyUI's queue or history may hold it under
        // the job's id (`extra_data.orchestrator_job`).
        if prompt_id.is_none()
            && job.backend_url.is_some()
            && let Some(found) = self.posted_under_job_id(&job).await
        {
            let change = JobChange {
                comfy_prompt_id: Some(found.clone()),
                ..Default::default()
            };
            self.ledger.change(&job.id, EventKind::State, change).await;
            prompt_id = Some(found);
        }
        let Some(prompt_id) = prompt_id else {
            if job.cost_usd.is_some() {
                self.leave_cut_off_paid_job(
                    &job.id,
                    "The Orchestrator instance sending it stopped",
                )
                .await;
                return;
            }
            // Never reached ComfyUI. One with a backend (its input images are there) is sent there now, as after a
            // restart; one without goes back to the fleet's queue, for whichever instance has a backend.
            if job.backend_url.is_some() {
                let workflow = self.stored_workflow(&job.id).await;
                if let Err(error) = self.send_to_comfy(job.clone(), &workflow).await {
                    tracing::warn!(job = %job.id, %error, "sending a job taken over failed");
                }
                return;
            }
            match self.store().requeue(&job.id).await {
                Ok(true) => self.dispatch_wake.notify_one(),
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(job = %job.id, %error, "cannot requeue a job taken over")
                }
            }
            return;
        };
        let gateway = self.backend_of(&job).clone();
        let workflow = self.stored_workflow(&job.id).await;
        let follower = Follower::new(
            self.clone(),
            gateway.clone(),
            job.id.clone(),
            prompt_id.clone(),
            &workflow,
        );
        self.watch(&follower, &gateway, &job, &prompt_id).await;
    }

    /// The prompt ComfyUI holds, in its queue or its recent history, for job `job` (posted with its id in
    /// `extra_data.orchestrator_job`).
    async fn posted_under_job_id(&self, job: &Job) -> Option<String> {
        let gateway = self.backend_of(job);
        let queue = gateway.queue().await.ok()?;
        let queued = queue
            .prompts()
            .find(|prompt| prompt.job_id.as_deref() == Some(job.id.as_str()));
        if let Some(prompt) = queued {
            return Some(prompt.prompt_id.clone());
        }
        gateway.history().await.ok()?.posted_for_job(&job.id)
    }

    /// Watches a prompt another instance posted until it ends: its history, else its place in the queue.
    async fn watch(&self, follower: &Follower, gateway: &ComfyGateway, job: &Job, prompt_id: &str) {
        let mut running = job.status == JobStatus::Running;
        loop {
            if follower.history_entry().await.is_some() {
                follower.collect_outputs().await;
                return;
            }
            if let Ok(queue) = gateway.queue().await {
                if queue.is_running(prompt_id) {
                    if !running {
                        running = true;
                        let change = JobChange {
                            status: Some(JobStatus::Running),
                            started: true,
                            ..Default::default()
                        };
                        self.ledger.change(&job.id, EventKind::State, change).await;
                    }
                } else if !queue.is_pending(prompt_id) {
                    // Out of the queue: finished between the two looks, or gone.
                    if follower.history_entry().await.is_some() {
                        follower.collect_outputs().await;
                    } else {
                        self.lose(
                            &job.id,
                            Code::BackendLost,
                            "ComfyUI no longer knows the job (it was restarted?)",
                        )
                        .await;
                    }
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(WATCH_EVERY) => {}
                () = self.background().stopping() => return,
            }
        }
    }
}
