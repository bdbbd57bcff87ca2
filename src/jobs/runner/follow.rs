//! Following one prompt over ComfyUI's WebSocket to its end; what an event means is decided in [`super::track`].

use std::time::Duration;

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::Jobs;
use super::socket::{Heard, Link};
use super::track::{End, Step, Track};
use crate::codes::Code;
use crate::comfy::proxy::ComfyGateway;
use crate::jobs::ledger::finished;
use crate::model::EventKind;
use crate::model::JobStatus;
use crate::store::JobChange;

/// How long a follower waits for its backend's link to come back after it dropped: about the link's back-off.
const REJOIN_WITHIN: Duration = Duration::from_secs(30);

/// Follows one prompt to its end.
pub(super) struct Follower {
    pub(super) jobs: Jobs,
    /// The ComfyUI the job went to.
    pub(super) gateway: ComfyGateway,
    pub(super) job_id: String,
    pub(super) prompt_id: String,
    track: Track,
}

/// A prompt registered on its backend's link, ready to be followed.
pub(super) struct Listening {
    pub(super) link: Arc<Link>,
    pub(super) heard: mpsc::UnboundedReceiver<Heard>,
}

impl Jobs {
    pub(super) fn follow(
        &self,
        gateway: ComfyGateway,
        job_id: &str,
        prompt_id: &str,
        workflow: &Value,
        listening: Listening,
    ) {
        let (stop, stopped) = oneshot::channel();
        self.followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job_id.to_owned(), stop);
        let follower = Follower::new(
            self.clone(),
            gateway.clone(),
            job_id.to_owned(),
            prompt_id.to_owned(),
            workflow,
        );
        self.background().spawn(follower.run(listening, stopped));
    }
}

impl Follower {
    pub(super) fn new(
        jobs: Jobs,
        gateway: ComfyGateway,
        job_id: String,
        prompt_id: String,
        workflow: &Value,
    ) -> Self {
        let track = Track::new(&prompt_id, workflow);
        Self {
            jobs,
            gateway,
            job_id,
            prompt_id,
            track,
        }
    }

    async fn run(mut self, listening: Listening, mut stopped: oneshot::Receiver<()>) {
        let Listening { link, mut heard } = listening;
        let generation = link.generation();
        let background = self.jobs.background().clone();
        let end = loop {
            let heard = tokio::select! {
                _ = &mut stopped => break End::Stopped,
                // A clean stop: the job is left as it is, for the next start's reconciliation.
                () = background.stopping() => break End::Stopped,
                heard = heard.recv() => heard,
            };
            let event = match heard {
                Some(Heard::Event(event)) => event,
                Some(Heard::Binary(frame)) => {
                    self.jobs.ledger.on_preview(&self.job_id, &frame).await;
                    continue;
                }
                // The link was silent and ComfyUI's queue no longer holds the prompt: its history may say it ended.
                Some(Heard::Check) => {
                    if self.history_entry().await.is_some() {
                        break End::Finished;
                    }
                    continue;
                }
                Some(Heard::Lost) | None => break End::SocketLost,
            };
            match self.track.on_event(&event) {
                Step::Nothing => {}
                Step::Change(kind, change) => {
                    self.jobs.ledger.change(&self.job_id, kind, change).await;
                }
                Step::End(end) => break end,
            }
        };
        // A lost link keeps the prompt registered: events that come once it is back wait in the channel.
        let listening = Listening { link, heard };
        if end != End::SocketLost {
            listening.link.unregister(&self.prompt_id);
        }
        self.jobs
            .followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.job_id);
        match end {
            End::Finished => self.collect_outputs().await,
            End::Failed(error) => self.jobs.ledger.fail(&self.job_id, error).await,
            End::Interrupted => {
                self.jobs
                    .ledger
                    .change(
                        &self.job_id,
                        EventKind::State,
                        finished(JobStatus::Cancelled),
                    )
                    .await;
            }
            End::SocketLost => self.resolve_without_socket(listening, generation).await,
            End::Stopped => {}
        }
    }

    /// The socket ended before the run did: the history says whether it finished; the queue whether ComfyUI
    /// still has it. Anything else is `backend_lost`.
    /// Reopens the WebSocket of a job ComfyUI still has, with back-off, and follows it again: the client id comes
    /// from the job's id, so ComfyUI sends the job's events to the new socket. A run that ended while the socket
    /// was down is collected from `/history`. Answers whether the job is taken care of.
    async fn rejoin(&self, listening: Listening, generation: u64) -> bool {
        let link = listening.link.clone();
        let reopened = tokio::select! {
            reopened = link.reopened(generation, REJOIN_WITHIN) => reopened,
            // Left for the next start's reconciliation, which settles it against ComfyUI.
            () = self.jobs.background().stopping() => return true,
        };
        if !reopened {
            return false;
        }
        {
            if self.history_entry().await.is_some() {
                link.unregister(&self.prompt_id);
                self.collect_outputs().await;
                return true;
            }
            tracing::info!(job = %self.job_id, "ComfyUI's WebSocket reopened; following the job again");
            let workflow = self
                .jobs
                .store()
                .workflow(&self.job_id)
                .await
                .ok()
                .flatten()
                .unwrap_or(Value::Null);
            self.jobs.follow(
                self.gateway.clone(),
                &self.job_id,
                &self.prompt_id,
                &workflow,
                listening,
            );
            true
        }
    }

    /// The backend died with this job still waiting in its queue (never started): it is sent once to another
    /// online backend, recorded as a `resubmitted` event. A job that had started is not: it may have done work.
    async fn fail_over(&self) -> bool {
        let store = self.jobs.store();
        let Ok(Some(job)) = store.job(&self.job_id).await else {
            return false;
        };
        // A paid job is never moved: ComfyUI may have charged it already.
        if job.status != JobStatus::Submitted || job.cost_usd.is_some() {
            return false;
        }
        let history = store
            .job_events_after(&self.job_id, 0, 10_000)
            .await
            .unwrap_or_default();
        if history.iter().any(|e| e.kind == EventKind::Resubmitted) {
            return false;
        }
        let dead = self.gateway.backend().origin();
        let Some(other) = self.jobs.choose_backend().await.cloned() else {
            return false;
        };
        let origin = other.backend().origin();
        if origin == dead || store.set_backend_url(&self.job_id, &origin).await.is_err() {
            return false;
        }
        self.jobs
            .ledger
            .change(&self.job_id, EventKind::Resubmitted, JobChange::default())
            .await;
        tracing::warn!(job = %self.job_id, from = %dead, to = %origin, "ComfyUI died before the job started: sent to another");
        let workflow = store
            .workflow(&self.job_id)
            .await
            .ok()
            .flatten()
            .unwrap_or(Value::Null);
        let Ok(Some(job)) = store.job(&self.job_id).await else {
            return false;
        };
        if let Err(error) = self.jobs.send_to_comfy(job, &workflow).await {
            tracing::warn!(job = %self.job_id, %error, "resubmitting to another ComfyUI failed");
        }
        true
    }

    async fn resolve_without_socket(&self, listening: Listening, generation: u64) {
        let link = listening.link.clone();
        let unregister = || link.unregister(&self.prompt_id);
        if self.history_entry().await.is_some() {
            unregister();
            return self.collect_outputs().await;
        }
        let reason = match self.gateway.queue().await {
            Ok(queue) => {
                if queue.holds(&self.prompt_id) {
                    if self.rejoin(listening, generation).await {
                        return;
                    }
                    "ComfyUI's WebSocket closed while the job was still queued or running, and could not be reopened"
                } else {
                    "ComfyUI no longer knows the job (it was restarted?)"
                }
            }
            Err(_) => {
                unregister();
                if self.fail_over().await {
                    return;
                }
                "ComfyUI stopped answering while the job ran"
            }
        };
        unregister();
        self.jobs
            .lose(&self.job_id, Code::BackendLost, reason)
            .await;
    }
}
