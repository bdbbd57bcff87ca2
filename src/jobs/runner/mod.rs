//! ComfyUI's driver: a job's life on ComfyUI, submitted, followed over ComfyUI's WebSocket, its outputs fetched;
//! every change recorded through the ledger ([`crate::jobs::ledger`]).
//!
//! Each backend has one WebSocket, shared by every job there ([`socket`]): it is up before a prompt is posted, and
//! the prompt's id, chosen by Orchestrator, is routed before the prompt exists, so no event of the run is missed.
//! The end of a run is ComfyUI's `executing {node: null}` for the prompt, sent after the history is written: the outputs are then read from `/history/{id}` (the one authoritative list: a cached run names files
//! of an earlier one) and downloaded through `/view` before the job is `succeeded`, so a succeeded job always has
//! its files. A socket that ends before that is resolved through `/history` and `/queue`: finished work is
//! recorded, work ComfyUI no longer knows becomes `backend_lost`, never `succeeded`.
//!
//! - [`dispatch`]: choosing a backend, submitting (with the money gate), the queue of jobs waiting for one;
//! - [`socket`]: each backend's one WebSocket, messages routed to jobs by prompt id, the silence check;
//! - [`follow`]: a job's follower, which applies what [`track`] (plain code, no sockets) decides about what it hears;
//! - [`outputs`]: reading a run's outputs from `/history` and downloading them;
//! - [`reconcile`]: settling, after a restart, the jobs an earlier process left unfinished;
//! - [`fleet`]: this instance among others on one store: its heartbeat and leases, watching the jobs taken over
//!   from an instance that died;
//! - [`exits`]: why a job's supervised ComfyUI went away (crash forensics for its error).

mod dispatch;
mod exits;
mod fleet;
mod follow;
mod outputs;
mod reconcile;
mod socket;
mod spend;
#[cfg(test)]
mod tests;
pub mod thumbnails;
mod track;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use crate::codes::{Code, Failure};
use crate::comfy::error::ComfyError;
use crate::comfy::nodes::Unclassified;
use crate::comfy::proxy::ComfyGateway;
use crate::model::{Backend, EventKind};
use crate::model::{Job, JobStatus};
use crate::money::refusal::Refusal;
use crate::service::ServiceStatus;
use crate::store::{Store, StoreError};

use super::ledger::{Ledger, finished};

use exits::{SupervisedBackend, describe_exit};
pub use outputs::safe_file_name;
pub use reconcile::ComfyDriver;

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

/// A money rule's refusal, as a job error.
pub(crate) fn refused(refusal: Refusal) -> JobError {
    JobError::Refused(Box::new(refusal))
}

impl From<Refusal> for JobError {
    fn from(refusal: Refusal) -> Self {
        refused(refusal)
    }
}

impl From<Unclassified> for JobError {
    fn from(problem: Unclassified) -> Self {
        match problem {
            Unclassified::NotAWorkflow => refused(Refusal::invalid(
                "workflow",
                "must be an object of nodes, each with a class_type (ComfyUI's API format)",
            )),
            Unclassified::UnknownClasses(unknown) => Self::UnknownClasses(unknown),
        }
    }
}

/// The job service: shared by every serving thread.
#[derive(Clone)]
pub struct Jobs {
    /// Every configured ComfyUI; a job goes to the online one with the shortest queue.
    pub(in crate::jobs) backends: Arc<Vec<ComfyGateway>>,
    /// The money gate's state: node catalogs, settings, the Comfy.org key, the checkout.
    pub(in crate::jobs) money: Arc<super::gate::Money>,
    outputs: PathBuf,
    /// Uploaded assets (Comfy API v2), whose references a workflow may carry.
    pub(in crate::jobs) assets: crate::assets::Assets,
    /// Where every change to a job is recorded and announced.
    pub(in crate::jobs) ledger: Ledger,
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
    /// When this process began: only jobs recorded before it are reconciled. A job this process records is its own
    /// to submit and follow, even in the moment between being recorded and being followed.
    pub(in crate::jobs) started_at: String,
    /// The ComfyUI Orchestrator supervises, when it does: a job that dies with it carries its exit record (code or
    /// signal, uptime, last log lines) in its error, so the user sees why without opening the log.
    supervised: Option<SupervisedBackend>,
    /// The gallery's thumbnails of the outputs kept here.
    thumbnails: Arc<thumbnails::Thumbnails>,
}

impl Jobs {
    pub fn new(
        ledger: Ledger,
        backends: Vec<ComfyGateway>,
        outputs: PathBuf,
        money: super::gate::Money,
        assets: crate::assets::Assets,
    ) -> Self {
        assert!(
            !backends.is_empty(),
            "the configuration has at least one ComfyUI"
        );
        let (instance, lease) = ledger
            .store()
            .claimant()
            .unwrap_or(("local", Duration::from_secs(30)));
        let instance: Arc<str> = instance.into();
        let client_id = stable_client_id(&instance, &outputs).into();
        Self {
            thumbnails: Arc::new(thumbnails::Thumbnails::new(outputs.clone())),
            links: socket::Links::default(),
            client_id,
            backends: Arc::new(backends),
            money: Arc::new(money),
            outputs,
            assets,
            followers: Arc::default(),
            instance,
            lease,
            dispatch_wake: Arc::default(),
            started_at: crate::clock::now(),
            supervised: None,
            ledger,
        }
    }

    /// The shared link to `gateway`'s ComfyUI, opened the first time it is asked for.
    fn link(&self, gateway: &ComfyGateway) -> Arc<socket::Link> {
        self.links.of(gateway, &self.client_id, self.background())
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
        self.ledger.background()
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

    /// The money gate: node prices and confirmation tokens.
    pub(crate) fn gate(&self) -> &super::gate::Gate {
        &self.money.gate
    }

    /// Every configured ComfyUI's origin, for errors that say none answered.
    pub(in crate::jobs) fn origins(&self) -> String {
        self.backends
            .iter()
            .map(|b| b.backend().origin())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where every change to a job is recorded and announced.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn store(&self) -> &Store {
        self.ledger.store()
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
            .store()
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
            self.ledger
                .change(id, EventKind::State, finished(JobStatus::Cancelled))
                .await;
            return self
                .store()
                .job(id)
                .await?
                .ok_or_else(|| JobError::NotFound(id.to_owned()));
        };
        // Running: the follower records `cancelled` when ComfyUI reports the interrupt.
        if self.take_out_of_comfy(&job, &prompt_id).await? {
            self.ledger
                .change(id, EventKind::State, finished(JobStatus::Cancelled))
                .await;
        }
        self.store()
            .job(id)
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))
    }

    /// Takes a job's prompt out of ComfyUI: deleted from its queue while it waits there (its follower stopped:
    /// nothing will come of it), interrupted while it runs (its follower sees the end). Answers whether it waited.
    pub(in crate::jobs) async fn take_out_of_comfy(
        &self,
        job: &Job,
        prompt_id: &str,
    ) -> Result<bool, JobError> {
        let backend = self.backend_of(job);
        if !backend.queue().await?.is_pending(prompt_id) {
            backend.interrupt(prompt_id).await?;
            return Ok(false);
        }
        backend.delete_queued(prompt_id).await?;
        if let Some(stop) = self
            .followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job.id)
        {
            let _ = stop.send(());
        }
        Ok(true)
    }

    /// The backend no longer has the job: `backend_lost`, with why (and how the supervised ComfyUI ended, when
    /// that ended it).
    pub(crate) async fn lose(&self, id: &str, code: Code, message: &str) {
        let mut error = Failure::new(code, message).into_json();
        if let Some(exit) = self.exit_that_ended(id).await {
            error["message"] = json!(format!("{message}: ComfyUI {}", describe_exit(&exit)));
            error["exit"] = json!(exit);
        }
        self.ledger.lose(id, error).await;
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
