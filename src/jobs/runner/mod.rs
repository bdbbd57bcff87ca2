//! A job's life on ComfyUI: recorded, submitted, followed over ComfyUI's WebSocket, its outputs fetched.
//!
//! Each backend has one WebSocket, shared by every job there ([`socket`]): it is up before a prompt is posted, and
//! the prompt's id, chosen by Orchestrator, is routed before the prompt exists, so no event of the run is missed. The end of a run is ComfyUI's `executing {node: null}` for the prompt, sent after the history is
//! written: the outputs are then read from `/history/{id}` (the one authoritative list: a cached run names files
//! of an earlier one) and downloaded through `/view` before the job is `succeeded`, so a succeeded job always has
//! its files. A socket that ends before that is resolved through `/history` and `/queue`: finished work is
//! recorded, work ComfyUI no longer knows becomes `backend_lost`, never `succeeded`.

//!
//! - [`dispatch`]: choosing a backend, submitting (with the money gate), the queue of jobs waiting for one;
//! - [`socket`]: each backend's one WebSocket, messages routed to jobs by prompt id, the silence check;
//! - [`follow`]: a job's follower, which applies what [`track`] (plain code, no sockets) decides about what it hears;
//! - [`outputs`]: reading a run's outputs from `/history` and downloading them;
//! - [`reconcile`]: settling, after a restart, the jobs an earlier process left unfinished;
//! - [`fleet`]: this instance among others on one store: its heartbeat and leases, taking over the jobs of an
//!   instance that died, and (PostgreSQL) every instance's events delivered to this one's listeners;
//! - [`exits`]: why a job's supervised ComfyUI went away (crash forensics for its error).

mod dispatch;
mod exits;
mod fleet;
mod follow;
mod outputs;
pub mod preview;
mod reconcile;
mod socket;
#[cfg(test)]
mod tests;
pub mod thumbnails;
mod track;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot, watch};

use crate::codes::{Code, Failure};
use crate::comfy::error::ComfyError;
use crate::comfy::proxy::ComfyGateway;
use crate::model::{Backend, EventKind};
use crate::model::{Job, JobStatus};
use crate::money::refusal::Refusal;
use crate::service::ServiceStatus;
use crate::store::{JobChange, Store, StoreError};

use exits::{SupervisedBackend, describe_exit};
pub use outputs::safe_file_name;
pub use reconcile::ComfyDriver;

/// One change to a job, as `/api/jobs/{id}/events` sends it.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    /// `state`, `progress` or `output`.
    pub kind: EventKind,
    pub job: Job,
    /// The event's number among all events, and among its job's.
    pub seq: i64,
    pub job_seq: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("ComfyUI refused the workflow: {message}")]
    Rejected {
        job: Box<Job>,
        message: String,
        details: Value,
    },
    #[error(transparent)]
    Comfy(#[from] ComfyError),
    #[error("the store failed")]
    Store(#[from] StoreError),
    #[error("the assets failed")]
    Asset(#[from] crate::assets::AssetError),
    #[error("no job {0}")]
    NotFound(String),
    #[error("the job is already {0}")]
    Finished(&'static str),
    #[error("a {0} job cannot be cancelled")]
    NotCancellable(String),
    /// A money rule refused the request (generation disabled, no confirmation, over budget, …).
    #[error(transparent)]
    Refused(Box<Refusal>),
    /// The task doing the work ended without an answer (it panicked).
    #[error("internal error")]
    Task(#[from] tokio::task::JoinError),
    /// Node ids and classes the ComfyUI does not list: refused as ComfyUI would refuse them.
    #[error("ComfyUI has no node class {}", .0.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>().join(", "))]
    UnknownClasses(Vec<(String, String)>),
    /// The workflow names assets that are not here (ids, or what is wrong with a reference).
    #[error("the workflow names assets that are not here: {}", .0.join(", "))]
    MissingAssets(Vec<String>),
    /// The workflow has paid nodes and the job no approval: it waits for one, nothing was sent.
    #[error("the job waits for a confirmation of its paid nodes")]
    AwaitingConfirmation(Box<Job>),
}

/// The job service: shared by every serving thread.
#[derive(Clone)]
pub struct Jobs {
    pub(in crate::jobs) store: Store,
    /// Every configured ComfyUI; a job goes to the online one with the shortest queue.
    pub(in crate::jobs) backends: Arc<Vec<ComfyGateway>>,
    /// The money gate's state: node catalogs, settings, the Comfy.org key, idempotency locks.
    pub(in crate::jobs) money: Arc<super::paid::Money>,
    outputs: PathBuf,
    /// Uploaded assets (Comfy API v2), whose references a workflow may carry.
    pub(in crate::jobs) assets: crate::assets::Assets,
    events: broadcast::Sender<JobEvent>,
    /// Each backend's shared WebSocket, and the client id every prompt is posted with.
    links: socket::Links,
    client_id: Arc<str>,
    /// Followers to stop when a queued job is cancelled (ComfyUI then never sends anything for it).
    followers: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
    /// This instance's name in job claims, and how long a claim lasts unrenewed.
    pub(in crate::jobs) instance: Arc<str>,
    pub(in crate::jobs) lease: Duration,
    /// Wakes the dispatcher: a job was queued for the fleet here (it also looks every couple of seconds, for
    /// jobs other instances queued).
    dispatch_wake: Arc<tokio::sync::Notify>,
    /// Wakes the event pump (PostgreSQL): an event was stored here.
    event_wake: Arc<tokio::sync::Notify>,
    /// When each running job last sent a progress event, for coalescing.
    last_progress: Arc<Mutex<HashMap<String, std::time::Instant>>>,
    /// The latest progress of a job heard within [`PROGRESS_EVERY`] of its last write: written when that time is
    /// up, or with the job's next state change, whichever comes first.
    pending_progress: Arc<Mutex<HashMap<String, JobChange>>>,
    /// When this process began: only jobs recorded before it are reconciled. A job this process records is its own
    /// to submit and follow, even in the moment between being recorded and being followed.
    pub(in crate::jobs) started_at: String,
    /// The ComfyUI Orchestrator supervises, when it does: a job that dies with it carries its exit record (code or
    /// signal, uptime, last log lines) in its error, so the user sees why without opening the log.
    supervised: Option<SupervisedBackend>,
    /// Held from numbering an event to broadcasting it, so listeners get events in number order: `/api/events`
    /// skips anything numbered below what it has sent, and would lose an event that overtook another.
    event_order: Arc<tokio::sync::Mutex<()>>,
    /// Where followers, the dispatcher and paid submits run: the control runtime, under one tracker.
    pub(in crate::jobs) background: crate::background::Background,
    /// The latest preview frame of each running job followed here.
    previews: Arc<preview::Previews>,
    /// The sender of `JOB_WEBHOOK_URL`'s deliveries, when one is configured.
    webhooks: Option<crate::jobs::webhooks::Webhooks>,
    /// The gallery's thumbnails of the outputs kept here.
    thumbnails: Arc<thumbnails::Thumbnails>,
}

impl Jobs {
    pub fn new(
        store: Store,
        backends: Vec<ComfyGateway>,
        outputs: PathBuf,
        money: super::paid::Money,
        assets: crate::assets::Assets,
        background: crate::background::Background,
    ) -> Self {
        assert!(
            !backends.is_empty(),
            "the configuration has at least one ComfyUI"
        );
        let (events, _) = broadcast::channel(1024);
        let (instance, lease) = store
            .claimant()
            .unwrap_or(("local", Duration::from_secs(30)));
        let instance: Arc<str> = instance.into();
        let client_id = stable_client_id(&instance, &outputs).into();
        Self {
            thumbnails: Arc::new(thumbnails::Thumbnails::new(outputs.clone())),
            links: socket::Links::default(),
            client_id,
            store,
            backends: Arc::new(backends),
            money: Arc::new(money),
            outputs,
            assets,
            events,
            followers: Arc::default(),
            last_progress: Arc::default(),
            pending_progress: Arc::default(),
            instance,
            lease,
            dispatch_wake: Arc::default(),
            event_wake: Arc::default(),
            started_at: crate::clock::now(),
            supervised: None,
            event_order: Arc::default(),
            background,
            previews: Arc::default(),
            webhooks: None,
        }
    }

    /// Sends word of every job that ends with `webhooks` (the store owes each a delivery).
    pub fn with_webhooks(mut self, webhooks: crate::jobs::webhooks::Webhooks) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    pub fn webhooks(&self) -> Option<&crate::jobs::webhooks::Webhooks> {
        self.webhooks.as_ref()
    }

    /// The shared link to `gateway`'s ComfyUI, opened the first time it is asked for.
    fn link(&self, gateway: &ComfyGateway) -> Arc<socket::Link> {
        self.links.of(gateway, &self.client_id, &self.background)
    }

    /// ComfyUI's driver for the recovery loop.
    pub fn driver(&self) -> ComfyDriver {
        ComfyDriver(self.clone())
    }

    /// Whether this process follows job `id` (sent since it started).
    pub(in crate::jobs) fn is_followed(&self, id: &str) -> bool {
        self.followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// The background work of jobs (and of FLUX, which runs its jobs here too).
    pub fn background(&self) -> &crate::background::Background {
        &self.background
    }

    /// Tells the job service which backend Orchestrator supervises (`origin`), and where its status is published.
    pub fn with_supervised(
        mut self,
        origin: String,
        status: watch::Receiver<ServiceStatus>,
    ) -> Self {
        self.supervised = Some(SupervisedBackend { origin, status });
        self
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn assets(&self) -> &crate::assets::Assets {
        &self.assets
    }

    /// The folder of a job's files.
    pub fn output_dir(&self, job_id: &str) -> PathBuf {
        self.outputs.join(job_id)
    }

    /// One of a job's files, links resolved, when it exists inside the outputs folder (a link that points out of
    /// it is not served).
    pub fn output_file(&self, job_id: &str, name: &str) -> Option<PathBuf> {
        crate::fs_safe::resolve_within(&self.outputs, &format!("{job_id}/{name}"))
    }

    /// Cancels a job: removed from ComfyUI's queue while it waits there, interrupted while it runs.
    pub async fn cancel(&self, id: &str) -> Result<Job, JobError> {
        let job = self
            .store
            .job(id)
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
        if job.status.is_final() {
            return Err(JobError::Finished(job.status.as_str()));
        }
        if job.backend != Backend::Comfy {
            return Err(JobError::NotCancellable(job.backend.as_str().to_owned()));
        }
        let Some(prompt_id) = job.comfy_prompt_id.clone() else {
            self.change(id, EventKind::State, finished(JobStatus::Cancelled))
                .await;
            return self
                .store
                .job(id)
                .await?
                .ok_or_else(|| JobError::NotFound(id.to_owned()));
        };
        let queue = self.backend_of(&job).queue().await?;
        if queue.is_pending(&prompt_id) {
            self.backend_of(&job).delete_queued(&prompt_id).await?;
            if let Some(stop) = self
                .followers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id)
            {
                let _ = stop.send(());
            }
            self.change(id, EventKind::State, finished(JobStatus::Cancelled))
                .await;
        } else {
            // Running: the follower records `cancelled` when ComfyUI reports the interrupt.
            self.backend_of(&job).interrupt(&prompt_id).await?;
        }
        self.store
            .job(id)
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))
    }

    /// The backend no longer has the job: `backend_lost`, with why.
    pub(crate) async fn lose(&self, id: &str, code: Code, message: &str) {
        let mut error = Failure::new(code, message).into_json();
        if let Some(exit) = self.exit_that_ended(id).await {
            error["message"] = json!(format!("{message}: ComfyUI {}", describe_exit(&exit)));
            error["exit"] = json!(exit);
        }
        self.change(
            id,
            EventKind::State,
            JobChange {
                error: Some(error),
                ..finished(JobStatus::BackendLost)
            },
        )
        .await;
    }

    pub(crate) async fn fail(&self, id: &str, failure: Failure) {
        let change = JobChange {
            error: Some(failure.into_json()),
            ..finished(JobStatus::Failed)
        };
        self.change(id, EventKind::State, change).await;
    }

    /// Gives a paid job's reservation back: ComfyUI certainly did not take it.
    async fn release(&self, id: &str) {
        if let Err(error) = self.store.release_paid_job(id).await {
            tracing::error!(job = %id, %error, "cannot release a paid job ComfyUI did not take");
        }
    }

    /// Stores a change, numbers it as an event and tells the listeners. Progress alone is coalesced to at most
    /// one event per [`PROGRESS_EVERY`] per job (the job row always has the latest); state changes always pass.
    /// An error is stored without any Comfy.org credential (ComfyUI's `execution_error` echoes a failed node's
    /// inputs, hidden ones included).
    /// A finished job is not changed and gets no event; answers whether the change was recorded.
    pub(crate) async fn change(&self, id: &str, kind: EventKind, mut change: JobChange) -> bool {
        if let Some(error) = change.error.as_mut() {
            crate::comfy::credentials::strip(
                error,
                self.money.api_key.as_ref().map(|k| k.expose()),
            );
        }
        let Some(change) = self.coalesce(id, kind, change) else {
            return true;
        };
        match self.store.update_job(id, change).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(error) => {
                tracing::error!(job = id, %error, "cannot record a job change");
                return false;
            }
        }
        let Ok(Some(job)) = self.store.job(id).await else {
            return true;
        };
        {
            let mut last = self.last_progress.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            if kind == EventKind::Progress
                && last
                    .get(id)
                    .is_some_and(|at| now.duration_since(*at) < PROGRESS_EVERY)
            {
                return true;
            }
            if job.status.is_final() {
                last.remove(id);
                self.previews.forget(id);
                // Its delivery was written with the change: sent now rather than at the sender's next look.
                if let Some(webhooks) = &self.webhooks {
                    webhooks.wake();
                }
            } else {
                last.insert(id.to_owned(), now);
            }
        }
        self.announce(kind, job).await;
        true
    }

    /// Numbers an event of `job` and tells the listeners.
    async fn announce(&self, kind: EventKind, job: Job) {
        let id = job.id.clone();
        let id = id.as_str();
        let _in_order = self.event_order.lock().await;
        match self.store.insert_event(kind, &job).await {
            // A fleet's events reach every instance through the store, in the order of their numbers: the pump
            // sends this one with the others' (see [`fleet`]).
            Ok(_) if self.store.engine() == crate::config::Engine::Postgres => {
                self.event_wake.notify_one();
            }
            Ok(stored) => {
                let _ = self.events.send(JobEvent {
                    kind,
                    job,
                    seq: stored.seq,
                    job_seq: stored.job_seq,
                });
            }
            Err(error) => tracing::error!(job = id, %error, "cannot record a job event"),
        }
    }

    /// A binary frame ComfyUI sent while job `id` ran: kept when it is a preview, and announced as a `preview`
    /// event at most every [`preview::PREVIEW_EVERY`].
    pub(super) async fn on_preview(&self, id: &str, frame: &[u8]) {
        if !self.previews.keep(id, frame, std::time::Instant::now()) {
            return;
        }
        match self.store.job(id).await {
            Ok(Some(job)) if !job.status.is_final() => self.announce(EventKind::Preview, job).await,
            // Ended meanwhile: its outputs replace the preview.
            Ok(_) => self.previews.forget(id),
            Err(error) => {
                tracing::warn!(job = id, %error, "cannot read a job to announce its preview")
            }
        }
    }

    /// Job `id`'s latest preview image, while it runs on this instance.
    pub fn preview(&self, id: &str) -> Option<preview::Preview> {
        self.previews.get(id)
    }
}

/// At most this often a progress event per job: a 1,000-step sampler sends about 4 a second, not 1,000.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl Jobs {
    /// Progress is written at most once per [`PROGRESS_EVERY`] per job: a progress change that comes sooner is held
    /// (the newest replacing the one held) and written when the time is up; a state change takes the held
    /// progress along. Answers the change to write now, if any.
    fn coalesce(&self, id: &str, kind: EventKind, mut change: JobChange) -> Option<JobChange> {
        let mut pending = self
            .pending_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if kind != EventKind::Progress {
            if let Some(held) = pending.remove(id) {
                change.progress = change.progress.or(held.progress);
                change.current_node = change.current_node.or(held.current_node);
            }
            return Some(change);
        }
        let last = self.last_progress.lock().unwrap_or_else(|p| p.into_inner());
        let wait = last
            .get(id)
            .and_then(|at| PROGRESS_EVERY.checked_sub(at.elapsed()))
            .filter(|wait| !wait.is_zero());
        let Some(wait) = wait else {
            pending.remove(id);
            return Some(change);
        };
        if pending.insert(id.to_owned(), change).is_none() {
            let (jobs, id) = (self.clone(), id.to_owned());
            self.background.spawn(async move {
                tokio::time::sleep(wait).await;
                let held = jobs
                    .pending_progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(held) = held {
                    // Boxed: `change` awaits `coalesce`'s flush, which calls `change`.
                    Box::pin(jobs.change(&id, EventKind::Progress, held)).await;
                }
            });
        }
        None
    }
}

pub(crate) fn finished(status: JobStatus) -> JobChange {
    JobChange {
        status: Some(status),
        current_node: Some(None),
        finished: true,
        ..Default::default()
    }
}

/// The WebSocket client id of this Orchestrator: derived from its instance name and where it keeps its outputs,
/// so a restarted process gets the events of the prompts the last one posted, and two Orchestrators on one ComfyUI
/// (a fleet's instances on one shared data folder too) get their own.
fn stable_client_id(instance: &str, outputs: &std::path::Path) -> String {
    let named = format!("{instance}\n{}", outputs.to_string_lossy());
    let digest = ring::digest::digest(&ring::digest::SHA256, named.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("orchestrator-{hex}")
}
