//! The job ledger: every change to a job, whatever its backend, stored and then told to whoever listens, as
//! numbered events in number order. The backends' drivers (ComfyUI's runner, FLUX) record what happens to their
//! jobs here and nowhere else.
//!
//! - [`progress`]: progress coalesced to a few events a second per job;
//! - [`preview`]: the latest preview frame of each running job, announced as `preview` events;
//! - [`pump`]: a fleet's events (PostgreSQL), read from the store and delivered to this instance's listeners;
//! - [`sent`]: what a driver's send came to ([`Sent`]), the job and its charge settled together.
//!
//! An ended job's webhook delivery is written with its change (by the store); the ledger wakes the sender.

pub mod preview;
mod progress;
mod pump;
mod sent;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::background::Background;
use crate::codes::Failure;
use crate::config::Secret;
use crate::jobs::webhooks::Webhooks;
use crate::model::{EventKind, Job, JobStatus};
use crate::store::{JobChange, Store};

pub use progress::PROGRESS_EVERY;
pub use sent::Sent;

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

/// The ledger: shared (cheaply cloned) by every driver and serving thread.
#[derive(Clone)]
pub struct Ledger {
    store: Store,
    events: broadcast::Sender<JobEvent>,
    /// Wakes the event pump (PostgreSQL): an event was stored here.
    event_wake: Arc<tokio::sync::Notify>,
    /// Held from numbering an event to broadcasting it, so listeners get events in number order: `/api/events`
    /// skips anything numbered below what it has sent, and would lose an event that overtook another.
    event_order: Arc<tokio::sync::Mutex<()>>,
    /// When each running job last sent a progress event, for coalescing.
    last_progress: Arc<Mutex<HashMap<String, std::time::Instant>>>,
    /// The latest progress of a job heard within [`PROGRESS_EVERY`] of its last write: written when that time is
    /// up, or with the job's next state change, whichever comes first.
    pending_progress: Arc<Mutex<HashMap<String, JobChange>>>,
    /// The latest preview frame of each running job followed here.
    previews: Arc<preview::Previews>,
    /// The sender of `JOB_WEBHOOK_URL`'s deliveries, when one is configured.
    webhooks: Option<Webhooks>,
    /// Where held progress is written when its time is up, under the server's one tracker.
    background: Background,
    /// Orchestrator's Comfy.org key: never stored in a job's error.
    secret: Option<Secret>,
}

impl Ledger {
    pub fn new(store: Store, background: Background, secret: Option<Secret>) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            store,
            events,
            event_wake: Arc::default(),
            event_order: Arc::default(),
            last_progress: Arc::default(),
            pending_progress: Arc::default(),
            previews: Arc::default(),
            webhooks: None,
            background,
            secret,
        }
    }

    /// Sends word of every job that ends with `webhooks` (the store owes each a delivery).
    pub fn with_webhooks(mut self, webhooks: Webhooks) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    pub fn webhooks(&self) -> Option<&Webhooks> {
        self.webhooks.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The background work of jobs, whatever their backend.
    pub fn background(&self) -> &Background {
        &self.background
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// Stores a change, numbers it as an event and tells the listeners. Progress alone is coalesced to at most
    /// one event per [`PROGRESS_EVERY`] per job (the job row always has the latest); state changes always pass.
    /// An error is stored without any Comfy.org credential (ComfyUI's `execution_error` echoes a failed node's
    /// inputs, hidden ones included).
    /// A finished job is not changed and gets no event; answers whether the change was recorded.
    pub async fn change(&self, id: &str, kind: EventKind, mut change: JobChange) -> bool {
        if let Some(error) = change.error.as_mut() {
            crate::comfy::credentials::strip(error, self.secret.as_ref().map(|k| k.expose()));
        }
        let Some(change) = self.coalesce(id, kind, change) else {
            return true;
        };
        let ends = change.status.is_some_and(JobStatus::is_final);
        match self.store.update_job(id, change).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(error) => {
                tracing::error!(job = id, %error, "cannot record a job change");
                return false;
            }
        }
        // However it ended, a paid ComfyUI job's charge becomes what its calls through the Comfy.org egress cost
        // (a call still awaiting Comfy.org's answer settles it again when it is answered).
        if ends && let Err(error) = self.store.settle_egress_charge(id).await {
            tracing::error!(job = id, %error, "cannot settle a paid job's charge");
        }
        let Ok(Some(job)) = self.store.job(id).await else {
            return true;
        };
        if !self.passes(id, kind, &job) {
            return true;
        }
        self.announce(kind, job).await;
        true
    }

    /// Whether a recorded change of `job` is announced (progress only every [`PROGRESS_EVERY`]); an ended job's
    /// progress, preview and webhook are seen to here.
    fn passes(&self, id: &str, kind: EventKind, job: &Job) -> bool {
        let mut last = self.last_progress.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if kind == EventKind::Progress
            && last
                .get(id)
                .is_some_and(|at| now.duration_since(*at) < PROGRESS_EVERY)
        {
            return false;
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
        true
    }

    /// The job failed, for the reason given.
    pub async fn fail(&self, id: &str, failure: Failure) {
        let change = JobChange {
            error: Some(failure.into_json()),
            ..finished(JobStatus::Failed)
        };
        self.change(id, EventKind::State, change).await;
    }

    /// Its backend no longer has the job: `backend_lost`, with `error` (a [`Failure`]'s JSON, and whatever the
    /// backend knows of why).
    pub async fn lose(&self, id: &str, error: Value) {
        let change = JobChange {
            error: Some(error),
            ..finished(JobStatus::BackendLost)
        };
        self.change(id, EventKind::State, change).await;
    }

    /// Numbers an event of `job` and tells the listeners.
    async fn announce(&self, kind: EventKind, job: Job) {
        let id = job.id.clone();
        let id = id.as_str();
        let _in_order = self.event_order.lock().await;
        match self.store.insert_event(kind, &job).await {
            // A fleet's events reach every instance through the store, in the order of their numbers: the pump
            // sends this one with the others' (see [`pump`]).
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

    /// A binary frame the backend sent while job `id` ran: kept when it is a preview, and announced as a
    /// `preview` event at most every [`preview::PREVIEW_EVERY`].
    pub async fn on_preview(&self, id: &str, frame: &[u8]) {
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

/// The change that ends a job with `status`.
pub fn finished(status: JobStatus) -> JobChange {
    JobChange {
        status: Some(status),
        current_node: Some(None),
        finished: true,
        ..Default::default()
    }
}
