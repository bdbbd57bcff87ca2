//! ComfyUI workflows with paid nodes, behind the same money rules as FLUX (`shared/DESIGN.md`): their purchases at
//! the checkout ([`crate::money::checkout`]).
//!
//! `POST /api/jobs` ([`super::submit`]): a paid workflow is sent only when the server allows generation, holds
//! `COMFY_ORG_API_KEY` and the request carries the `confirmToken` of a dry run of this very workflow and price;
//! then, in one transaction, the job is recorded, its price reserved against the day's budget (shared with FLUX),
//! the token used up and the claimed `Idempotency-Key` bound to the job. A prompt refused at the gateway waits as
//! an `awaiting_confirmation` job until `POST /api/jobs/{id}/confirm` approves it the same way. Whatever the path, `Jobs::send_to_comfy` posts a paid
//! workflow only for a job that holds a reservation, and only with Orchestrator's own Comfy.org key in it.

use http::StatusCode;
use serde_json::{Value, json};

use super::gate::{Assessment, COMFY_ORG_NOT_CONFIGURED};
use super::runner::{JobError, Jobs, refused};
use super::submit::{Submission, Submitted};
use crate::clock::today;
use crate::comfy::proxy::ComfyGateway;
use crate::model::{Backend, EventKind};
use crate::model::{Job, JobStatus};
use crate::money::checkout::{Order, Prepared, Purchase};
use crate::money::confirm::TokenProblem;
use crate::money::refusal::Refusal;
use crate::money::usd;
use crate::store::{NewJob, Record};

pub(super) const SUBMIT_SCOPE: &str = "jobs.submit";
const CONFIRM_SCOPE: &str = "jobs.confirm";

/// What a job keeps of its approval: the dry run, and the person's cap when one was given.
pub(super) fn with_cap(mut approval: Value, max_micros: Option<i64>) -> Value {
    if let Some(max) = max_micros {
        approval["maxUsd"] = json!(usd(max));
    }
    approval
}

pub(super) fn fingerprint(bound: &Value) -> String {
    crate::money::keys::fingerprint(super::gate::canonical(bound).as_bytes())
}

impl Jobs {
    /// The dry run of a workflow: its paid nodes, the estimate, and (for a paid one) a token for exactly this and
    /// the amount it confirms: the person's cap (`max_micros`, checked by [`Assessment::amount`] before), else the
    /// estimate. A run the estimate does not cover gets no token without a cap.
    pub(super) async fn dry_run(
        &self,
        bound: &Value,
        assessment: &Assessment,
        max_micros: Option<i64>,
    ) -> Value {
        let gate = self.gate();
        let amount = assessment.amount(max_micros).ok().flatten();
        let token = amount
            .filter(|_| assessment.is_paid())
            .map(|amount| gate.issue(bound, amount));
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
        if assessment.is_paid() && amount.is_none() {
            message = format!(
                "Dry run: nothing was sent. A paid node of this workflow runs a number of times (or costs a count) \
                 that the graph does not fix, so the run cannot be priced in advance: at least ${:.3}. Ask again \
                 with maxUsd, the most it may spend; the run is stopped there.",
                usd(assessment.total_micros)
            );
        }
        if assessment.is_paid() && !gate.allow_generation {
            message.push_str(" Generation is disabled on this server (ALLOW_GENERATION=false).");
        }
        json!({
            "dryRun": true,
            "paid": assessment.is_paid(),
            "paidNodes": assessment.nodes_json(),
            "estimatedCost": { "usd": usd(assessment.total_micros), "currency": "USD" },
            "openEnded": assessment.open_ended,
            "maxUsd": amount.map(usd),
            "confirmToken": token,
            "expiresInSecs": gate.ttl_secs(),
            "allowGeneration": gate.allow_generation,
            "budget": budget,
            "message": message,
        })
    }

    /// The refusals a paid workflow gets before any token is looked at, in the order of the money rules.
    pub(super) fn paid_allowed(&self, assessment: &Assessment) -> Result<(), JobError> {
        if !self.gate().allow_generation {
            return Err(refused(Refusal::GenerationDisabled {
                details: assessment.approval_json(),
            }));
        }
        if !self.money.egress.is_configured() {
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
        max_micros: Option<i64>,
    ) -> JobError {
        refused(Refusal::NeedsConfirmation {
            problem,
            message: format!(
                "This workflow has paid nodes (estimated ${:.3}); it runs only with a person's confirmation. {}",
                usd(assessment.total_micros),
                problem.message()
            ),
            details: self.dry_run(bound, assessment, max_micros).await,
        })
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
            .store()
            .insert_awaiting_job(new, &assessment.approval_json())
            .await?;
        self.ledger
            .change(&job.id, EventKind::State, Default::default())
            .await;
        tracing::info!(job = %job.id, paid_nodes = assessment.nodes.len(), "a paid prompt waits for its confirmation");
        Ok(self.store().job(&job.id).await?.unwrap_or(job))
    }

    /// `POST /api/jobs/{id}/confirm`: approves a waiting job at its price and sends it.
    pub async fn confirm(
        &self,
        id: &str,
        token: Option<String>,
        max_micros: Option<i64>,
        idempotency_key: Option<String>,
    ) -> Result<Submitted, JobError> {
        let order = Order {
            scope: CONFIRM_SCOPE,
            key: idempotency_key,
            // A confirmation without a cap keeps the fingerprint it had before caps existed.
            fingerprint: fingerprint(&match max_micros {
                None => json!({ "confirm": id }),
                Some(max) => json!({ "confirm": id, "maxMicros": max }),
            }),
        };
        let purchase = PaidConfirm {
            jobs: self.clone(),
            job_id: id.to_owned(),
            token,
            max_micros,
            judged: None,
        };
        Ok(self.money.checkout.pay(order, purchase).await?.into())
    }
}

/// A paid `POST /api/jobs`: a new job, reserved and sent to `backend_url`'s ComfyUI.
pub(super) struct PaidSubmit {
    pub(super) jobs: Jobs,
    pub(super) backend_url: String,
    pub(super) approval: Value,
    pub(super) submission: Submission,
    /// The workflow with its input images bound by content: what the token confirms.
    pub(super) bound: Value,
    pub(super) assessment: Assessment,
}

impl Purchase for PaidSubmit {
    type Answer = Job;
    type Error = JobError;

    async fn prepare(&mut self) -> Result<Prepared, JobError> {
        let (jobs, bound, assessment) = (&self.jobs, &self.bound, &self.assessment);
        let max = self.submission.max_micros;
        prepared(
            jobs,
            self.submission.token.as_deref(),
            bound,
            assessment,
            max,
        )
        .await
    }

    async fn token_used(&self) -> JobError {
        let max = self.submission.max_micros;
        self.jobs
            .needs_confirmation(TokenProblem::Used, &self.bound, &self.assessment, max)
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

/// A paid workflow's token checked for the amount it confirms (the person's cap, else the estimate); a run that
/// cannot be priced without a cap, or a token that does not fit, is answered with a fresh dry run.
async fn prepared(
    jobs: &Jobs,
    token: Option<&str>,
    bound: &Value,
    assessment: &Assessment,
    max_micros: Option<i64>,
) -> Result<Prepared, JobError> {
    let amount = assessment.amount(max_micros).map_err(refused)?;
    let Some(amount) = amount else {
        return Err(jobs
            .needs_confirmation(TokenProblem::Missing, bound, assessment, max_micros)
            .await);
    };
    match jobs.gate().check(token, bound, amount) {
        Ok(token_id) => Ok(Prepared {
            price_micros: amount,
            token_id,
        }),
        Err(problem) => Err(jobs
            .needs_confirmation(problem, bound, assessment, max_micros)
            .await),
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
    /// The person's cap, `maxUsd`.
    max_micros: Option<i64>,
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
            .store()
            .job(&self.job_id)
            .await?
            .ok_or_else(|| JobError::NotFound(self.job_id.clone()))?;
        if job.status != JobStatus::AwaitingConfirmation {
            return Err(refused(Refusal::NotAwaitingConfirmation {
                status: job.status.as_str(),
            }));
        }
        let workflow = jobs
            .store()
            .workflow(&self.job_id)
            .await?
            .unwrap_or(Value::Null);
        let catalog = jobs.money.models.nodes(jobs.backend_of(&job)).await?;
        let assessment = jobs
            .gate()
            .assess(&catalog, &workflow)
            .map_err(JobError::from)?;
        jobs.paid_allowed(&assessment)?;
        let (token, max) = (self.token.as_deref(), self.max_micros);
        let answer = prepared(jobs, token, &workflow, &assessment, max).await;
        self.judged = Some(Judged {
            approval: with_cap(assessment.approval_json(), max),
            workflow,
            assessment,
        });
        answer
    }

    async fn token_used(&self) -> JobError {
        let judged = self.judged();
        let (workflow, assessment) = (&judged.workflow, &judged.assessment);
        self.jobs
            .needs_confirmation(TokenProblem::Used, workflow, assessment, self.max_micros)
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
            .ledger
            .change(&job.id, EventKind::State, Default::default())
            .await;
        self.jobs.send_to_comfy(job, &self.judged().workflow).await
    }

    fn keep(answer: Result<&Job, &JobError>) -> Option<(StatusCode, Value)> {
        kept_job(answer)
    }
}
