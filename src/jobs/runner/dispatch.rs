//! Sending jobs to ComfyUI: choosing the backend, the money gate before anything paid goes out, the one
//! `POST /prompt`, and the queue of jobs that wait for a ComfyUI to come online.

use std::time::Duration;

use serde_json::Value;

use super::follow::Listening;
use super::socket::Link;
use super::{JobError, Jobs, refused};
use crate::assets::refs::ResolveError;
use crate::codes::{Code, Failure};
use crate::comfy::api::{Posted, PromptRequest};
use crate::comfy::error::ComfyError;
use crate::comfy::proxy::ComfyGateway;
use crate::jobs::gate::COMFY_ORG_NOT_CONFIGURED;
use crate::jobs::ledger::Sent;
use crate::model::{Backend, EventKind};
use crate::model::{Job, JobStatus};
use crate::store::{JobChange, NewJob};

/// How often waiting jobs look for a ComfyUI that answers.
const DISPATCH_EVERY: Duration = Duration::from_secs(2);

impl Jobs {
    /// The backend a recorded job went to (the first one for a job that names none).
    pub(in crate::jobs) fn backend_of(&self, job: &Job) -> &ComfyGateway {
        job.backend_url
            .as_deref()
            .and_then(|url| self.backends.iter().find(|b| b.backend().origin() == url))
            .unwrap_or(&self.backends[0])
    }

    /// The online backend with the shortest queue; `None` when none answers.
    pub(in crate::jobs) async fn choose_backend(&self) -> Option<&ComfyGateway> {
        let probes = self.backends.iter().map(|backend| async move {
            // Asked over HTTP even when the backend's WebSocket is up: a ComfyUI whose socket greets but whose HTTP
            // hangs is not one to send a job to.
            let answer =
                tokio::time::timeout(Duration::from_secs(2), backend.queue_remaining()).await;
            let queued = answer.ok()?.ok()?;
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

    /// Records a free job, submits it to `gateway`'s ComfyUI and follows it in the background; answers once ComfyUI
    /// accepted it. With no gateway (none answers) the job waits in Orchestrator's queue.
    pub(in crate::jobs) async fn submit_comfy(
        &self,
        gateway: Option<ComfyGateway>,
        template: Option<&str>,
        params: &Value,
        workflow: Value,
    ) -> Result<Job, JobError> {
        let Some(gateway) = gateway else {
            // No ComfyUI answers: a job without input images waits in Orchestrator's own queue and goes out when
            // one comes online (after Ignite, say). Images must go to the ComfyUI that runs the job, so such a
            // job is refused instead of being held with its data.
            if !crate::assets::refs::has_references(&workflow) {
                let new = NewJob {
                    backend: Backend::Comfy,
                    template,
                    params,
                    workflow: &workflow,
                    backend_url: None,
                };
                // Unclaimed: the fleet's queue, for whichever instance first has a ComfyUI that answers.
                let job = self.store().insert_job(new).await?;
                self.dispatch_wake.notify_one();
                tracing::info!(job = %job.id, "no ComfyUI answers: the job waits in the queue");
                return Ok(job);
            }
            return Err(ComfyError::Offline {
                upstream: self.origins(),
                what: "no job can be started",
            }
            .into());
        };
        let backend_url = gateway.backend().origin();
        let new = NewJob {
            backend: Backend::Comfy,
            template,
            params,
            workflow: &workflow,
            backend_url: Some(&backend_url),
        };
        let job = self.store().insert_job(new).await?;
        self.send_to_comfy(job, &workflow).await
    }

    /// The dispatcher: sends the jobs of the fleet's queue (recorded, here or by another instance, while no ComfyUI
    /// answered) to this instance's backends, oldest first, while one answers. It looks when a job is queued here
    /// and every [`DISPATCH_EVERY`] for the others' (one indexed query; a backend is asked only when a job waits).
    pub async fn dispatch(self) {
        loop {
            self.dispatch_waiting().await;
            tokio::select! {
                () = tokio::time::sleep(DISPATCH_EVERY) => {}
                () = self.dispatch_wake.notified() => {}
                // Waiting jobs stay queued in the store; the next start (or another instance) sends them.
                () = self.background().stopping() => return,
            }
        }
    }

    /// Claims and sends waiting jobs, in order, while a ComfyUI answers.
    async fn dispatch_waiting(&self) {
        loop {
            match self.store().has_claimable().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot look at the queue");
                    return;
                }
            }
            let Some(gateway) = self.choose_backend().await else {
                return;
            };
            let origin = gateway.backend().origin();
            let lease_until = crate::store::lease_until(self.lease);
            let job = match self
                .store()
                .claim_next(&self.instance, &origin, &lease_until)
                .await
            {
                Ok(Some(job)) => job,
                // Another instance took the last one meanwhile.
                Ok(None) => return,
                Err(error) => {
                    tracing::error!(%error, "cannot claim a waiting job");
                    return;
                }
            };
            let id = job.id.clone();
            let workflow = self.stored_workflow(&id).await;
            tracing::info!(job = %id, backend = ?job.backend_url, "a ComfyUI answers: sending a waiting job");
            if let Err(error) = self.send_to_comfy(job, &workflow).await {
                tracing::warn!(job = %id, %error, "sending a waiting job failed");
            }
        }
    }

    /// Posts a recorded job's workflow to ComfyUI and starts following it. The money gate runs first: a paid
    /// workflow goes out only for a job holding a reservation, with Orchestrator's Comfy.org key. Every step that
    /// stops the send before anything is posted fails the job and gives a paid one's reservation back.
    pub(in crate::jobs) async fn send_to_comfy(
        &self,
        job: Job,
        workflow: &Value,
    ) -> Result<Job, JobError> {
        // Only the instance that claims a job sends it (a job waiting for a confirmation is claimed by whichever
        // instance confirms it).
        self.hold_claim(&job.id).await?;
        let gateway = self.backend_of(&job).clone();
        let paid_key = self.gate_or_fail(&gateway, &job, workflow).await?;
        // Whether the job holds a reservation, which its send settles, whatever its workflow looks like now (a
        // backend's node list can change between the confirmation and the send).
        let paid = job.cost_usd.is_some();
        let resolved = self.resolve_or_fail(&gateway, &job, workflow, paid).await?;
        let workflow = resolved.as_ref().unwrap_or(workflow);
        // The backend's shared link is up before anything is posted, and the prompt, under an id Orchestrator
        // picks, is listened for before it exists: no event of the run can come unrouted.
        let link = self.link(&gateway);
        if let Err(error) = link.ready(LINK_WITHIN).await {
            let unsent = Sent::NotTaken(error.failure());
            self.ledger.settle_sent(&job.id, unsent, paid).await;
            return Err(error.into());
        }
        let registration = Registration::new(&link, uuid::Uuid::new_v4().to_string());
        let request = PromptRequest {
            workflow,
            prompt_id: &registration.prompt_id,
            client_id: &link.client_id,
            job_id: &job.id,
            comfy_org_key: paid_key.as_ref().map(|key| key.expose()),
        };
        if paid {
            self.still_wanted(&job.id).await?;
        }
        // Still this instance's (it could have lost the claim while it waited for the link, cut off from the
        // store longer than a lease): a job another instance took over is not posted by this one too.
        self.hold_claim(&job.id).await?;
        let posted = gateway.post_prompt(&request).await;
        let prompt_id = self.settle_post(&job, posted, paid).await?;
        let prompt_id = prompt_id.as_str();
        let submitted = JobChange {
            status: Some(JobStatus::Submitted),
            comfy_prompt_id: Some(prompt_id.to_owned()),
            ..Default::default()
        };
        if !self
            .ledger
            .change(&job.id, EventKind::State, submitted)
            .await
        {
            return self.withdraw(&gateway, &job.id, prompt_id).await;
        }
        let listening = registration.into_listening(prompt_id);
        self.follow(gateway.clone(), &job.id, prompt_id, workflow, listening);
        Ok(self.store().job(&job.id).await?.unwrap_or(job))
    }

    /// The money gate at the moment of sending; a job it refuses is failed (a job it parks waits for its
    /// confirmation). Answers the Comfy.org key for a paid workflow.
    async fn gate_or_fail(
        &self,
        gateway: &ComfyGateway,
        job: &Job,
        workflow: &Value,
    ) -> Result<Option<crate::jobs::egress::JobKey>, JobError> {
        match self.gate_before_sending(gateway, job, workflow).await {
            Ok(key) => Ok(key),
            Err(waits @ JobError::AwaitingConfirmation(_)) => Err(waits),
            Err(error) => {
                let code = match &error {
                    JobError::UnknownClasses(_) => Code::ComfyRejected,
                    JobError::Refused(refusal) => refusal.code(),
                    JobError::Comfy(comfy) => comfy.code(),
                    _ => Code::Internal,
                };
                let failure = Failure::new(code, error.to_string());
                let paid = job.cost_usd.is_some();
                self.ledger
                    .settle_sent(&job.id, Sent::NotTaken(failure), paid)
                    .await;
                Err(error)
            }
        }
    }

    /// The inputs a workflow names as assets go to this backend now, whichever it is (the first, the one a
    /// waiting job found, the one a job moved to): the stored workflow keeps the references.
    async fn resolve_or_fail(
        &self,
        gateway: &ComfyGateway,
        job: &Job,
        workflow: &Value,
        paid: bool,
    ) -> Result<Option<Value>, JobError> {
        let error = match self.assets.resolve_for(gateway, workflow).await {
            Ok(resolved) => return Ok(resolved),
            Err(error) => error,
        };
        let failure = match &error {
            ResolveError::Comfy(comfy) => comfy.failure(),
            ResolveError::Missing(_) => Failure::new(Code::MissingAsset, error.to_string()),
            ResolveError::Asset(cause) => {
                tracing::error!(job = %job.id, error = %cause, "cannot read a job's input assets");
                Failure::new(Code::Internal, "the asset store failed")
            }
        };
        self.ledger
            .settle_sent(&job.id, Sent::NotTaken(failure), paid)
            .await;
        Err(match error {
            ResolveError::Comfy(comfy) => comfy.into(),
            ResolveError::Missing(id) => JobError::MissingAssets(vec![id]),
            ResolveError::Asset(asset) => JobError::Asset(asset),
        })
    }

    /// A paid job cancelled while it was being approved or prepared is not sent (and gives its price back).
    async fn still_wanted(&self, id: &str) -> Result<(), JobError> {
        let now = self.store().job(id).await?;
        if let Some(now) = now.filter(|j| j.status != JobStatus::Queued) {
            self.ledger.release(id).await;
            return Err(JobError::Finished(now.status.as_str()));
        }
        Ok(())
    }

    /// Cancelled (or otherwise finished: stopped at its cap by a call its run made at once) while the prompt was
    /// on its way: the job stays as it ended, and ComfyUI's copy goes, from its queue or, if it has started already,
    /// by an interrupt of that prompt. The request that made it is answered with the job as it ended (a `failed`
    /// one), or told a person cancelled it (`job_finished`).
    async fn withdraw(
        &self,
        gateway: &ComfyGateway,
        id: &str,
        prompt_id: &str,
    ) -> Result<Job, JobError> {
        let queued = gateway.delete_queued(prompt_id).await;
        let interrupted = gateway.interrupt(prompt_id).await;
        if queued.is_err() || interrupted.is_err() {
            tracing::warn!(job = %id, %prompt_id, "a job finished while it was sent, and ComfyUI could not be told to drop it");
        }
        match self.store().job(id).await? {
            Some(job) if job.status != JobStatus::Cancelled => Ok(job),
            now => Err(JobError::Finished(
                now.map_or("gone", |j| j.status.as_str()),
            )),
        }
    }
}

impl Jobs {
    /// What a `POST /prompt`'s outcome makes of the job ([`Sent`]): accepted, the prompt id. A prompt that may have
    /// reached ComfyUI (no answer, or one that is not ComfyUI's own refusal) is, when paid, `needs_reconcile` and
    /// never sent again: its outcome is for a person to check. Otherwise the job failed, and a paid one's price goes
    /// back.
    async fn settle_post(
        &self,
        job: &Job,
        posted: Result<Posted, ComfyError>,
        paid: bool,
    ) -> Result<String, JobError> {
        let rejection = match posted {
            Ok(Posted::Accepted { prompt_id }) => {
                self.ledger.settle_sent(&job.id, Sent::Taken, paid).await;
                return Ok(prompt_id);
            }
            Err(error) => {
                let failure = if paid {
                    let message = format!(
                        "{error}. ComfyUI may have queued the paid workflow; it is not sent again. Check ComfyUI's \
                         queue and the Comfy.org account."
                    );
                    Failure::new(Code::ComfyOutcomeUnknown, message)
                } else {
                    error.failure()
                };
                self.ledger
                    .settle_sent(&job.id, Sent::Unknown(failure), paid)
                    .await;
                return Err(error.into());
            }
            Ok(Posted::Unclear(rejection)) if paid => {
                let message = format!(
                    "ComfyUI answered the paid workflow with HTTP {} and no prompt id; it may have been queued, so it \
                     is not sent again. Check ComfyUI's queue and the Comfy.org account.",
                    rejection.status
                );
                let failure = Failure::new(Code::ComfyOutcomeUnknown, message.clone());
                self.ledger
                    .settle_sent(&job.id, Sent::Unknown(failure), paid)
                    .await;
                return Err(ComfyError::BadResponse(message).into());
            }
            Ok(Posted::Refused(rejection) | Posted::Unclear(rejection)) => rejection,
        };
        let failure = Failure::new(Code::ComfyRejected, rejection.message.clone())
            .with_details(rejection.details.clone());
        self.ledger
            .settle_sent(&job.id, Sent::NotTaken(failure), paid)
            .await;
        let job = self
            .store()
            .job(&job.id)
            .await?
            .ok_or_else(|| JobError::NotFound(job.id.clone()))?;
        Err(JobError::Rejected {
            job: Box::new(job),
            message: rejection.message,
            details: rejection.details,
        })
    }
}

impl Jobs {
    /// Claims job `id` for this instance, with a fresh lease, unless another instance holds it. A job that ended
    /// meanwhile (cancelled while it was being sent) is left to the send's own handling of that.
    async fn hold_claim(&self, id: &str) -> Result<(), JobError> {
        let lease_until = crate::store::lease_until(self.lease);
        if self
            .store()
            .claim_job(id, &self.instance, &lease_until)
            .await?
        {
            return Ok(());
        }
        match self.store().job_claimant(id).await? {
            Some(holder) if holder != *self.instance => {
                Err(JobError::Finished("claimed by another instance"))
            }
            _ => Ok(()),
        }
    }

    /// The workflow a recorded job submits (`Null` when it cannot be read).
    pub(super) async fn stored_workflow(&self, id: &str) -> Value {
        self.store()
            .workflow(id)
            .await
            .ok()
            .flatten()
            .unwrap_or(Value::Null)
    }
}

/// How long a job waits for its backend's link before it is refused.
const LINK_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// A prompt id listened for on a link; dropped without being followed (the post failed, ComfyUI refused it, the
/// job was cancelled meanwhile), it is listened for no more.
struct Registration {
    link: std::sync::Arc<Link>,
    prompt_id: String,
    heard: Option<tokio::sync::mpsc::UnboundedReceiver<super::socket::Heard>>,
}

impl Registration {
    fn new(link: &std::sync::Arc<Link>, prompt_id: String) -> Self {
        let heard = Some(link.register(&prompt_id));
        Self {
            link: link.clone(),
            prompt_id,
            heard,
        }
    }

    /// The prompt is ComfyUI's now, under `answered` (its own id, should it have ignored the one sent).
    fn into_listening(mut self, answered: &str) -> Listening {
        let heard = match self.heard.take() {
            Some(heard) if answered == self.prompt_id => heard,
            _ => {
                self.link.unregister(&self.prompt_id);
                self.link.register(answered)
            }
        };
        self.prompt_id = answered.to_owned();
        Listening {
            link: self.link.clone(),
            heard,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.heard.is_some() {
            self.link.unregister(&self.prompt_id);
        }
    }
}

impl Jobs {
    /// The money gate at the moment of sending, for every path (the first submit, Orchestrator's queue, a move on
    /// failover, a restart): the workflow's nodes on `gateway`'s ComfyUI decide. A paid workflow of a job that holds
    /// no reservation is not sent: the job waits for an approval. Answers the Comfy.org key to put into the prompt
    /// (`None` for a free workflow).
    pub(crate) async fn gate_before_sending(
        &self,
        gateway: &ComfyGateway,
        job: &Job,
        workflow: &Value,
    ) -> Result<Option<crate::jobs::egress::JobKey>, JobError> {
        let catalog = self.money.models.nodes(gateway).await?;
        let assessment = self
            .gate()
            .assess(&catalog, workflow)
            .map_err(JobError::from)?;
        if !assessment.is_paid() {
            return Ok(None);
        }
        if job.cost_usd.is_none() {
            self.store()
                .await_approval(&job.id, &assessment.approval_json())
                .await?;
            self.ledger
                .change(&job.id, EventKind::State, Default::default())
                .await;
            tracing::info!(job = %job.id, "a job with paid nodes waits for its confirmation instead of being sent");
            let job = self
                .store()
                .job(&job.id)
                .await?
                .unwrap_or_else(|| job.clone());
            return Err(JobError::AwaitingConfirmation(Box::new(job)));
        }
        if !self.money.egress.is_configured() {
            return Err(refused(COMFY_ORG_NOT_CONFIGURED.into()));
        }
        // The job's own key, which only the egress takes: ComfyUI never holds the server's.
        Ok(Some(self.money.egress.issue_key(&job.id).await?))
    }
}
