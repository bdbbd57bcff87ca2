//! ComfyUI workflows with paid nodes, behind the same money rules as FLUX (`shared/DESIGN.md`).
//!
//! `POST /api/jobs`: the workflow's nodes are looked up on the backend it would go to ([`super::gate`]); a free one
//! runs as before. A paid one is sent only when the server allows generation, holds `COMFY_ORG_API_KEY` and the
//! request carries the `confirmToken` of a dry run of this very workflow and price; then, in one transaction, the
//! job is recorded, its price reserved against the day's budget (shared with FLUX), the token used up and the
//! `Idempotency-Key` claimed. A prompt refused at the gateway waits as an `awaiting_confirmation` job until
//! `POST /api/jobs/{id}/confirm` approves it the same way. Whatever the path, `Jobs::send_to_comfy` posts a paid
//! workflow only for a job that holds a reservation, and only with Orchestrator's own Comfy.org key in it.

use std::sync::Arc;

use http::StatusCode;
use serde_json::{Value, json};

use super::gate::{Assessment, Gate};
use super::runner::{JobError, Jobs};
use crate::clock::today;
use crate::codes::Code;
use crate::comfy::credentials;
use crate::comfy::error::ComfyError;
use crate::comfy::models::ModelCache;
use crate::comfy::nodes::{NodeCatalog, Unclassified};
use crate::comfy::proxy::ComfyGateway;
use crate::config::Secret;
use crate::model::{Backend, EventKind};
use crate::model::{Job, JobStatus};
use crate::money::confirm::TokenProblem;
use crate::money::keys::KeyLocks;
use crate::money::refusal::Refusal;
use crate::money::usd;
use crate::problems::NotConfigured;
use crate::store::{Approval, ApproveJob, IdempotencyClaim, NewJob, PaidJob, Reservation};

const SUBMIT_SCOPE: &str = "jobs.submit";
const CONFIRM_SCOPE: &str = "jobs.confirm";

/// What the job service needs to keep money safe.
pub struct Money {
    /// Each backend's node classes, cached with its model lists.
    pub models: Arc<ModelCache>,
    pub gate: Gate,
    /// Put into approved prompts only (`extra_data.api_key_comfy_org`).
    pub api_key: Option<Secret>,
    pub daily_budget_micros: i64,
    pub key_locks: KeyLocks,
}

/// A `POST /api/jobs` request, its template already made into a workflow.
pub struct Submission {
    pub template: Option<String>,
    pub params: Value,
    /// Input images are `core/ASSET` references (kept as assets), uploaded to whichever ComfyUI runs the job.
    pub workflow: Value,
    pub dry_run: bool,
    pub token: Option<String>,
    pub idempotency_key: Option<String>,
}

/// How a submission was answered.
pub enum Submitted {
    Job(Box<Job>),
    DryRun(Value),
    /// A repeat under an `Idempotency-Key`: the first answer.
    Replayed(StatusCode, Value),
}

fn refused(error: Refusal) -> JobError {
    JobError::Refused(Box::new(error))
}

fn unclassified(problem: Unclassified) -> JobError {
    match problem {
        Unclassified::NotAWorkflow => refused(Refusal::invalid(
            "workflow",
            "must be an object of nodes, each with a class_type (ComfyUI's API format)",
        )),
        Unclassified::UnknownClasses(unknown) => JobError::UnknownClasses(unknown),
    }
}

fn fingerprint(bound: &Value) -> String {
    crate::money::keys::fingerprint(super::gate::canonical(bound).as_bytes())
}

impl Jobs {
    pub(crate) fn gate(&self) -> &Gate {
        &self.money.gate
    }

    /// The node classes of `gateway`'s ComfyUI, or of any ComfyUI seen before when none is given.
    async fn catalog_for(&self, gateway: Option<&ComfyGateway>) -> Option<Arc<NodeCatalog>> {
        if let Some(gateway) = gateway
            && let Ok(nodes) = self.money.models.nodes(gateway).await
        {
            return Some(nodes);
        }
        self.money.models.any_known_nodes().await
    }

    /// The dry run of a workflow: its paid nodes, the estimate, and (for a paid one) a token for exactly this.
    async fn dry_run(&self, bound: &Value, assessment: &Assessment) -> Value {
        let gate = self.gate();
        let token = assessment.is_paid().then(|| gate.issue(bound, assessment));
        let budget = self
            .store
            .budget_usage(&today())
            .await
            .ok()
            .map(|usage| {
                let limit = self.money.daily_budget_micros;
                json!({ "limit": usd(limit), "spent": usd(usage.spent), "reserved": usd(usage.reserved),
                        "left": usd((limit - usage.spent - usage.reserved).max(0)), "currency": "USD" })
            });
        let minutes = gate.ttl_secs().div_ceil(60);
        let mut message = if assessment.is_paid() {
            format!(
                "Dry run: nothing was sent and nothing was charged. This workflow has {} paid node(s), estimated at \
                 ${:.3}. To run it, send the same body with this confirmToken within {minutes} min.",
                assessment.nodes.len(),
                usd(assessment.total_micros)
            )
        } else {
            "Dry run: nothing was sent. This workflow has no paid nodes and costs nothing to run."
                .to_owned()
        };
        if assessment.is_paid() && !gate.allow_generation {
            message.push_str(" Generation is disabled on this server (ALLOW_GENERATION=false).");
        }
        json!({
            "dryRun": true,
            "paid": assessment.is_paid(),
            "paidNodes": assessment.nodes_json(),
            "estimatedCost": { "usd": usd(assessment.total_micros), "currency": "USD" },
            "confirmToken": token,
            "expiresInSecs": gate.ttl_secs(),
            "allowGeneration": gate.allow_generation,
            "budget": budget,
            "message": message,
        })
    }

    /// The refusals a paid workflow gets before any token is looked at, in the order of the money rules.
    fn paid_allowed(&self, assessment: &Assessment) -> Result<(), JobError> {
        if !self.gate().allow_generation {
            return Err(refused(Refusal::GenerationDisabled {
                details: assessment.approval_json(),
            }));
        }
        if self.money.api_key.is_none() {
            return Err(refused(COMFY_ORG_NOT_CONFIGURED.into()));
        }
        Ok(())
    }

    /// 402 with a fresh dry run, for a paid workflow without a valid token.
    async fn needs_confirmation(
        &self,
        problem: TokenProblem,
        bound: &Value,
        assessment: &Assessment,
    ) -> JobError {
        refused(Refusal::NeedsConfirmation {
            problem,
            message: format!(
                "This workflow has paid nodes (estimated ${:.3}); it runs only with a person's confirmation. {}",
                usd(assessment.total_micros),
                problem.message()
            ),
            details: self.dry_run(bound, assessment).await,
        })
    }

    /// `POST /api/jobs`.
    pub async fn submit(&self, mut submission: Submission) -> Result<Submitted, JobError> {
        credentials::strip(&mut submission.workflow, None);
        let gateway = self.choose_backend().await.cloned();
        // The choice's quick probe may miss a ComfyUI that is only slow (a loaded machine): the workflow is then
        // judged by the first one's node list, which has a read limit of its own, rather than by none.
        let judge = gateway.clone().or_else(|| self.backends.first().cloned());
        // Never seen a ComfyUI: nobody can tell what the nodes cost. The job waits in the queue and is looked at
        // again before it is sent; a dry run or a confirmation cannot be answered.
        let assessment = match self.catalog_for(judge.as_ref()).await {
            Some(catalog) => Some(
                self.gate()
                    .assess(&catalog, &submission.workflow)
                    .map_err(unclassified)?,
            ),
            None if submission.dry_run || submission.token.is_some() => {
                return Err(refused(Refusal::Comfy(ComfyError::Offline {
                    upstream: self.origins(),
                    what: "it cannot be told which of the workflow's nodes cost money",
                })));
            }
            None => None,
        };
        // Input images by their content, not by their asset ids (each upload of one image has its own).
        let bound = self.assets.bound(&submission.workflow).await?;
        if let Some(assessment) = &assessment
            && submission.dry_run
        {
            return Ok(Submitted::DryRun(self.dry_run(&bound, assessment).await));
        }
        let Some(assessment) = assessment.filter(Assessment::is_paid) else {
            let job = self
                .submit_comfy(
                    gateway,
                    submission.template.as_deref(),
                    &submission.params,
                    submission.workflow,
                )
                .await?;
            return Ok(Submitted::Job(Box::new(job)));
        };
        self.paid_allowed(&assessment)?;
        let Some(gateway) = gateway else {
            return Err(refused(Refusal::Comfy(ComfyError::Offline {
                upstream: self.origins(),
                what: "a paid workflow is sent only to a ComfyUI that answers",
            })));
        };
        // From here on money may move: a task of its own, so a client that hangs up cannot cut it short between
        // the reservation and the submit.
        let this = self.clone();
        self.background()
            .spawn(async move {
                match submission.idempotency_key.clone() {
                    None => {
                        this.submit_paid(gateway, submission, bound, assessment)
                            .await
                    }
                    Some(key) => {
                        let work = this.submit_paid(gateway, submission, bound, assessment);
                        this.money.key_locks.with(&key, work).await
                    }
                }
            })
            .await
            .map_err(JobError::Task)?
    }

    async fn submit_paid(
        &self,
        gateway: ComfyGateway,
        submission: Submission,
        bound: Value,
        assessment: Assessment,
    ) -> Result<Submitted, JobError> {
        let fingerprint = fingerprint(&bound);
        let key = submission.idempotency_key.as_deref();
        if let Some(key) = key
            && let Some(replay) = self.prior_answer(SUBMIT_SCOPE, key, &fingerprint).await?
        {
            return Ok(replay);
        }
        let token_id = match self
            .gate()
            .check(submission.token.as_deref(), &bound, &assessment)
        {
            Ok(id) => id,
            Err(problem) => {
                return Err(self.needs_confirmation(problem, &bound, &assessment).await);
            }
        };
        let day = today();
        let approval = assessment.approval_json();
        let paid = PaidJob {
            job: NewJob {
                backend: Backend::Comfy,
                template: submission.template.as_deref(),
                params: &submission.params,
                workflow: &submission.workflow,
                backend_url: Some(&gateway.backend().origin()),
            },
            cost_micros: assessment.total_micros,
            day: &day,
            budget_micros: self.money.daily_budget_micros,
            idempotency: key.map(|key| IdempotencyClaim {
                scope: SUBMIT_SCOPE,
                key,
                fingerprint: &fingerprint,
            }),
            token_id: &token_id,
            approval: Some(&approval),
        };
        let job = match self.store.reserve_paid_job(paid).await? {
            Reservation::Reserved(job) => *job,
            Reservation::OverBudget(usage) => return Err(self.over_budget(&assessment, usage)),
            Reservation::TokenUsed => {
                return Err(self
                    .needs_confirmation(TokenProblem::Used, &bound, &assessment)
                    .await);
            }
            Reservation::KeyReused => return Err(refused(Refusal::IdempotencyKeyReused)),
            // A repeat that raced the first request (from another instance): the first request's job answers.
            Reservation::KeyClaimed(job_id) => {
                let id = job_id.unwrap_or_default();
                let job = self
                    .store
                    .job(&id)
                    .await?
                    .ok_or_else(|| JobError::NotFound(id.clone()))?;
                let body = json!({ "id": job.id, "status": job.status });
                return Ok(Submitted::Replayed(StatusCode::ACCEPTED, body));
            }
        };
        let answer = self
            .send_to_comfy(job, &submission.workflow)
            .await
            .map(|job| Submitted::Job(Box::new(job)));
        if let Some(key) = key {
            self.remember(SUBMIT_SCOPE, key, &answer).await;
        }
        answer
    }

    fn over_budget(&self, assessment: &Assessment, usage: crate::store::BudgetUsage) -> JobError {
        let limit = self.money.daily_budget_micros;
        refused(Refusal::budget_exceeded(
            assessment.total_micros,
            limit,
            usage.spent,
            usage.reserved,
        ))
    }

    /// The first answer under an idempotency key, when there was one for the same request.
    async fn prior_answer(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<Submitted>, JobError> {
        let since = (chrono::Utc::now() - crate::money::keys::WINDOW)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let Some(record) = self.store.idempotency_record(scope, key, &since).await? else {
            let used_before = self.gate().forget_used_before();
            let _ = self
                .store
                .prune_idempotency_keys(&since, &used_before)
                .await;
            return Ok(None);
        };
        if record.fingerprint != fingerprint {
            return Err(refused(Refusal::IdempotencyKeyReused));
        }
        if let Some((status, body)) = record.response {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            return Ok(Some(Submitted::Replayed(status, body)));
        }
        // The first request was cut off (a crash) after its job was written: that job is the answer.
        match &record.job_id {
            Some(id) => Ok(self.store.job(id).await?.map(|job| {
                Submitted::Replayed(
                    StatusCode::ACCEPTED,
                    json!({ "id": job.id, "status": job.status }),
                )
            })),
            None => Ok(None),
        }
    }

    /// Keeps the answer of a request that made a job, for its repeats.
    async fn remember(&self, scope: &str, key: &str, answer: &Result<Submitted, JobError>) {
        if let Ok(Submitted::Job(job)) = answer {
            let body = json!({ "id": job.id, "status": job.status });
            if let Err(error) = self
                .store
                .record_idempotent_response(scope, key, StatusCode::ACCEPTED.as_u16(), &body)
                .await
            {
                tracing::error!(job = %job.id, %error, "cannot keep the answer of an idempotent request");
            }
        }
    }

    /// A prompt with paid nodes that came through the gateway without an approval: kept, with its dry run, as a
    /// job that waits for a person (`POST /api/jobs/{id}/confirm`); nothing is sent. `source` says where it came
    /// from (the job's parameters, shown to whoever approves it).
    pub async fn park(
        &self,
        gateway: &ComfyGateway,
        workflow: &Value,
        assessment: &Assessment,
        source: &Value,
    ) -> Result<Job, JobError> {
        let new = NewJob {
            backend: Backend::Comfy,
            template: None,
            params: source,
            workflow,
            backend_url: Some(&gateway.backend().origin()),
        };
        let job = self
            .store
            .insert_awaiting_job(new, &assessment.approval_json())
            .await?;
        self.change(&job.id, EventKind::State, Default::default())
            .await;
        tracing::info!(job = %job.id, paid_nodes = assessment.nodes.len(), "a paid prompt waits for its confirmation");
        Ok(self.store.job(&job.id).await?.unwrap_or(job))
    }

    /// `POST /api/jobs/{id}/confirm`: approves a waiting job at its price and sends it.
    pub async fn confirm(
        &self,
        id: &str,
        token: Option<String>,
        idempotency_key: Option<String>,
    ) -> Result<Submitted, JobError> {
        let this = self.clone();
        let id = id.to_owned();
        self.background()
            .spawn(async move {
                match idempotency_key {
                    None => this.confirm_once(&id, token.as_deref(), None).await,
                    Some(key) => {
                        let work = this.confirm_once(&id, token.as_deref(), Some(&key));
                        this.money.key_locks.with(&key, work).await
                    }
                }
            })
            .await
            .map_err(JobError::Task)?
    }

    async fn confirm_once(
        &self,
        id: &str,
        token: Option<&str>,
        key: Option<&str>,
    ) -> Result<Submitted, JobError> {
        let fingerprint = fingerprint(&json!({ "confirm": id }));
        if let Some(key) = key
            && let Some(replay) = self.prior_answer(CONFIRM_SCOPE, key, &fingerprint).await?
        {
            return Ok(replay);
        }
        let job = self
            .store
            .job(id)
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
        if job.status != JobStatus::AwaitingConfirmation {
            return Err(refused(Refusal::NotAwaitingConfirmation {
                status: job.status.as_str(),
            }));
        }
        let workflow = self.store.workflow(id).await?.unwrap_or(Value::Null);
        let gateway = self.backend_of(&job).clone();
        let catalog = self.money.models.nodes(&gateway).await?;
        let assessment = self
            .gate()
            .assess(&catalog, &workflow)
            .map_err(unclassified)?;
        self.paid_allowed(&assessment)?;
        let token_id = match self.gate().check(token, &workflow, &assessment) {
            Ok(id) => id,
            Err(problem) => {
                return Err(self
                    .needs_confirmation(problem, &workflow, &assessment)
                    .await);
            }
        };
        let approve = ApproveJob {
            job_id: id,
            cost_micros: assessment.total_micros,
            day: &today(),
            budget_micros: self.money.daily_budget_micros,
            token_id: &token_id,
            idempotency: key.map(|key| IdempotencyClaim {
                scope: CONFIRM_SCOPE,
                key,
                fingerprint: &fingerprint,
            }),
            approval: &assessment.approval_json(),
        };
        let job = match self.store.approve_job(approve).await? {
            Approval::Approved(job) => *job,
            Approval::OverBudget(usage) => return Err(self.over_budget(&assessment, usage)),
            Approval::TokenUsed => {
                return Err(self
                    .needs_confirmation(TokenProblem::Used, &workflow, &assessment)
                    .await);
            }
            Approval::NotAwaiting(status) => {
                return Err(refused(Refusal::NotAwaitingConfirmation {
                    status: status.map_or("gone", JobStatus::as_str),
                }));
            }
        };
        self.change(&job.id, EventKind::State, Default::default())
            .await;
        let answer = self
            .send_to_comfy(job, &workflow)
            .await
            .map(|job| Submitted::Job(Box::new(job)));
        if let Some(key) = key {
            self.remember(CONFIRM_SCOPE, key, &answer).await;
        }
        answer
    }

    /// The money gate at the moment of sending, for every path (the first submit, Orchestrator's queue, a move on
    /// failover, a restart): the workflow's nodes on `gateway`'s ComfyUI decide. A paid workflow of a job that holds
    /// no reservation is not sent: the job waits for an approval. Answers the Comfy.org key to put into the prompt
    /// (`None` for a free workflow).
    pub(crate) async fn gate_before_sending(
        &self,
        gateway: &ComfyGateway,
        job: &Job,
        workflow: &Value,
    ) -> Result<Option<Secret>, JobError> {
        let catalog = self.money.models.nodes(gateway).await?;
        let assessment = self
            .gate()
            .assess(&catalog, workflow)
            .map_err(unclassified)?;
        if !assessment.is_paid() {
            return Ok(None);
        }
        if job.cost_usd.is_none() {
            self.store
                .await_approval(&job.id, &assessment.approval_json())
                .await?;
            self.change(&job.id, EventKind::State, Default::default())
                .await;
            tracing::info!(job = %job.id, "a job with paid nodes waits for its confirmation instead of being sent");
            let job = self
                .store
                .job(&job.id)
                .await?
                .unwrap_or_else(|| job.clone());
            return Err(JobError::AwaitingConfirmation(Box::new(job)));
        }
        match &self.money.api_key {
            Some(key) => Ok(Some(key.clone())),
            None => Err(refused(COMFY_ORG_NOT_CONFIGURED.into())),
        }
    }

    pub(super) fn origins(&self) -> String {
        self.backends
            .iter()
            .map(|b| b.backend().origin())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

const COMFY_ORG_NOT_CONFIGURED: NotConfigured = NotConfigured {
    code: Code::ComfyOrgNotConfigured,
    what: "Comfy.org API nodes (COMFY_ORG_API_KEY)",
};
