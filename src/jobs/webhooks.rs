//! Word when a job ends: a JSON POST to `JOB_WEBHOOK_URL` for every job that ends (succeeded, failed, cancelled,
//! lost), from the store's outbox, where the job's final change put it in the same transaction. The sender is a
//! background task of its own: a receiver that is down or slow delays only its deliveries, never a request or a
//! job, and what it has not taken survives a restart. A failed delivery is tried again after `JOB_WEBHOOK_RETRY_MS`,
//! twice as long after each further failure (at most an hour), [`MAX_ATTEMPTS`] times in all.
//!
//! Each delivery is signed: `X-Orchestrator-Signature: sha256=<hex>`, the HMAC-SHA256 with `JOB_WEBHOOK_SECRET`
//! of `<X-Orchestrator-Timestamp>.<body>` (the timestamp in Unix seconds, covered so that an old delivery cannot
//! be replayed as new). `X-Orchestrator-Delivery` is the delivery's id, the same on every attempt: a receiver
//! that got one twice (its answer lost) can tell.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ring::hmac;
use serde_json::json;
use tokio::sync::Notify;

use crate::clock::timestamp as at;
use crate::config::WebhookConfig;
use crate::store::{Delivery, Store};

/// An attempt the receiver has not answered in this long failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a sender holds a delivery it took; one a crash cut off is due again after it.
const CLAIM: Duration = Duration::from_secs(60);
/// The longest wait between two attempts.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);
/// Tries before a delivery is given up (kept in the outbox with its last error).
pub const MAX_ATTEMPTS: i64 = 20;
/// The sender looks at the outbox at least this often: for deliveries another instance of a fleet owes, and claims
/// a crash left.
const LOOK_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Webhooks(Arc<Inner>);

struct Inner {
    store: Store,
    url: String,
    key: hmac::Key,
    first_retry: Duration,
    client: reqwest::Client,
    wake: Notify,
}

/// `sha256=<hex>`: the HMAC-SHA256 with `key` of `<timestamp>.<body>`.
pub fn signature(key: &hmac::Key, timestamp: i64, body: &[u8]) -> String {
    let mut context = hmac::Context::with_key(key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("sha256={}", hex::encode(context.sign().as_ref()))
}

/// How long after its `attempts`-th failure a delivery is tried again.
pub fn backoff(first: Duration, attempts: i64) -> Duration {
    crate::clock::backoff(first, attempts, LONGEST_WAIT)
}

impl Webhooks {
    pub fn new(store: Store, config: &WebhookConfig) -> Self {
        crate::outbound::install_crypto_provider();
        let client = reqwest::Client::builder()
            // A receiver's redirect is not followed: the body and its signature go where they were configured to.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("orchestrator/", env!("CARGO_PKG_VERSION")))
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .expect("a plain HTTP client builds");
        Self(Arc::new(Inner {
            store,
            url: config.url.clone(),
            key: hmac::Key::new(hmac::HMAC_SHA256, config.secret.expose().as_bytes()),
            first_retry: config.first_retry,
            client,
            wake: Notify::new(),
        }))
    }

    /// A job ended (its delivery is in the outbox already): send it now rather than at the next look.
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }

    /// The sender: delivers what is due, then waits for the next due delivery, a wake-up or the server's stop.
    pub async fn run(self, background: crate::background::Background) {
        loop {
            self.send_due().await;
            let wait = self.until_next().await;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.0.wake.notified() => {}
                () = background.stopping() => return,
            }
        }
    }

    async fn until_next(&self) -> Duration {
        let next = match self.0.store.next_webhook_at().await {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(%error, "cannot read the webhook outbox");
                None
            }
        };
        next.and_then(|next| DateTime::parse_from_rfc3339(&next).ok())
            .map_or(LOOK_EVERY, |next| {
                (next.with_timezone(&Utc) - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(LOOK_EVERY)
            })
    }

    async fn send_due(&self) {
        let store = &self.0.store;
        loop {
            let due = match store.due_webhooks(&at(Utc::now()), 16).await {
                Ok(due) if !due.is_empty() => due,
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the webhook outbox");
                    return;
                }
            };
            for delivery in due {
                let until = at(Utc::now() + CLAIM);
                match store.claim_webhook(&delivery, &until).await {
                    Ok(true) => self.deliver(&delivery).await,
                    // Another instance of the fleet took it.
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, "cannot take a webhook delivery");
                        return;
                    }
                }
            }
        }
    }

    async fn deliver(&self, delivery: &Delivery) {
        let store = &self.0.store;
        let job = match store.job(&delivery.job_id).await {
            Ok(Some(job)) => job,
            // Deleted since: there is nothing left to tell.
            Ok(None) => {
                let _ = store.webhook_delivered(&delivery.id).await;
                return;
            }
            Err(error) => {
                self.failed(delivery, &format!("the store failed: {error}"))
                    .await;
                return;
            }
        };
        let body =
            json!({ "type": "job.finished", "delivery": delivery.id, "job": job }).to_string();
        let timestamp = Utc::now().timestamp();
        let sent = self
            .0
            .client
            .post(&self.0.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-orchestrator-event", "job.finished")
            .header("x-orchestrator-delivery", &delivery.id)
            .header("x-orchestrator-timestamp", timestamp.to_string())
            .header(
                "x-orchestrator-signature",
                signature(&self.0.key, timestamp, body.as_bytes()),
            )
            .body(body)
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => {
                if let Err(error) = store.webhook_delivered(&delivery.id).await {
                    tracing::warn!(%error, delivery = %delivery.id, "cannot mark a webhook delivered");
                }
                tracing::info!(delivery = %delivery.id, job = %job.id, attempts = delivery.attempts + 1, "webhook delivered");
            }
            Ok(answer) => {
                let problem = format!("the receiver answered {}", answer.status());
                self.failed(delivery, &problem).await;
            }
            // Without the URL, which may carry a token of the receiver's.
            Err(error) => {
                self.failed(delivery, &error.without_url().to_string())
                    .await
            }
        }
    }

    async fn failed(&self, delivery: &Delivery, problem: &str) {
        let attempts = delivery.attempts + 1;
        let next = (attempts < MAX_ATTEMPTS)
            .then(|| at(Utc::now() + backoff(self.0.first_retry, attempts)));
        match &next {
            Some(next) => {
                tracing::warn!(delivery = %delivery.id, job = %delivery.job_id, attempts, %next, problem, "a webhook delivery failed; it is tried again")
            }
            None => {
                tracing::error!(delivery = %delivery.id, job = %delivery.job_id, attempts, problem, "a webhook delivery failed every time; given up")
            }
        }
        if let Err(error) = self
            .0
            .store
            .webhook_failed(&delivery.id, attempts, next.as_deref(), problem)
            .await
        {
            tracing::warn!(%error, delivery = %delivery.id, "cannot record a failed webhook delivery");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_the_timestamp_and_the_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        // As `printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret` prints it.
        assert_eq!(
            signature(&key, 1_700_000_000, br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }

    #[test]
    fn each_failure_doubles_the_wait_up_to_an_hour() {
        let first = Duration::from_millis(1000);
        assert_eq!(backoff(first, 1), Duration::from_secs(1));
        assert_eq!(backoff(first, 2), Duration::from_secs(2));
        assert_eq!(backoff(first, 5), Duration::from_secs(16));
        assert_eq!(backoff(first, 13), Duration::from_secs(3600));
        assert_eq!(backoff(first, 1000), Duration::from_secs(3600));
        assert_eq!(backoff(first, 0), Duration::from_secs(1));
    }
}
