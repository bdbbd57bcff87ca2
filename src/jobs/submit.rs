//! `POST /api/jobs`: a workflow judged on the backend it would go to ([`super::gate`]): a dry run answered, a free
//! one recorded and sent, a paid one through the checkout ([`super::paid`]).

use std::sync::Arc;

use http::StatusCode;
use serde_json::{Value, json};

use super::gate::Assessment;
use super::paid::{PaidSubmit, SUBMIT_SCOPE, fingerprint, with_cap};
use super::runner::{JobError, Jobs, refused};
use crate::comfy::credentials;
use crate::comfy::error::ComfyError;
use crate::comfy::nodes::NodeCatalog;
use crate::comfy::proxy::ComfyGateway;
use crate::model::Job;
use crate::money::checkout::{Order, Paid};
use crate::money::refusal::Refusal;

/// A `POST /api/jobs` request, its template already made into a workflow.
pub struct Submission {
    pub template: Option<String>,
    pub params: Value,
    /// Input images are `core/ASSET` references (kept as assets), uploaded to whichever ComfyUI runs the job.
    pub workflow: Value,
    pub dry_run: bool,
    pub token: Option<String>,
    /// The person's cap on a paid run (`maxUsd`), in millionths of a dollar.
    pub max_micros: Option<i64>,
    pub idempotency_key: Option<String>,
}

/// How a submission was answered.
pub enum Submitted {
    Job(Box<Job>),
    DryRun(Value),
    /// A repeat under an `Idempotency-Key`: the first answer.
    Replayed(StatusCode, Value),
}

impl From<Paid<Job>> for Submitted {
    fn from(paid: Paid<Job>) -> Self {
        match paid {
            Paid::Done(job) => Self::Job(Box::new(job)),
            Paid::Replayed(status, body) => Self::Replayed(status, body),
        }
    }
}

impl Jobs {
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
                    .map_err(JobError::from)?,
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
        if let Some(assessment) = &assessment {
            // A cap below the estimate is refused before anything else.
            assessment.amount(submission.max_micros).map_err(refused)?;
            if submission.dry_run {
                let max = submission.max_micros;
                return Ok(Submitted::DryRun(
                    self.dry_run(&bound, assessment, max).await,
                ));
            }
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
            // A request without a cap keeps the fingerprint it had before caps existed.
            fingerprint: match submission.max_micros {
                None => fingerprint(&bound),
                Some(max) => fingerprint(&json!([&bound, max])),
            },
        };
        let purchase = PaidSubmit {
            jobs: self.clone(),
            backend_url: gateway.backend().origin(),
            approval: with_cap(assessment.approval_json(), submission.max_micros),
            submission,
            bound,
            assessment,
        };
        Ok(self.money.checkout.pay(order, purchase).await?.into())
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
}
