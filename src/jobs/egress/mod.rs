//! The Comfy.org egress: every call ComfyUI's paid API nodes make, at `/api/comfy-org/{*path}` (ComfyUI runs with
//! `--comfy-api-base <orchestrator>/api/comfy-org`), priced and counted against its job's cap before it is
//! forwarded to `COMFY_ORG_API_BASE` with the server's `COMFY_ORG_API_KEY`.
//!
//! ComfyUI never holds that key: an approved prompt's `extra_data` carries a key of its job's own ([`JobKey`]),
//! which only this egress accepts, and only while its job has not ended. A ComfyUI that calls Comfy.org directly
//! therefore spends nothing. Polls and downloads (GET) are free and pass as they are; a call that starts paid work
//! costs its route's price ([`routes`]), which Comfy.org's own figure for it replaces once it answers.

mod key;
pub mod routes;

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use serde_json::json;

pub use key::JobKey;
use routes::Cost;

use crate::codes::Code;
use crate::comfy::proxy::normalise_path;
use crate::config::{ComfyOrgConfig, Secret};
use crate::money::refusal::Refusal;
use crate::outbound::relay::{forwarded_headers, read_body, stream_back};
use crate::problems::{ProviderError, RequestError};
use crate::store::{CallOutcome, Metered, Store, StoreError};

/// An API node's request body: JSON with a prompt, at most a few images inline.
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
/// Comfy.org's synchronous routes (an OpenAI image, a Gemini answer) take a minute or more before they answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(300);
/// The longest pause inside a streamed answer (a result being downloaded).
const IDLE_WITHIN: Duration = Duration::from_secs(60);

/// The header ComfyUI puts the prompt's `api_key_comfy_org` into (`comfy_api_nodes/apis/client.py` `get_headers`),
/// and the one the server's key goes out in.
const API_KEY_HEADER: &str = "x-api-key";

/// Why a call was not forwarded, or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// No job's key, an unknown one, or an ended job's: 401, nothing forwarded.
    #[error(
        "the Comfy.org egress takes only the key of a running job (ComfyUI gets one in each approved prompt)"
    )]
    KeyInvalid,
    /// The call would pass its job's cap: the job is to be stopped.
    #[error("{refusal}")]
    OverCap { job_id: String, refusal: Refusal },
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The egress: the store its keys and counts live in, and how to reach Comfy.org.
#[derive(Clone)]
pub struct Egress {
    store: Store,
    http: reqwest::Client,
    base_url: String,
    api_key: Option<Secret>,
    ceiling_micros: i64,
}

impl Egress {
    pub fn new(store: Store, config: &ComfyOrgConfig) -> Self {
        Self {
            store,
            http: crate::outbound::api_client(Duration::from_secs(10)),
            base_url: config.base_url.clone(),
            api_key: config.api_key.clone(),
            ceiling_micros: config.paid_node_max_micros,
        }
    }

    /// Whether calls can be forwarded: the server holds a Comfy.org key.
    pub fn is_configured(&self) -> bool {
        self.api_key.is_some()
    }

    /// A new key for `job_id`'s calls (its hash kept; a resend gets a new one).
    pub async fn issue_key(&self, job_id: &str) -> Result<JobKey, StoreError> {
        let key = JobKey::new();
        self.store.set_egress_key(job_id, &key.hash()).await?;
        Ok(key)
    }

    /// Prices, counts and forwards one call; streams Comfy.org's answer back.
    pub async fn forward<B>(
        &self,
        request: http::Request<B>,
        path: &str,
    ) -> Result<http::Response<reqwest::Body>, EgressError>
    where
        B: http_body::Body<Data = bytes::Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let presented = JobKey::presented(request.headers()).ok_or(EgressError::KeyInvalid)?;
        let server_key = self.server_key()?;
        let clean = normalise_path(path).ok_or_else(|| RequestError::InvalidPath {
            path: path.chars().take(256).collect(),
        })?;
        // The key before the body: a caller without one reads nothing into memory.
        self.store
            .running_job_of_egress_key(&presented.hash())
            .await?
            .ok_or(EgressError::KeyInvalid)?;
        let (parts, body) = request.into_parts();
        let body = read_body(body, MAX_REQUEST_BYTES).await?;
        let call = match routes::price(&parts.method, &clean, &body, self.ceiling_micros) {
            Cost::NotOpen => {
                let path = clean.chars().take(256).collect();
                return Err(RequestError::InvalidPath { path }.into());
            }
            Cost::Paid(estimate) => Some(self.meter(&presented, &clean, estimate).await?),
            Cost::Free => None,
        };
        let mut url = format!("{}{clean}", self.base_url);
        if let Some(query) = parts.uri.query().filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(query);
        }
        let mut headers = forwarded_headers(parts.headers, &[API_KEY_HEADER]);
        headers.insert(API_KEY_HEADER, server_key);
        let request = self
            .http
            .request(parts.method, &url)
            .headers(headers)
            .body(body);
        // The exchange and its settling run on their own: a ComfyUI that hangs up meanwhile leaves no call open
        // and loses no figure Comfy.org reports.
        let egress = self.clone();
        let exchange = tokio::spawn(async move {
            let sent = tokio::time::timeout(ANSWER_WITHIN, request.send()).await;
            egress.settle(call.as_deref(), sent).await
        });
        let answered = exchange
            .await
            .map_err(|error| EgressError::Internal(error.into()))??;
        Ok(stream_back(answered, IDLE_WITHIN, "the Comfy.org API"))
    }

    fn server_key(&self) -> Result<HeaderValue, EgressError> {
        let key = self.api_key.as_ref().ok_or(Refusal::NotConfigured(
            super::gate::COMFY_ORG_NOT_CONFIGURED,
        ))?;
        let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
            EgressError::Internal("COMFY_ORG_API_KEY holds characters a header cannot carry".into())
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// The call counted against its job's cap; answers the call's id.
    async fn meter(&self, key: &JobKey, route: &str, estimate: i64) -> Result<String, EgressError> {
        match self
            .store
            .meter_egress_call(&key.hash(), route, estimate)
            .await?
        {
            Metered::Admitted { call_id } => Ok(call_id),
            Metered::UnknownKey | Metered::Ended => Err(EgressError::KeyInvalid),
            Metered::OverCap {
                job_id,
                spent_micros,
                cap_micros,
            } => Err(EgressError::OverCap {
                job_id,
                refusal: Refusal::SpendCapReached {
                    spent: crate::money::usd(spent_micros),
                    cap: crate::money::usd(cap_micros),
                },
            }),
        }
    }

    /// What Comfy.org's answer (or its absence) makes of a counted call: a figure it reports replaces the estimate
    /// (on any answer); a call it refused (a 4xx other than a timeout) or never received (no connection) costs
    /// nothing; anything unclear (a 5xx, a 408, no answer) keeps the estimate, so a retry of a call Comfy.org may
    /// still carry out counts again.
    async fn settle(
        &self,
        call: Option<&str>,
        sent: Result<Result<reqwest::Response, reqwest::Error>, tokio::time::error::Elapsed>,
    ) -> Result<reqwest::Response, EgressError> {
        let (outcome, answer) = match sent {
            Ok(Ok(response)) => {
                let status = response.status();
                let refused = status.is_client_error() && status != StatusCode::REQUEST_TIMEOUT;
                let outcome = match routes::reported_cost(response.headers()) {
                    Some(micros) => CallOutcome::Reported(micros),
                    None if refused => CallOutcome::Refunded,
                    None => CallOutcome::Estimated,
                };
                (outcome, Ok(response))
            }
            Ok(Err(error)) if error.is_connect() => {
                (CallOutcome::Refunded, Err(self.unreachable()))
            }
            Ok(Err(_)) => (CallOutcome::Estimated, Err(self.unreachable())),
            Err(_) => (CallOutcome::Estimated, Err(timeout())),
        };
        if let Some(call) = call {
            self.store.settle_egress_call(call, outcome).await?;
        }
        answer.map_err(EgressError::from)
    }

    fn unreachable(&self) -> ProviderError {
        ProviderError {
            status: StatusCode::BAD_GATEWAY,
            code: Code::ComfyOrgUnreachable,
            message: format!("cannot reach the Comfy.org API at {}", self.base_url),
            details: json!({}),
            retry_after: None,
        }
    }
}

fn timeout() -> ProviderError {
    ProviderError {
        status: StatusCode::GATEWAY_TIMEOUT,
        code: Code::ComfyOrgTimeout,
        message: format!(
            "the Comfy.org API did not answer within {} s",
            ANSWER_WITHIN.as_secs()
        ),
        details: json!({}),
        retry_after: None,
    }
}
