//! FLUX generation behind the money rules (`shared/DESIGN.md`): a dry run by default, a paid call only when the
//! server allows it and a person confirmed the exact payload and price, one charge per `Idempotency-Key`, and a
//! daily budget reserved before the call.
//!
//! The order of a paid call: the body is validated; the server must allow generation and hold a key; a repeated
//! `Idempotency-Key` gets the first answer back; the confirmation token must match; the job row, the price
//! reservation and the key are written in one transaction; only then is BFL called. Its id is stored right after.
//! A submit whose outcome is unknown leaves the job `needs_reconcile` and is never sent again; after a restart,
//! submitted tasks are polled again and nothing is resent.

mod recover;

pub use recover::FluxDriver;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::error::FluxError;
use crate::bfl::catalog::{self, ValidRequest};
use crate::bfl::client::{BflClient, Polled, Submitted};
use crate::clock::today;
use crate::codes::{Code, Failure};
use crate::config::FluxConfig;
use crate::jobs::ledger::{Ledger, Sent, finished};
use crate::model::{Backend, EventKind};
use crate::model::{Job, JobStatus, OutputFile};
use crate::money::checkout::{Checkout, Order, Paid, Prepared, Purchase};
use crate::money::confirm::TokenProblem;
use crate::money::refusal::Refusal;
use crate::money::usd;
use crate::problems::{Invalid, NotConfigured, ProviderError};
use crate::store::{JobChange, NewJob, Record, Store, StoreError};

const IDEMPOTENCY_SCOPE: &str = "flux.generate";
/// The longest pause between two polls.
const MAX_POLL_PAUSE: Duration = Duration::from_secs(5);

/// An answer of `POST /api/flux/generate`.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    /// A repeat of an earlier request with the same `Idempotency-Key`.
    pub replayed: bool,
}

/// The budget as `GET /api/flux/budget` shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = FluxBudget)]
pub struct Budget {
    pub day: String,
    #[schema(value_type = String, example = "USD")]
    pub currency: &'static str,
    pub limit: f64,
    pub spent: f64,
    pub reserved: f64,
    pub left: f64,
    #[serde(rename = "allowGeneration")]
    pub allow_generation: bool,
    pub configured: bool,
}

#[derive(Clone)]
pub struct Flux(Arc<Inner>);

struct Inner {
    config: FluxConfig,
    client: BflClient,
    checkout: Arc<Checkout>,
    ledger: Ledger,
    /// Where each job's files go (a folder per job, as ComfyUI's jobs have).
    outputs: std::path::PathBuf,
}

impl Flux {
    pub fn new(
        config: FluxConfig,
        ledger: Ledger,
        outputs: std::path::PathBuf,
        checkout: Arc<Checkout>,
    ) -> Self {
        Self(Arc::new(Inner {
            client: BflClient::new(&config),
            checkout,
            config,
            ledger,
            outputs,
        }))
    }

    fn store(&self) -> &Store {
        self.0.ledger.store()
    }

    pub fn is_configured(&self) -> bool {
        self.0.client.is_configured()
    }

    pub fn client(&self) -> &BflClient {
        &self.0.client
    }

    pub async fn budget(&self) -> Result<Budget, StoreError> {
        let day = today();
        let now = self.0.checkout.budget(&day).await?;
        Ok(Budget {
            day,
            currency: "USD",
            limit: now.limit,
            spent: now.spent,
            reserved: now.reserved,
            left: now.left,
            allow_generation: self.0.config.allow_generation,
            configured: self.is_configured(),
        })
    }

    /// `POST /api/flux/generate`.
    pub async fn generate(
        &self,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, FluxError> {
        let Some(body) = body.as_object() else {
            return Err(Refusal::invalid("body", "must be a JSON object").into());
        };
        let dry_run = match body.get("dryRun").or_else(|| body.get("dry_run")) {
            None | Some(Value::Null) => true,
            Some(Value::Bool(flag)) => *flag,
            Some(_) => return Err(Refusal::invalid("dryRun", "must be true or false").into()),
        };
        let token = match body
            .get("confirmToken")
            .or_else(|| body.get("confirm_token"))
        {
            None | Some(Value::Null) => None,
            Some(Value::String(token)) => Some(token.as_str()),
            Some(_) => return Err(Refusal::invalid("confirmToken", "must be a string").into()),
        };
        let request =
            catalog::validate(body).map_err(|fields| Refusal::Invalid(Invalid(fields)))?;
        if dry_run {
            return Ok(self.dry_run(&request).await);
        }
        if !self.0.config.allow_generation {
            return Err(Refusal::GenerationDisabled { details: json!({}) }.into());
        }
        if !self.is_configured() {
            return Err(Refusal::from(NotConfigured {
                code: Code::FluxNotConfigured,
                what: "FLUX (BFL_API_KEY)",
            })
            .into());
        }
        let order = Order {
            scope: IDEMPOTENCY_SCOPE,
            key: idempotency_key.map(str::to_owned),
            fingerprint: fingerprint(&request),
        };
        let purchase = FluxPurchase {
            flux: self.clone(),
            token: token.map(str::to_owned),
            params: json!({ "model": request.model.name, "prompt": request.payload.get("prompt") }),
            payload: Value::Object(request.payload.clone()),
            request,
        };
        Ok(match self.0.checkout.pay(order, purchase).await? {
            Paid::Done(answer) => answer,
            Paid::Replayed(status, body) => Answer {
                status,
                body,
                replayed: true,
            },
        })
    }

    async fn dry_run(&self, request: &ValidRequest) -> Answer {
        let price = request.price_micros;
        let confirmer = self.0.checkout.confirmer();
        let token = confirmer.issue(&request.canonical(), price);
        let minutes = confirmer.ttl().as_secs().div_ceil(60);
        let budget = self.budget().await.ok();
        let mut message = format!(
            "Dry run: nothing was sent and nothing was charged. {} costs ${:.3} for this image. To generate, send the same \
             body with \"dryRun\": false and this confirmToken within {minutes} min.",
            request.model.name,
            usd(price)
        );
        if !self.0.config.allow_generation {
            message.push_str(" Generation is disabled on this server (ALLOW_GENERATION=false).");
        }
        Answer {
            status: StatusCode::OK,
            body: json!({
                "dryRun": true,
                "valid": true,
                "model": request.model.name,
                "payload": request.payload,
                "estimatedCost": { "usd": usd(price), "credits": price as f64 / 10_000.0, "currency": "USD" },
                "megapixels": request.megapixels.map(|(output, inputs)| json!({ "output": output, "inputImages": inputs })),
                "confirmToken": token,
                "expiresInSecs": confirmer.ttl().as_secs(),
                "budget": budget,
                "message": message,
            }),
            replayed: false,
        }
    }

    /// Sends a recorded, reserved job to BFL and starts polling it.
    async fn submit(
        &self,
        job: Job,
        model: &str,
        payload: &Map<String, Value>,
    ) -> Result<Answer, FluxError> {
        let ledger = &self.0.ledger;
        let store = self.store();
        match self.0.client.submit(model, payload).await {
            Submitted::Accepted {
                id,
                polling_url,
                cost_credits,
            } => {
                let change = JobChange {
                    status: Some(JobStatus::Submitted),
                    provider_id: Some(id.clone()),
                    polling_url: Some(polling_url.clone()),
                    started: true,
                    ..Default::default()
                };
                ledger.change(&job.id, EventKind::State, change).await;
                ledger.settle_sent(&job.id, Sent::Taken, true).await;
                // BFL's own figure for the task, in credits (FLUX.2 answers with it), is what was spent.
                if let Some(credits) = cost_credits.filter(|c| c.is_finite() && *c >= 0.0) {
                    let micros = (credits * 10_000.0).round() as i64;
                    if let Err(error) = store.settle_charge(&job.id, micros, micros).await {
                        tracing::error!(job = %job.id, %error, "cannot record what a FLUX task cost");
                    }
                }
                tracing::info!(job = %job.id, model, provider_id = %id, "FLUX task submitted");
                ledger.background().spawn(self.clone().follow(
                    job.id.clone(),
                    Some(polling_url),
                    id,
                ));
                Ok(Answer {
                    status: StatusCode::ACCEPTED,
                    body: json!({ "id": job.id, "status": JobStatus::Submitted }),
                    replayed: false,
                })
            }
            Submitted::Refused {
                status,
                code,
                message,
                retry_after,
            } => {
                let failure =
                    Failure::new(code, &message).with_details(json!({ "bfl_status": status }));
                ledger
                    .settle_sent(&job.id, Sent::NotTaken(failure), true)
                    .await;
                tracing::warn!(job = %job.id, model, bfl_status = status, %code, "BFL refused a FLUX task");
                let status = match status {
                    429 => StatusCode::TOO_MANY_REQUESTS,
                    _ => StatusCode::BAD_GATEWAY,
                };
                Err(FluxError::Provider(ProviderError {
                    status,
                    code,
                    message,
                    details: json!({ "job_id": job.id }),
                    retry_after: retry_after
                        .or((status == StatusCode::TOO_MANY_REQUESTS).then_some(10)),
                }))
            }
            Submitted::NotSent(why) => {
                let message = format!("{why}; nothing was sent or charged");
                let failure = Failure::new(Code::BflUnreachable, &message);
                ledger
                    .settle_sent(&job.id, Sent::NotTaken(failure), true)
                    .await;
                Err(FluxError::Provider(ProviderError {
                    status: StatusCode::BAD_GATEWAY,
                    code: Code::BflUnreachable,
                    message,
                    details: json!({ "job_id": job.id }),
                    retry_after: None,
                }))
            }
            Submitted::Unknown(why) => {
                let message = format!(
                    "{why}. BFL may have started and charged the task; it is not sent again. Check the BFL dashboard."
                );
                let failure = Failure::new(Code::BflOutcomeUnknown, &message);
                ledger
                    .settle_sent(&job.id, Sent::Unknown(failure), true)
                    .await;
                tracing::warn!(job = %job.id, model, "a FLUX submit's outcome is unknown");
                Err(FluxError::Provider(ProviderError {
                    status: StatusCode::BAD_GATEWAY,
                    code: Code::BflOutcomeUnknown,
                    message,
                    details: json!({ "job_id": job.id, "status": JobStatus::NeedsReconcile }),
                    retry_after: None,
                }))
            }
        }
    }

    /// When polling a task gives up: `FLUX_POLL_TIMEOUT_SECS` after it started (a task followed again after a restart
    /// keeps its first deadline).
    async fn deadline(&self, job_id: &str) -> chrono::DateTime<chrono::Utc> {
        let started = match self.store().job(job_id).await {
            Ok(Some(job)) => job.started_at.unwrap_or(job.created_at),
            _ => crate::clock::now(),
        };
        chrono::DateTime::parse_from_rfc3339(&started)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(|_| chrono::Utc::now())
            + self.0.config.poll_timeout
    }

    /// Polls a submitted task to its end, with back-off, and saves its image at once (BFL's URL expires).
    async fn follow(self, job_id: String, polling_url: Option<String>, provider_id: String) {
        let client = &self.0.client;
        let ledger = &self.0.ledger;
        let url = client.polling_target(polling_url.as_deref(), &provider_id);
        let deadline = self.deadline(&job_id).await;
        let mut pause = self.0.config.poll_interval;
        let mut not_found = 0;
        let mut refused_polls = 0;
        let mut running = false;
        let background = self.0.ledger.background().clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // The task is BFL's; the next start polls it again.
                () = background.stopping() => return,
            }
            // The deadline is checked after a poll that did not settle the task, so a task that finished while
            // Orchestrator was stopped is still collected.
            let polled = client.poll(&url).await;
            let settled = matches!(
                polled,
                Polled::Ready { .. } | Polled::Moderated { .. } | Polled::Failed { .. }
            );
            if !settled && chrono::Utc::now() > deadline {
                let message = format!(
                    "BFL did not finish the task within {} s; it may still finish on BFL's side",
                    self.0.config.poll_timeout.as_secs()
                );
                ledger
                    .fail(&job_id, Failure::new(Code::BflTimeout, message))
                    .await;
                return;
            }
            match polled {
                Polled::Pending { progress } => {
                    let progress =
                        progress.map(|p| if p <= 1.0 { p * 100.0 } else { p }.clamp(0.0, 99.0));
                    if !running || progress.is_some() {
                        running = true;
                        let change = JobChange {
                            status: Some(JobStatus::Running),
                            progress,
                            ..Default::default()
                        };
                        ledger.change(&job_id, EventKind::Progress, change).await;
                    }
                    pause = (pause.mul_f64(1.5)).min(MAX_POLL_PAUSE);
                }
                Polled::Ready { sample } => {
                    self.collect(&job_id, &sample).await;
                    return;
                }
                Polled::Moderated { status, details } => {
                    ledger.fail(&job_id, moderated(&status, details)).await;
                    return;
                }
                Polled::NotFound => {
                    not_found += 1;
                    if not_found >= 5 {
                        let message = "BFL no longer knows the task (unknown or expired id)";
                        let failure = Failure::new(Code::BflTaskNotFound, message);
                        ledger.lose(&job_id, failure.into_json()).await;
                        return;
                    }
                    pause = Duration::from_secs(2).max(self.0.config.poll_interval);
                }
                Polled::Failed { details } => {
                    let failure =
                        Failure::new(Code::BflFailed, "BFL reported an error for the task")
                            .with_details(details);
                    ledger.fail(&job_id, failure).await;
                    return;
                }
                Polled::Unauthorized(status) => {
                    refused_polls += 1;
                    if refused_polls >= 5 {
                        let message = format!(
                            "BFL refuses to show the task to this key (HTTP {status}); was BFL_API_KEY changed?"
                        );
                        ledger
                            .fail(&job_id, Failure::new(Code::BflUnauthorized, message))
                            .await;
                        return;
                    }
                    pause = (pause.mul_f64(1.5)).min(MAX_POLL_PAUSE);
                }
                Polled::Retry(why) => {
                    tracing::debug!(job = %job_id, why, "polling BFL again later");
                    pause = (pause.mul_f64(1.5)).min(MAX_POLL_PAUSE);
                }
            }
        }
    }

    /// Downloads a ready task's image into the job's outputs; a few tries, as the URL is only good for minutes.
    async fn collect(&self, job_id: &str, sample: &str) {
        let ledger = &self.0.ledger;
        let format = match self.store().workflow(job_id).await {
            Ok(Some(payload)) => payload["output_format"]
                .as_str()
                .unwrap_or("jpeg")
                .to_owned(),
            _ => "jpeg".to_owned(),
        };
        let dir = self.0.outputs.join(job_id);
        let mut last_error = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match self.0.client.download(sample, &dir, "flux", &format).await {
                Ok((name, content_type, size)) => {
                    let output = OutputFile {
                        url: format!("/api/jobs/{job_id}/outputs/{name}"),
                        name,
                        content_type,
                        size,
                        node_id: None,
                    };
                    let change = JobChange {
                        progress: Some(100.0),
                        outputs: Some(vec![output]),
                        ..finished(JobStatus::Succeeded)
                    };
                    ledger.change(job_id, EventKind::State, change).await;
                    return;
                }
                Err(why) => last_error = why,
            }
        }
        let message = format!("the image was made but could not be saved: {last_error}");
        ledger
            .fail(job_id, Failure::new(Code::BflDownloadFailed, message))
            .await;
    }
}

/// What an idempotency key binds to: the validated request, so key order and camelCase spellings do not matter.
fn fingerprint(request: &ValidRequest) -> String {
    crate::money::keys::fingerprint(request.canonical().as_bytes())
}

/// A paid FLUX call: a new job, reserved and submitted to BFL.
struct FluxPurchase {
    flux: Flux,
    request: ValidRequest,
    token: Option<String>,
    /// The job's parameters (model and prompt) and its payload, as recorded.
    params: Value,
    payload: Value,
}

impl Purchase for FluxPurchase {
    type Answer = Answer;
    type Error = FluxError;

    async fn prepare(&mut self) -> Result<Prepared, FluxError> {
        let price_micros = self.request.price_micros;
        let token_id = self
            .flux
            .0
            .checkout
            .confirmer()
            .check(
                self.token.as_deref(),
                &self.request.canonical(),
                price_micros,
            )
            .map_err(Refusal::Confirmation)?;
        Ok(Prepared {
            price_micros,
            token_id,
        })
    }

    async fn token_used(&self) -> FluxError {
        Refusal::Confirmation(TokenProblem::Used).into()
    }

    fn record(&self) -> Record<'_> {
        Record::New {
            job: NewJob {
                backend: Backend::Flux,
                template: Some(self.request.model.name),
                params: &self.params,
                workflow: &self.payload,
                backend_url: None,
            },
            approval: None,
        }
    }

    async fn send(&self, job: Job) -> Result<Answer, FluxError> {
        let request = &self.request;
        self.flux
            .submit(job, request.model.name, &request.payload)
            .await
    }

    /// An accepted task's answer, and one whose outcome is unknown; a task BFL certainly did not start gave its
    /// key back, so a repeat may succeed later.
    fn keep(answer: Result<&Answer, &FluxError>) -> Option<(StatusCode, Value)> {
        match answer {
            Ok(answer) => Some((answer.status, answer.body.clone())),
            Err(error) => error.after_job(),
        }
    }
}

/// A task BFL's moderation stopped: the prompt or input image (`Request Moderated`), or the image it made.
fn moderated(status: &str, details: Value) -> Failure {
    let what = if status == "Request Moderated" {
        "the prompt or input image"
    } else {
        "the generated image"
    };
    let message = format!("BFL's moderation flagged {what} ({status}); no image was made");
    Failure::new(Code::BflModerated, message)
        .with_details(json!({ "bfl_status": status, "details": details }))
}
