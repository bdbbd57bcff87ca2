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
use crate::money::checkout::{Checkout, Order, Paid, Prepared, Purchase};
use crate::money::confirm::TokenProblem;
use crate::money::refusal::Refusal;
use crate::money::usd;
use crate::problems::NotConfigured;
use crate::store::{NewJob, Record};

const SUBMIT_SCOPE: &str = "jobs.submit";
const CONFIRM_SCOPE: &str = "jobs.confirm";

/// What the job service needs to keep money safe.
pub struct Money {
    /// Each backend's node classes, cached with its model lists.
    pub models: Arc<ModelCache>,
    pub gate: Gate,
    /// Put into approved prompts only (`extra_data.api_key_comfy_org`).
    pub api_key: Option<Secret>,
    pub checkout: Arc<Checkout>,
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

impl From<Refusal> for JobError {
    fn from(refusal: Refusal) -> Self {
        refused(refusal)
    }
}

impl From<Paid<Job>> for Submitted {
    fn from(paid: Paid<Job>) -> Self {
        match paid {
            Paid::Done(job) => Self::Job(Box::new(job)),
            Paid::Replayed(status, body) => Self::Replayed(status, body),
        }
    }
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
        let budget = self.money.checkout.budget(&today()).await.ok().map(|b| {
            json!({ "limit": b.limit, "spent": b.spent, "reserved": b.reserved, "left": b.left, "currency": "USD" })
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
        let order = Order {
            scope: SUBMIT_SCOPE,
            key: submission.idempotency_key.clone(),
            fingerprint: fingerprint(&bound),
        };
        let purchase = PaidSubmit {
            jobs: self.clone(),
            backend_url: gateway.backend().origin(),
            approval: assessment.approval_json(),
            submission,
            bound,
            assessment,
        };
        Ok(self.money.checkout.pay(order, purchase).await?.into())
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
        let order = Order {
            scope: CONFIRM_SCOPE,
            key: idempotency_key,
            fingerprint: fingerprint(&json!({ "confirm": id })),
        };
        let purchase = PaidConfirm {
            jobs: self.clone(),
            job_id: id.to_owned(),
            token,
            judged: None,
        };
        Ok(self.money.checkout.pay(order, purchase).await?.into())
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

/// A paid `POST /api/jobs`: a new job, reserved and sent to `backend_url`'s ComfyUI.
struct PaidSubmit {
    jobs: Jobs,
    backend_url: String,
    approval: Value,
    submission: Submission,
    /// The workflow with its input images bound by content: what the token confirms.
    bound: Value,
    assessment: Assessment,
}

impl Purchase for PaidSubmit {
    type Answer = Job;
    type Error = JobError;

    async fn prepare(&mut self) -> Result<Prepared, JobError> {
        let (jobs, bound, assessment) = (&self.jobs, &self.bound, &self.assessment);
        match jobs
            .gate()
            .check(self.submission.token.as_deref(), bound, assessment)
        {
            Ok(token_id) => Ok(Prepared {
                price_micros: assessment.total_micros,
                token_id,
            }),
            Err(problem) => Err(jobs.needs_confirmation(problem, bound, assessment).await),
        }
    }

    async fn token_used(&self) -> JobError {
        self.jobs
            .needs_confirmation(TokenProblem::Used, &self.bound, &self.assessment)
            .await
    }

    fn record(&self) -> Record<'_> {
        Record::New {
            job: NewJob {
                backend: Backend::Comfy,
                template: self.submission.template.as_deref(),
                params: &self.submission.params,
                workflow: &self.submission.workflow,
                backend_url: Some(&self.backend_url),
            },
            approval: Some(&self.approval),
        }
    }

    async fn send(&self, job: Job) -> Result<Job, JobError> {
        self.jobs
            .send_to_comfy(job, &self.submission.workflow)
            .await
    }

    fn keep(answer: Result<&Job, &JobError>) -> Option<(StatusCode, Value)> {
        kept_job(answer)
    }
}

/// A request that made a job is answered, when repeated, with that job's id and the status it had.
fn kept_job(answer: Result<&Job, &JobError>) -> Option<(StatusCode, Value)> {
    let job = answer.ok()?;
    Some((
        StatusCode::ACCEPTED,
        json!({ "id": job.id, "status": job.status }),
    ))
}

/// `POST /api/jobs/{id}/confirm`: a job that waited for a person's approval, judged again now, reserved and sent.
struct PaidConfirm {
    jobs: Jobs,
    job_id: String,
    token: Option<String>,
    /// The stored workflow, its assessment and the approval recorded, once judged.
    judged: Option<Judged>,
}

struct Judged {
    workflow: Value,
    assessment: Assessment,
    approval: Value,
}

impl PaidConfirm {
    /// What [`Purchase::prepare`] found: the checkout calls nothing else before it.
    fn judged(&self) -> &Judged {
        self.judged
            .as_ref()
            .expect("a confirmation is judged before it is reserved")
    }
}

impl Purchase for PaidConfirm {
    type Answer = Job;
    type Error = JobError;

    /// The job must wait for its approval; its workflow is judged on its backend's nodes as they are now.
    async fn prepare(&mut self) -> Result<Prepared, JobError> {
        let jobs = &self.jobs;
        let job = jobs
            .store
            .job(&self.job_id)
            .await?
            .ok_or_else(|| JobError::NotFound(self.job_id.clone()))?;
        if job.status != JobStatus::AwaitingConfirmation {
            return Err(refused(Refusal::NotAwaitingConfirmation {
                status: job.status.as_str(),
            }));
        }
        let workflow = jobs
            .store
            .workflow(&self.job_id)
            .await?
            .unwrap_or(Value::Null);
        let catalog = jobs.money.models.nodes(jobs.backend_of(&job)).await?;
        let assessment = jobs
            .gate()
            .assess(&catalog, &workflow)
            .map_err(unclassified)?;
        jobs.paid_allowed(&assessment)?;
        let checked = jobs
            .gate()
            .check(self.token.as_deref(), &workflow, &assessment);
        let answer = match checked {
            Ok(token_id) => Ok(Prepared {
                price_micros: assessment.total_micros,
                token_id,
            }),
            Err(problem) => Err(jobs
                .needs_confirmation(problem, &workflow, &assessment)
                .await),
        };
        self.judged = Some(Judged {
            approval: assessment.approval_json(),
            workflow,
            assessment,
        });
        answer
    }

    async fn token_used(&self) -> JobError {
        let judged = self.judged();
        self.jobs
            .needs_confirmation(TokenProblem::Used, &judged.workflow, &judged.assessment)
            .await
    }

    fn record(&self) -> Record<'_> {
        Record::Approve {
            job_id: &self.job_id,
            approval: &self.judged().approval,
        }
    }

    async fn send(&self, job: Job) -> Result<Job, JobError> {
        self.jobs
            .change(&job.id, EventKind::State, Default::default())
            .await;
        self.jobs.send_to_comfy(job, &self.judged().workflow).await
    }

    fn keep(answer: Result<&Job, &JobError>) -> Option<(StatusCode, Value)> {
        kept_job(answer)
    }
}
