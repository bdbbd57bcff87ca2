//! A job's life on ComfyUI: recorded, submitted, followed over ComfyUI's WebSocket, its outputs fetched.
//!
//! The WebSocket is opened before the prompt is posted, with a client id of the job's own, so no event of the run
//! is missed. The end of a run is ComfyUI's `executing {node: null}` for the prompt, sent after the history is
//! written: the outputs are then read from `/history/{id}` (the one authoritative list: a cached run names files
//! of an earlier one) and downloaded through `/view` before the job is `succeeded`, so a succeeded job always has
//! its files. A socket that ends before that is resolved through `/history` and `/queue`: finished work is
//! recorded, work ComfyUI no longer knows becomes `backend_lost`, never `succeeded`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use super::model::{Job, JobStatus, OutputFile};
use super::store::{JobChange, NewJob, Store, StoreError};
use crate::comfy::proxy::ComfyGateway;
use crate::comfy::ws;
use crate::error::ApiError;
use crate::service::{ExitRecord, ServiceState, ServiceStatus};

/// An input image to upload before the job is submitted.
pub struct Upload {
    pub bytes: bytes::Bytes,
    pub file_name: String,
    pub content_type: String,
    /// The `[node, input]` pairs that take the uploaded file's name.
    pub targets: Vec<(String, String)>,
}

/// One change to a job, as `/api/jobs/{id}/events` sends it.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    /// `state`, `progress` or `output`.
    pub kind: &'static str,
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
    Comfy(#[from] ApiError),
    #[error("the store failed")]
    Store(#[from] StoreError),
    #[error("no job {0}")]
    NotFound(String),
    #[error("the job is already {0}")]
    Finished(&'static str),
    #[error("a {0} job cannot be cancelled")]
    NotCancellable(String),
    /// A money rule refused the request (generation disabled, no confirmation, over budget, …).
    #[error(transparent)]
    Refused(Box<ApiError>),
    /// Node ids and classes the ComfyUI does not list: refused as ComfyUI would refuse them.
    #[error("ComfyUI has no node class {}", .0.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>().join(", "))]
    UnknownClasses(Vec<(String, String)>),
    /// The workflow has paid nodes and the job no approval: it waits for one, nothing was sent.
    #[error("the job waits for a confirmation of its paid nodes")]
    AwaitingConfirmation(Box<Job>),
}

/// The job service: shared by every serving thread.
#[derive(Clone)]
pub struct Jobs {
    pub(super) store: Store,
    /// Every configured ComfyUI; a job goes to the online one with the shortest queue.
    pub(super) backends: Arc<Vec<ComfyGateway>>,
    /// The money gate's state: node catalogs, settings, the Comfy.org key, idempotency locks.
    pub(super) money: Arc<super::paid::Money>,
    outputs: PathBuf,
    events: broadcast::Sender<JobEvent>,
    /// Followers to stop when a queued job is cancelled (ComfyUI then never sends anything for it).
    followers: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
    /// Jobs recorded while no ComfyUI answered, oldest first, to send when one does.
    waiting: Arc<Mutex<Vec<String>>>,
    dispatcher_running: Arc<std::sync::atomic::AtomicBool>,
    /// When each running job last sent a progress event, for coalescing.
    last_progress: Arc<Mutex<HashMap<String, std::time::Instant>>>,
    /// When this process began: only jobs recorded before it are reconciled. A job this process records is its own
    /// to submit and follow, even in the moment between being recorded and being followed.
    started_at: String,
    /// The ComfyUI Orchestrator supervises, when it does: a job that dies with it carries its exit record (code or
    /// signal, uptime, last log lines) in its error, so the user sees why without opening the log.
    supervised: Option<SupervisedBackend>,
    /// Held from numbering an event to broadcasting it, so listeners get events in number order: `/api/events`
    /// skips anything numbered below what it has sent, and would lose an event that overtook another.
    event_order: Arc<tokio::sync::Mutex<()>>,
    /// Where followers, the dispatcher and paid submits run: the control runtime, under one tracker.
    background: crate::background::Background,
}

/// The supervised ComfyUI's address and its live status.
#[derive(Clone)]
struct SupervisedBackend {
    origin: String,
    status: watch::Receiver<ServiceStatus>,
}

/// How long a lost job waits for the supervisor to record the exit that took it down.
const EXIT_RECORD_WAIT: Duration = Duration::from_secs(4);

impl Jobs {
    pub fn new(
        store: Store,
        backends: Vec<ComfyGateway>,
        outputs: PathBuf,
        money: super::paid::Money,
    ) -> Self {
        assert!(
            !backends.is_empty(),
            "the configuration has at least one ComfyUI"
        );
        let (events, _) = broadcast::channel(1024);
        Self {
            store,
            backends: Arc::new(backends),
            money: Arc::new(money),
            outputs,
            events,
            followers: Arc::default(),
            last_progress: Arc::default(),
            waiting: Arc::default(),
            dispatcher_running: Arc::default(),
            started_at: super::model::now(),
            supervised: None,
            event_order: Arc::default(),
            background: crate::background::Background::new(),
        }
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

    /// The exit of the supervised ComfyUI that ended this job's run, if it was one: waits a moment for the
    /// supervisor, which records an exit only after the process and its output are gone.
    async fn exit_that_ended(&self, id: &str) -> Option<ExitRecord> {
        let supervised = self.supervised.as_ref()?;
        let job = self.store.job(id).await.ok()??;
        if job.backend_url.as_deref() != Some(supervised.origin.as_str()) {
            return None;
        }
        let began = job.started_at.as_deref().unwrap_or(&job.created_at);
        let began = chrono::DateTime::parse_from_rfc3339(began).ok()?.to_utc();
        let ended_it = |status: &ServiceStatus| {
            status
                .last_exit
                .as_ref()
                .filter(|exit| exit.at >= began)
                .cloned()
        };
        let now = supervised.status.borrow().clone();
        if let Some(exit) = ended_it(&now) {
            return Some(exit);
        }
        let same_run_alive = now.status == ServiceState::Running
            && now
                .since
                .as_deref()
                .and_then(|since| chrono::DateTime::parse_from_rfc3339(since).ok())
                .is_some_and(|since| since.to_utc() <= began);
        let never_ran = now.status == ServiceState::Stopped && now.last_exit.is_none();
        if same_run_alive || never_ran {
            return None;
        }
        let mut status = supervised.status.clone();
        let found = tokio::time::timeout(
            EXIT_RECORD_WAIT,
            status.wait_for(|status| ended_it(status).is_some()),
        )
        .await;
        match found {
            Ok(Ok(status)) => ended_it(&status),
            _ => None,
        }
    }

    /// The backend a recorded job went to (the first one for a job that names none).
    pub(super) fn backend_of(&self, job: &Job) -> &ComfyGateway {
        job.backend_url
            .as_deref()
            .and_then(|url| self.backends.iter().find(|b| b.backend().origin() == url))
            .unwrap_or(&self.backends[0])
    }

    /// The online backend with the shortest queue; `None` when none answers.
    pub(super) async fn choose_backend(&self) -> Option<&ComfyGateway> {
        let probes = self.backends.iter().map(|backend| async move {
            let answer = tokio::time::timeout(
                Duration::from_secs(2),
                backend.get_json("/prompt", 64 * 1024),
            )
            .await;
            let queued = answer.ok()?.ok()?["exec_info"]["queue_remaining"].as_u64()?;
            Some((queued, backend))
        });
        let answers = futures_util::future::join_all(probes).await;
        // min_by_key keeps the first of equals: ties go to the backend listed first.
        answers
            .into_iter()
            .flatten()
            .min_by_key(|(queued, _)| *queued)
            .map(|(_, backend)| backend)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
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

    /// Records a free job, submits it to `gateway`'s ComfyUI and follows it in the background; answers once ComfyUI
    /// accepted it. With no gateway (none answers) the job waits in Orchestrator's queue.
    pub(super) async fn submit_comfy(
        &self,
        gateway: Option<ComfyGateway>,
        template: Option<&str>,
        params: &Value,
        mut workflow: Value,
        uploads: Vec<Upload>,
    ) -> Result<Job, JobError> {
        let Some(gateway) = gateway else {
            // No ComfyUI answers: a job without input images waits in Orchestrator's own queue and goes out when
            // one comes online (after Ignite, say). Images must go to the ComfyUI that runs the job, so such a
            // job is refused instead of being held with its data.
            if uploads.is_empty() {
                let new = NewJob {
                    backend: "comfy",
                    template,
                    params,
                    workflow: &workflow,
                    backend_url: None,
                };
                let job = self.store.insert_job(new).await?;
                self.waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(job.id.clone());
                self.start_dispatcher();
                tracing::info!(job = %job.id, "no ComfyUI answers: the job waits in the queue");
                return Ok(job);
            }
            return Err(ApiError::ComfyOffline {
                upstream: self.origins(),
                what: "no job can be started",
            }
            .into());
        };
        self.upload_inputs(&gateway, &mut workflow, uploads).await?;
        let backend_url = gateway.backend().origin();
        let new = NewJob {
            backend: "comfy",
            template,
            params,
            workflow: &workflow,
            backend_url: Some(&backend_url),
        };
        let job = self.store.insert_job(new).await?;
        self.send_to_comfy(job, &workflow).await
    }

    /// Input images go to the ComfyUI that will run the job, under the names it answers with.
    pub(super) async fn upload_inputs(
        &self,
        gateway: &ComfyGateway,
        workflow: &mut Value,
        uploads: Vec<Upload>,
    ) -> Result<(), JobError> {
        for upload in uploads {
            let name = gateway
                .upload_image(upload.bytes, &upload.file_name, &upload.content_type)
                .await?;
            for (node, input) in &upload.targets {
                if let Some(inputs) = workflow
                    .get_mut(node)
                    .and_then(|n| n.get_mut("inputs"))
                    .and_then(Value::as_object_mut)
                {
                    inputs.insert(input.clone(), Value::String(name.clone()));
                }
            }
        }
        Ok(())
    }

    /// Starts the task that sends waiting jobs, unless it runs already.
    fn start_dispatcher(&self) {
        use std::sync::atomic::Ordering;
        if self.dispatcher_running.swap(true, Ordering::SeqCst) {
            return;
        }
        let jobs = self.clone();
        self.background.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(DISPATCH_EVERY) => {}
                    // Waiting jobs stay queued in the store; the next start sends them.
                    () = jobs.background.stopping() => return,
                }
                if jobs.dispatch_waiting().await {
                    jobs.dispatcher_running.store(false, Ordering::SeqCst);
                    // A job queued between the last look and the flag: look once more.
                    if jobs
                        .waiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_empty()
                        || jobs.dispatcher_running.swap(true, Ordering::SeqCst)
                    {
                        return;
                    }
                }
            }
        });
    }

    /// Sends waiting jobs, in order, while a ComfyUI answers; answers whether none is left waiting.
    async fn dispatch_waiting(&self) -> bool {
        loop {
            let Some(id) = self
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .first()
                .cloned()
            else {
                return true;
            };
            let job = match self.store.job(&id).await {
                Ok(Some(job)) if job.status == JobStatus::Queued => job,
                // Cancelled meanwhile, or gone.
                _ => {
                    self.waiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .retain(|w| *w != id);
                    continue;
                }
            };
            let Some(gateway) = self.choose_backend().await else {
                return false;
            };
            let origin = gateway.backend().origin();
            if let Err(error) = self.store.set_backend_url(&id, &origin).await {
                tracing::error!(job = %id, %error, "cannot record where a waiting job goes");
                return false;
            }
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|w| *w != id);
            let workflow = self
                .store
                .workflow(&id)
                .await
                .ok()
                .flatten()
                .unwrap_or(Value::Null);
            let job = Job {
                backend_url: Some(origin),
                ..job
            };
            tracing::info!(job = %id, backend = ?job.backend_url, "a ComfyUI answers: sending a waiting job");
            if let Err(error) = self.send_to_comfy(job, &workflow).await {
                tracing::warn!(job = %id, %error, "sending a waiting job failed");
            }
        }
    }

    /// Posts a recorded job's workflow to ComfyUI and starts following it. The money gate runs first: a paid
    /// workflow goes out only for a job holding a reservation, with Orchestrator's Comfy.org key.
    pub(super) async fn send_to_comfy(&self, job: Job, workflow: &Value) -> Result<Job, JobError> {
        let client_id = client_id(&job.id);
        let gateway = self.backend_of(&job).clone();
        let paid_key = match self.gate_before_sending(&gateway, &job, workflow).await {
            Ok(key) => key,
            Err(JobError::AwaitingConfirmation(job)) => {
                return Err(JobError::AwaitingConfirmation(job));
            }
            Err(error) => {
                let (code, message) = match &error {
                    JobError::UnknownClasses(_) => ("comfy_rejected", error.to_string()),
                    JobError::Refused(api) => (api.code(), api.to_string()),
                    JobError::Comfy(api) => (api.code(), api.to_string()),
                    other => ("internal", other.to_string()),
                };
                self.fail(&job.id, json!({ "code": code, "message": message }))
                    .await;
                if job.cost_usd.is_some() {
                    self.release(&job.id).await;
                }
                return Err(error);
            }
        };

        let socket_uri = gateway.upstream_uri("/ws", Some(&format!("clientId={client_id}")))?;
        let mut socket =
            match ws::connect_upstream(gateway.backend(), &socket_uri, Duration::from_secs(10))
                .await
            {
                Ok(socket) => socket,
                Err(error) => {
                    self.fail(
                        &job.id,
                        json!({ "code": error.code(), "message": error.to_string() }),
                    )
                    .await;
                    // Nothing was posted: a paid job's reservation goes back.
                    if paid_key.is_some() {
                        self.release(&job.id).await;
                    }
                    return Err(error.into());
                }
            };
        if !ws::wait_for_greeting(&mut socket, Duration::from_secs(10)).await {
            let error = ApiError::ComfyBadResponse("ComfyUI's WebSocket sent no greeting".into());
            self.fail(
                &job.id,
                json!({ "code": error.code(), "message": error.to_string() }),
            )
            .await;
            if paid_key.is_some() {
                self.release(&job.id).await;
            }
            return Err(error.into());
        }
        let mut extra_data = json!({ "orchestrator_job": job.id });
        if let Some(key) = &paid_key {
            extra_data[crate::comfy::credentials::KEYS[0]] = json!(key.expose());
        }
        let body = json!({ "prompt": workflow, "client_id": client_id, "extra_data": extra_data });
        // A paid job cancelled while it was being approved or prepared is not sent (and gives its price back).
        if paid_key.is_some() {
            let now = self.store.job(&job.id).await?;
            if let Some(now) = now.filter(|j| j.status != JobStatus::Queued) {
                self.release(&job.id).await;
                return Err(JobError::Finished(now.status.as_str()));
            }
        }
        let (status, answer) = match gateway.post_json("/prompt", &body).await {
            Ok(answer) => answer,
            // A paid prompt that may have reached ComfyUI is never sent again: its outcome is for a person to check.
            Err(error) if paid_key.is_some() => {
                let message = format!(
                    "{error}. ComfyUI may have queued the paid workflow; it is not sent again. Check ComfyUI's \
                     queue and the Comfy.org account."
                );
                let change = JobChange {
                    status: Some(JobStatus::NeedsReconcile),
                    error: Some(json!({ "code": "comfy_outcome_unknown", "message": message })),
                    ..Default::default()
                };
                self.change(&job.id, "state", change).await;
                return Err(error.into());
            }
            Err(error) => {
                self.fail(
                    &job.id,
                    json!({ "code": error.code(), "message": error.to_string() }),
                )
                .await;
                return Err(error.into());
            }
        };
        let Some(prompt_id) = answer
            .get("prompt_id")
            .and_then(Value::as_str)
            .filter(|_| status.is_success())
        else {
            // Only ComfyUI's own refusal (400 with its error shape) certainly queued nothing. Anything else for a
            // paid prompt (a proxy's 502 after ComfyUI queued it, a 200 without an id) may have been taken: it is
            // for a person to check, and never sent again.
            let refused_by_comfy = status == http::StatusCode::BAD_REQUEST
                && (answer.get("error").is_some() || answer.get("node_errors").is_some());
            if paid_key.is_some() && !refused_by_comfy {
                let message = format!(
                    "ComfyUI answered the paid workflow with HTTP {} and no prompt id; it may have been queued, so it \
                     is not sent again. Check ComfyUI's queue and the Comfy.org account.",
                    status.as_u16()
                );
                let change = JobChange {
                    status: Some(JobStatus::NeedsReconcile),
                    error: Some(json!({ "code": "comfy_outcome_unknown", "message": message })),
                    ..Default::default()
                };
                self.change(&job.id, "state", change).await;
                return Err(ApiError::ComfyBadResponse(message).into());
            }
            let message = answer["error"]["message"]
                .as_str()
                .unwrap_or("ComfyUI did not accept the workflow")
                .to_owned();
            let details = json!({ "comfy_status": status.as_u16(), "error": answer.get("error"), "node_errors": answer.get("node_errors") });
            let error = json!({ "code": "comfy_rejected", "message": message, "details": details });
            self.fail(&job.id, error).await;
            if paid_key.is_some() {
                self.release(&job.id).await;
            }
            let job = self
                .store
                .job(&job.id)
                .await?
                .ok_or_else(|| JobError::NotFound(job.id.clone()))?;
            return Err(JobError::Rejected {
                job: Box::new(job),
                message,
                details,
            });
        };
        if paid_key.is_some()
            && let Err(error) = self.store.mark_charge_spent(&job.id).await
        {
            tracing::error!(job = %job.id, %error, "cannot record a paid job's charge as spent");
        }
        let accepted = self
            .change(
                &job.id,
                "state",
                JobChange {
                    status: Some(JobStatus::Submitted),
                    comfy_prompt_id: Some(prompt_id.to_owned()),
                    ..Default::default()
                },
            )
            .await;
        if !accepted {
            // Cancelled (or otherwise finished) while the prompt was on its way: the job stays as it ended, and
            // ComfyUI's copy goes, from its queue or, if it has started already, by an interrupt of that prompt.
            let queued = gateway
                .post_json("/queue", &json!({ "delete": [prompt_id] }))
                .await;
            let interrupted = gateway
                .post_json("/interrupt", &json!({ "prompt_id": prompt_id }))
                .await;
            if queued.is_err() || interrupted.is_err() {
                tracing::warn!(job = %job.id, %prompt_id, "a job finished while it was sent, and ComfyUI could not be told to drop it");
            }
            let now = self.store.job(&job.id).await?;
            return Err(JobError::Finished(
                now.map_or("gone", |j| j.status.as_str()),
            ));
        }

        self.follow(gateway.clone(), &job.id, prompt_id, workflow, socket);
        Ok(self.store.job(&job.id).await?.unwrap_or(job))
    }

    fn follow(
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
                    j.backend == "comfy"
                        && j.created_at < self.started_at
                        && !followed.contains_key(&j.id)
                })
                .collect()
        };
        let mut queues: HashMap<String, Option<Vec<Value>>> = HashMap::new();
        let mut left = 0;
        for job in unfinished {
            let gateway = self.backend_of(&job).clone();
            let origin = gateway.backend().origin();
            if !queues.contains_key(&origin) {
                let queue = gateway
                    .get_json("/queue", 64 * 1024 * 1024)
                    .await
                    .ok()
                    .map(|queue| {
                        ["queue_running", "queue_pending"]
                            .iter()
                            .flat_map(|k| queue[*k].as_array().cloned().unwrap_or_default())
                            .collect::<Vec<_>>()
                    });
                queues.insert(origin.clone(), queue);
            }
            let Some(queued) = queues[&origin].as_ref() else {
                left += 1;
                continue;
            };
            let workflow = self.store.workflow(&job.id).await?.unwrap_or(Value::Null);
            // The prompt id, or, for a job whose submit was cut short, whatever ComfyUI queued under its id.
            let found = queued.iter().find(|item| {
                job.comfy_prompt_id.as_deref().is_some_and(|p| item[1] == p)
                    || item[3]["orchestrator_job"] == job.id.as_str()
            });
            if let Some(item) = found {
                let prompt_id = item[1].as_str().unwrap_or_default().to_owned();
                let uri = gateway
                    .upstream_uri("/ws", Some(&format!("clientId={}", client_id(&job.id))))?;
                let connected =
                    match ws::connect_upstream(gateway.backend(), &uri, Duration::from_secs(10))
                        .await
                    {
                        Ok(mut socket) => {
                            ws::wait_for_greeting(&mut socket, Duration::from_secs(10))
                                .await
                                .then_some(socket)
                        }
                        Err(_) => None,
                    };
                match connected {
                    Some(socket) => {
                        let change = JobChange {
                            comfy_prompt_id: Some(prompt_id.clone()),
                            ..Default::default()
                        };
                        self.change(&job.id, "state", change).await;
                        self.follow(gateway.clone(), &job.id, &prompt_id, &workflow, socket);
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
                            "backend_lost",
                            "ComfyUI no longer knows the job (it was restarted?)",
                        )
                        .await;
                    }
                }
                continue;
            }
            // Recorded, reserved, and cut off while being sent: it may have been charged, so it is never resent.
            if job.cost_usd.is_some() {
                let change = JobChange {
                    status: Some(JobStatus::NeedsReconcile),
                    error: Some(json!({
                        "code": "submit_interrupted",
                        "message": "Orchestrator stopped while this paid workflow was being sent to ComfyUI. It may \
                                    have been charged; it is not sent again. Check ComfyUI's queue and the Comfy.org \
                                    account."
                    })),
                    ..Default::default()
                };
                self.change(&job.id, "state", change).await;
                continue;
            }
            // Recorded but never accepted by ComfyUI: a local run costs nothing, so it is sent now.
            if let Err(error) = self.send_to_comfy(job.clone(), &workflow).await {
                tracing::warn!(job = %job.id, %error, "resubmitting a job after a restart failed");
            }
        }
        Ok(left)
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
        if job.backend != "comfy" {
            return Err(JobError::NotCancellable(job.backend));
        }
        let Some(prompt_id) = job.comfy_prompt_id.clone() else {
            self.change(id, "state", finished(JobStatus::Cancelled))
                .await;
            return self
                .store
                .job(id)
                .await?
                .ok_or_else(|| JobError::NotFound(id.to_owned()));
        };
        let queue = self
            .backend_of(&job)
            .get_json("/queue", 64 * 1024 * 1024)
            .await?;
        let pending = queue["queue_pending"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i[1] == prompt_id.as_str()));
        if pending {
            self.backend_of(&job)
                .post_json("/queue", &json!({ "delete": [prompt_id] }))
                .await?;
            if let Some(stop) = self
                .followers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id)
            {
                let _ = stop.send(());
            }
            self.change(id, "state", finished(JobStatus::Cancelled))
                .await;
        } else {
            // Running: the follower records `cancelled` when ComfyUI reports the interrupt.
            self.backend_of(&job)
                .post_json("/interrupt", &json!({ "prompt_id": prompt_id }))
                .await?;
        }
        self.store
            .job(id)
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))
    }

    /// The backend no longer has the job: `backend_lost`, with why.
    pub(crate) async fn lose(&self, id: &str, code: &str, message: &str) {
        let mut error = json!({ "code": code, "message": message });
        if let Some(exit) = self.exit_that_ended(id).await {
            error["message"] = json!(format!("{message}: ComfyUI {}", describe_exit(&exit)));
            error["exit"] = json!(exit);
        }
        self.change(
            id,
            "state",
            JobChange {
                error: Some(error),
                ..finished(JobStatus::BackendLost)
            },
        )
        .await;
    }

    pub(crate) async fn fail(&self, id: &str, error: Value) {
        let change = JobChange {
            error: Some(error),
            ..finished(JobStatus::Failed)
        };
        self.change(id, "state", change).await;
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
    pub(crate) async fn change(&self, id: &str, kind: &'static str, mut change: JobChange) -> bool {
        if let Some(error) = change.error.as_mut() {
            crate::comfy::credentials::strip(
                error,
                self.money.api_key.as_ref().map(|k| k.expose()),
            );
        }
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
            if kind == "progress"
                && last
                    .get(id)
                    .is_some_and(|at| now.duration_since(*at) < PROGRESS_EVERY)
            {
                return true;
            }
            if job.status.is_final() {
                last.remove(id);
            } else {
                last.insert(id.to_owned(), now);
            }
        }
        let _in_order = self.event_order.lock().await;
        match self.store.insert_event(kind, &job).await {
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
        true
    }
}

/// "was killed by signal 9 after 12.3 s", for a job's error message.
fn describe_exit(exit: &ExitRecord) -> String {
    let how = match (exit.cause, exit.signal, exit.code) {
        (crate::service::ExitCause::Unresponsive, _, _) => {
            "stopped answering and was ended".to_owned()
        }
        (_, Some(signal), _) => format!("was killed by signal {signal}"),
        (_, None, Some(code)) => format!("exited with code {code}"),
        (_, None, None) => "exited".to_owned(),
    };
    format!("{how} after {:.1} s", exit.uptime_ms as f64 / 1000.0)
}

/// How often waiting jobs look for a ComfyUI that answers.
const DISPATCH_EVERY: Duration = Duration::from_secs(2);

/// At most this often a progress event per job: a 1,000-step sampler sends about 4 a second, not 1,000.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// How long a followed run may stay silent before its history is checked.
const SILENCE_CHECK: Duration = Duration::from_secs(15);

/// The WebSocket client id of a job: derived from its id, so a restarted Orchestrator can rejoin its events.
fn client_id(job_id: &str) -> String {
    format!("orchestrator-{job_id}")
}

pub(crate) fn finished(status: JobStatus) -> JobChange {
    JobChange {
        status: Some(status),
        current_node: Some(None),
        finished: true,
        ..Default::default()
    }
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
struct Follower {
    jobs: Jobs,
    /// The ComfyUI the job went to.
    gateway: ComfyGateway,
    job_id: String,
    prompt_id: String,
    /// Node id → class, to name the current node.
    classes: HashMap<String, String>,
    done: HashSet<String>,
    last_progress: f64,
    /// What each paid node reported it costs, in millionths of a dollar.
    prices: HashMap<String, i64>,
}

enum End {
    /// `executing {node: null}` arrived: the run is over and its history written.
    Finished,
    Failed(Value),
    Interrupted,
    /// The socket ended first.
    SocketLost,
    Stopped,
}

impl Follower {
    fn new(
        jobs: Jobs,
        gateway: ComfyGateway,
        job_id: String,
        prompt_id: String,
        workflow: &Value,
    ) -> Self {
        let classes = workflow
            .as_object()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|(id, node)| {
                        (
                            id.clone(),
                            node["class_type"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            jobs,
            gateway,
            job_id,
            prompt_id,
            classes,
            done: HashSet::new(),
            last_progress: 0.0,
            prices: HashMap::new(),
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
                    self.on_binary(&frame).await;
                    continue;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::SocketLost,
                Some(Ok(_)) => continue,
            };
            let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            if event["data"]["prompt_id"] == self.prompt_id.as_str() {
                heard_at = tokio::time::Instant::now();
            }
            if let Some(end) = self.on_event(&event).await {
                break end;
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
                    .change(&self.job_id, "state", finished(JobStatus::Cancelled))
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
        if self.prices.is_empty() {
            return;
        }
        let Ok(Some(job)) = self.jobs.store.job(&self.job_id).await else {
            return;
        };
        let reported: i64 = self.prices.values().sum();
        let unreported: i64 = job
            .approval
            .as_ref()
            .and_then(|a| a["paidNodes"].as_array())
            .into_iter()
            .flatten()
            .filter(|n| {
                n["id"]
                    .as_str()
                    .is_none_or(|id| !self.prices.contains_key(id))
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

    /// A binary frame: previews are dropped here; a paid node's progress text with its price is the job's actual
    /// cost, and settles its charge.
    async fn on_binary(&mut self, frame: &[u8]) {
        let Some((node, text)) = super::price::progress_text(frame) else {
            return;
        };
        let Some(micros) = super::price::reported_price(&text) else {
            return;
        };
        if self.prices.insert(node, micros) == Some(micros) {
            return;
        }
        let total = self.prices.values().sum();
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
            .change(&self.job_id, "state", JobChange::default())
            .await;
    }

    async fn on_event(&mut self, event: &Value) -> Option<End> {
        let data = &event["data"];
        if data
            .get("prompt_id")
            .and_then(Value::as_str)
            .is_some_and(|id| id != self.prompt_id)
        {
            return None;
        }
        match event["type"].as_str()? {
            "execution_start" => {
                let change = JobChange {
                    status: Some(JobStatus::Running),
                    started: true,
                    ..Default::default()
                };
                self.jobs.change(&self.job_id, "state", change).await;
            }
            "execution_cached" => {
                for node in data["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    self.done.insert(node.to_owned());
                }
            }
            "executing" => match data["node"].as_str() {
                None if data["prompt_id"] == self.prompt_id.as_str() => return Some(End::Finished),
                None => {}
                Some(node) => {
                    let label = match self.classes.get(node) {
                        Some(class) if !class.is_empty() => format!("{node} {class}"),
                        _ => node.to_owned(),
                    };
                    let change = JobChange {
                        status: Some(JobStatus::Running),
                        started: true,
                        current_node: Some(Some(label)),
                        progress: Some(self.progress(0.0)),
                        ..Default::default()
                    };
                    self.jobs.change(&self.job_id, "progress", change).await;
                }
            },
            "progress" => {
                let (value, max) = (
                    data["value"].as_f64().unwrap_or(0.0),
                    data["max"].as_f64().unwrap_or(1.0),
                );
                let progress = self.progress(if max > 0.0 { value / max } else { 0.0 });
                // Whole percents only: a 1,000-step sampler must not write a thousand rows.
                if progress.floor() > self.last_progress.floor() {
                    self.last_progress = progress;
                    let change = JobChange {
                        progress: Some(progress),
                        ..Default::default()
                    };
                    self.jobs.change(&self.job_id, "progress", change).await;
                }
            }
            "executed" => {
                if let Some(node) = data["node"].as_str() {
                    self.done.insert(node.to_owned());
                }
            }
            "execution_error" => {
                let error = json!({
                    "code": "comfy_execution_error",
                    "message": data["exception_message"].as_str().unwrap_or("ComfyUI failed while running the workflow").trim(),
                    "details": {
                        "node_id": data["node_id"], "node_type": data["node_type"],
                        "exception_type": data["exception_type"], "traceback": data["traceback"],
                    },
                });
                return Some(End::Failed(error));
            }
            "execution_interrupted" => return Some(End::Interrupted),
            _ => {}
        }
        None
    }

    /// Overall progress in percent: finished nodes plus the running node's share.
    fn progress(&self, running_fraction: f64) -> f64 {
        let total = self.classes.len().max(1) as f64;
        ((self.done.len() as f64 + running_fraction) / total * 100.0).clamp(0.0, 99.0)
    }

    /// Reads the run's outputs from the history and downloads every file; only then is the job `succeeded`.
    async fn collect_outputs(&self) {
        let entry = match self.history_entry().await {
            Some(entry) => entry,
            None => {
                self.jobs
                    .lose(
                        &self.job_id,
                        "comfy_history_missing",
                        "ComfyUI finished the run but has no history for it",
                    )
                    .await;
                return;
            }
        };
        if entry["status"]["status_str"] != "success" {
            let interrupted = entry["status"]["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m[0] == "execution_interrupted"));
            if interrupted {
                self.jobs
                    .change(&self.job_id, "state", finished(JobStatus::Cancelled))
                    .await;
            } else {
                let error = json!({ "code": "comfy_execution_error", "message": "ComfyUI reports the run failed", "details": entry["status"] });
                self.jobs.fail(&self.job_id, error).await;
            }
            return;
        }
        match self.download_outputs(&entry).await {
            Ok(outputs) => {
                let change = JobChange {
                    outputs: Some(outputs),
                    progress: Some(100.0),
                    ..finished(JobStatus::Succeeded)
                };
                self.jobs.change(&self.job_id, "state", change).await;
            }
            Err(error) => {
                let error = json!({ "code": "output_fetch_failed", "message": error.to_string() });
                self.jobs.fail(&self.job_id, error).await;
            }
        }
    }

    async fn history_entry(&self) -> Option<Value> {
        for attempt in 0..5 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let history = self
                .gateway
                .get_json(&format!("/history/{}", self.prompt_id), 64 * 1024 * 1024)
                .await
                .ok()?;
            if let Some(entry) = history.get(&self.prompt_id) {
                return Some(entry.clone());
            }
        }
        None
    }

    async fn download_outputs(&self, entry: &Value) -> Result<Vec<OutputFile>, ApiError> {
        let dir = self.jobs.output_dir(&self.job_id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(ApiError::internal)?;
        let mut outputs = Vec::new();
        // Each file ComfyUI lists once, by where it is (a node may list the same file under two keys).
        let mut fetched: Vec<(&str, &str, &str)> = Vec::new();
        for node_output in entry["outputs"]
            .as_object()
            .into_iter()
            .flat_map(|o| o.values())
        {
            // Images, animations and videos are all listed under `images`; some nodes use `gifs` or `videos`.
            for key in ["images", "gifs", "videos"] {
                for file in node_output[key].as_array().into_iter().flatten() {
                    let Some(filename) = file["filename"].as_str() else {
                        continue;
                    };
                    let subfolder = file["subfolder"].as_str().unwrap_or("");
                    let kind = file["type"].as_str().unwrap_or("output");
                    if fetched.contains(&(filename, subfolder, kind)) {
                        continue;
                    }
                    fetched.push((filename, subfolder, kind));
                    let taken = |name: &str| outputs.iter().any(|o: &OutputFile| o.name == name);
                    let Some(name) = output_name(filename, subfolder, taken) else {
                        continue;
                    };
                    let Some(target) = crate::fs_safe::new_file_in(&dir, &name) else {
                        continue;
                    };
                    let query = serde_urlencoded_query(&[
                        ("filename", filename),
                        ("subfolder", subfolder),
                        ("type", kind),
                    ]);
                    let (size, content_type) =
                        self.gateway.download("/view", &query, &target).await?;
                    outputs.push(OutputFile {
                        url: format!(
                            "/api/jobs/{}/outputs/{}",
                            self.job_id,
                            percent_encoding::utf8_percent_encode(
                                &name,
                                percent_encoding::NON_ALPHANUMERIC
                            )
                        ),
                        name,
                        content_type,
                        size,
                    });
                }
            }
        }
        Ok(outputs)
    }

    /// The socket ended before the run did: the history says whether it finished; the queue whether ComfyUI
    /// still has it. Anything else is `backend_lost`.
    /// Reopens the WebSocket of a job ComfyUI still has, with back-off, and follows it again: the client id comes
    /// from the job's id, so ComfyUI sends the job's events to the new socket. A run that ended while the socket
    /// was down is collected from `/history`. Answers whether the job is taken care of.
    async fn rejoin(&self) -> bool {
        let Ok(uri) = self.gateway.upstream_uri(
            "/ws",
            Some(&format!("clientId={}", client_id(&self.job_id))),
        ) else {
            return false;
        };
        for pause in REJOIN_BACKOFF {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // Left for the next start's reconciliation, which settles it against ComfyUI.
                () = self.jobs.background.stopping() => return true,
            }
            let Ok(mut socket) =
                ws::connect_upstream(self.gateway.backend(), &uri, Duration::from_secs(10)).await
            else {
                continue;
            };
            if !ws::wait_for_greeting(&mut socket, Duration::from_secs(10)).await {
                continue;
            }
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
        if history.iter().any(|e| e.kind == "resubmitted") {
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
            .change(&self.job_id, "resubmitted", JobChange::default())
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
        self.jobs.lose(&self.job_id, "backend_lost", reason).await;
    }
}

/// The last path component of a ComfyUI file name, without anything that could climb out of a folder.
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).collect();
    match cleaned.as_str() {
        "." | ".." => String::new(),
        _ => cleaned,
    }
}

/// The name an output is kept under: ComfyUI's own file name, or, when another output of the job already has it
/// (the same name in another subfolder: two SaveImage nodes with prefixes `a/x` and `b/x`), the subfolder joined in
/// front (`b-x_00001_.png`), then a number. `None` when nothing of the name is left to keep.
fn output_name(filename: &str, subfolder: &str, taken: impl Fn(&str) -> bool) -> Option<String> {
    let name = safe_file_name(filename);
    if name.is_empty() {
        return None;
    }
    if !taken(&name) {
        return Some(name);
    }
    let folders: Vec<String> = subfolder
        .split(['/', '\\'])
        .map(safe_file_name)
        .filter(|part| !part.is_empty())
        .collect();
    let mut candidate = if folders.is_empty() {
        name.clone()
    } else {
        format!("{}-{name}", folders.join("-"))
    };
    let (stem, extension) = match candidate.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() => (stem.to_owned(), format!(".{extension}")),
        _ => (candidate.clone(), String::new()),
    };
    let mut number = 2;
    while taken(&candidate) {
        candidate = format!("{stem}-{number}{extension}");
        number += 1;
    }
    Some(candidate)
}

fn serde_urlencoded_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn same_named_outputs_in_other_subfolders_are_all_kept() {
        let kept = ["x_00001_.png".to_owned(), "b-x_00001_.png".to_owned()];
        let taken = |name: &str| kept.iter().any(|k| k == name);
        assert_eq!(output_name("y.png", "b", taken).unwrap(), "y.png");
        assert_eq!(
            output_name("x_00001_.png", "b", taken).unwrap(),
            "b-x_00001_-2.png"
        );
        assert_eq!(
            output_name("x_00001_.png", "c/d", taken).unwrap(),
            "c-d-x_00001_.png"
        );
        assert_eq!(
            output_name("x_00001_.png", "", taken).unwrap(),
            "x_00001_-2.png"
        );
        assert_eq!(
            output_name("x_00001_.png", "..", taken).unwrap(),
            "x_00001_-2.png"
        );
        assert_eq!(output_name("..", "a", taken), None);
    }

    #[test]
    fn output_names_cannot_climb() {
        assert_eq!(safe_file_name("ComfyUI_00001_.png"), "ComfyUI_00001_.png");
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("a\\b\\..\\c.png"), "c.png");
        assert_eq!(safe_file_name(".."), "");
        assert_eq!(safe_file_name("x/"), "");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever file name ComfyUI's history gives, the name kept is one plain name (or nothing), and the file
        /// it is written to is directly in the job's folder.
        #[test]
        fn a_kept_output_name_is_one_plain_name(
            name in prop::collection::vec(
                prop_oneof![
                    prop::sample::select(vec![
                        "..", ".", "/", "\\", "//", "C:", "\0", "\n", "\u{85}", "%2e%2e", "x.png", "~",
                    ])
                    .prop_map(str::to_owned),
                    any::<String>(),
                ],
                0..8,
            )
            .prop_map(|parts| parts.concat()),
        ) {
            let kept = safe_file_name(&name);
            prop_assert_eq!(safe_file_name(&kept), kept.clone(), "{:?}", name);
            prop_assert!(!kept.contains(['/', '\\']) && !kept.chars().any(char::is_control));
            prop_assert!(kept != "." && kept != "..");
            let dir = std::path::Path::new("outputs").join("job");
            match crate::fs_safe::new_file_in(&dir, &kept) {
                Some(path) => prop_assert_eq!(path.parent(), Some(dir.as_path())),
                // Nothing, or on Windows a drive-relative name such as `C:x.png`.
                None => prop_assert!(kept.is_empty() || cfg!(windows), "{:?}", kept),
            }
        }
    }
}
