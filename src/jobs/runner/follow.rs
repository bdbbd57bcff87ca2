//! Following one prompt over ComfyUI's WebSocket to its end; what an event means is decided in [`super::track`].

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use super::track::{End, Step, Track};
use super::{Jobs, finished};
use crate::codes::Code;
use crate::comfy::error::ComfyError;
use crate::comfy::proxy::ComfyGateway;
use crate::comfy::ws;
use crate::jobs::model::EventKind;
use crate::jobs::model::JobStatus;
use crate::store::JobChange;

/// How long a followed run may stay silent before its history is checked.
const SILENCE_CHECK: Duration = Duration::from_secs(15);

/// The WebSocket client id of a job: derived from its id, so a restarted Orchestrator can rejoin its events.
pub(super) fn client_id(job_id: &str) -> String {
    format!("orchestrator-{job_id}")
}

/// Opens the WebSocket a job is followed on, under the job's client id, and waits for ComfyUI's greeting (its
/// first `status` message): from then on every event of a prompt posted with that client id reaches it.
pub(super) async fn open_socket(
    gateway: &ComfyGateway,
    job_id: &str,
) -> Result<ws::UpstreamSocket, ComfyError> {
    const WITHIN: Duration = Duration::from_secs(10);
    let query = format!("clientId={}", client_id(job_id));
    let uri = gateway.upstream_uri("/ws", Some(&query))?;
    let mut socket = ws::connect_upstream(gateway.backend(), &uri, WITHIN).await?;
    if !ws::wait_for_greeting(&mut socket, WITHIN).await {
        return Err(ComfyError::BadResponse(
            "ComfyUI's WebSocket sent no greeting".into(),
        ));
    }
    Ok(socket)
}

/// Pauses between attempts to reopen a lost WebSocket: about half a minute in all.
const REJOIN_BACKOFF: [Duration; 6] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// Follows one prompt to its end.
pub(super) struct Follower {
    pub(super) jobs: Jobs,
    /// The ComfyUI the job went to.
    pub(super) gateway: ComfyGateway,
    pub(super) job_id: String,
    pub(super) prompt_id: String,
    track: Track,
}

impl Jobs {
    pub(super) fn follow(
        &self,
        gateway: ComfyGateway,
        job_id: &str,
        prompt_id: &str,
        workflow: &Value,
        socket: ws::UpstreamSocket,
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
        self.background.spawn(follower.run(socket, stopped));
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

    async fn run(mut self, mut socket: ws::UpstreamSocket, mut stopped: oneshot::Receiver<()>) {
        // Events about this prompt can stop arriving while the socket stays open (ComfyUI's reconnect hazard: an
        // old socket with the same client id closing late unregisters the new one). After a silence the history is
        // asked, so a finished run is never waited for forever.
        let mut heard_at = tokio::time::Instant::now();
        let background = self.jobs.background.clone();
        let end = loop {
            let message = tokio::select! {
                _ = &mut stopped => break End::Stopped,
                // A clean stop: the job is left as it is, for the next start's reconciliation.
                () = background.stopping() => break End::Stopped,
                message = socket.next() => message,
                () = tokio::time::sleep_until(heard_at + SILENCE_CHECK) => {
                    if self.history_entry().await.is_some() {
                        break End::Finished;
                    }
                    heard_at = tokio::time::Instant::now();
                    continue;
                }
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Binary(frame))) => {
                    if let Some(total) = self.track.on_binary(&frame) {
                        self.record_reported_cost(total).await;
                    }
                    continue;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::SocketLost,
                Some(Ok(_)) => continue,
            };
            let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            if self.track.concerns(&event) {
                heard_at = tokio::time::Instant::now();
            }
            match self.track.on_event(&event) {
                Step::Nothing => {}
                Step::Change(kind, change) => {
                    self.jobs.change(&self.job_id, kind, change).await;
                }
                Step::End(end) => break end,
            }
        };
        drop(socket);
        self.jobs
            .followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.job_id);
        match end {
            End::Finished => self.collect_outputs().await,
            End::Failed(error) => self.jobs.fail(&self.job_id, error).await,
            End::Interrupted => {
                self.jobs
                    .change(
                        &self.job_id,
                        EventKind::State,
                        finished(JobStatus::Cancelled),
                    )
                    .await;
            }
            End::SocketLost => self.resolve_without_socket().await,
            End::Stopped => {}
        }
        self.settle().await;
    }

    /// Once the run is over: the charge is settled at what the nodes reported, a node that reported nothing at its
    /// estimate (it may still have been charged). Until then the reservation holds the whole estimate, so a price
    /// reported by one node never frees budget another node of the run may still spend.
    async fn settle(&self) {
        if self.track.prices().is_empty() {
            return;
        }
        let Ok(Some(job)) = self.jobs.store.job(&self.job_id).await else {
            return;
        };
        let reported: i64 = self.track.prices().values().sum();
        let unreported: i64 = job
            .approval
            .as_ref()
            .and_then(|a| a["paidNodes"].as_array())
            .into_iter()
            .flatten()
            .filter(|n| {
                n["id"]
                    .as_str()
                    .is_none_or(|id| !self.track.prices().contains_key(id))
            })
            .filter_map(|n| n["priceUsd"].as_f64())
            .map(|usd| (usd * 1_000_000.0).round() as i64)
            .sum();
        if let Err(error) = self
            .jobs
            .store
            .settle_charge(&self.job_id, reported + unreported, reported)
            .await
        {
            tracing::error!(job = %self.job_id, %error, "cannot settle a paid job's charge");
        }
    }

    /// A paid node reported its price: the run's reported total is the job's actual cost.
    async fn record_reported_cost(&self, total: i64) {
        if let Err(error) = self
            .jobs
            .store
            .record_actual_cost(&self.job_id, total)
            .await
        {
            tracing::error!(job = %self.job_id, %error, "cannot record what a paid job cost");
            return;
        }
        tracing::info!(job = %self.job_id, actual_usd = total as f64 / 1e6, "a paid node reported its price");
        self.jobs
            .change(&self.job_id, EventKind::State, JobChange::default())
            .await;
    }

    /// The socket ended before the run did: the history says whether it finished; the queue whether ComfyUI
    /// still has it. Anything else is `backend_lost`.
    /// Reopens the WebSocket of a job ComfyUI still has, with back-off, and follows it again: the client id comes
    /// from the job's id, so ComfyUI sends the job's events to the new socket. A run that ended while the socket
    /// was down is collected from `/history`. Answers whether the job is taken care of.
    async fn rejoin(&self) -> bool {
        for pause in REJOIN_BACKOFF {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // Left for the next start's reconciliation, which settles it against ComfyUI.
                () = self.jobs.background.stopping() => return true,
            }
            let Ok(socket) = open_socket(&self.gateway, &self.job_id).await else {
                continue;
            };
            if self.history_entry().await.is_some() {
                self.collect_outputs().await;
                return true;
            }
            tracing::info!(job = %self.job_id, "ComfyUI's WebSocket reopened; following the job again");
            let workflow = self
                .jobs
                .store
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
                socket,
            );
            return true;
        }
        false
    }

    /// The backend died with this job still waiting in its queue (never started): it is sent once to another
    /// online backend, recorded as a `resubmitted` event. A job that had started is not: it may have done work.
    async fn fail_over(&self) -> bool {
        let store = &self.jobs.store;
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

    async fn resolve_without_socket(&self) {
        if self.history_entry().await.is_some() {
            return self.collect_outputs().await;
        }
        let reason = match self.gateway.get_json("/queue", 64 * 1024 * 1024).await {
            Ok(queue) => {
                let known = ["queue_running", "queue_pending"].iter().any(|k| {
                    queue[*k]
                        .as_array()
                        .is_some_and(|items| items.iter().any(|i| i[1] == self.prompt_id.as_str()))
                });
                if known {
                    if self.rejoin().await {
                        return;
                    }
                    "ComfyUI's WebSocket closed while the job was still queued or running, and could not be reopened"
                } else {
                    "ComfyUI no longer knows the job (it was restarted?)"
                }
            }
            Err(_) => {
                if self.fail_over().await {
                    return;
                }
                "ComfyUI stopped answering while the job ran"
            }
        };
        self.jobs
            .lose(&self.job_id, Code::BackendLost, reason)
            .await;
    }
}
