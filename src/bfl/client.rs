//! The Black Forest Labs HTTP client: submit a task, poll it, fetch its image.
//!
//! The key goes out as `x-key` to BFL's API host only: never to the polling URL when it points elsewhere than a
//! BFL host, never to the delivery host the image comes from, and never through a redirect (redirects are not
//! followed, since a client keeps custom headers across hosts). The header value is marked sensitive so that no
//! debug output shows it.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use http::HeaderValue;
use serde_json::{Map, Value, json};

use crate::codes::Code;
use crate::config::{FluxConfig, Secret};
use crate::outbound::{api_client, install_crypto_provider};

/// What came of sending a task.
#[derive(Debug)]
pub enum Submitted {
    /// BFL took the task.
    /// `cost_credits`: what BFL says the task costs, in credits (FLUX.2 and newer answers carry it).
    Accepted {
        id: String,
        polling_url: String,
        cost_credits: Option<f64>,
    },
    /// BFL answered with an error: nothing was started.
    Refused {
        status: u16,
        code: Code,
        message: String,
        retry_after: Option<u64>,
    },
    /// The connection could not be made: nothing was sent.
    NotSent(String),
    /// The request went out and no usable answer came back: BFL may have started (and charged) the task.
    Unknown(String),
}

/// One look at a task.
#[derive(Debug, PartialEq)]
pub enum Polled {
    Pending {
        progress: Option<f64>,
    },
    Ready {
        sample: String,
    },
    Moderated {
        status: String,
        details: Value,
    },
    NotFound,
    Failed {
        details: Value,
    },
    /// BFL refused the key (401/403): after a few of these the job fails.
    Unauthorized(u16),
    /// Nothing learnt (a network error, 429, 5xx, BFL's transient 202/404): ask again later.
    Retry(String),
}

#[derive(Clone)]
pub struct BflClient {
    http: reqwest::Client,
    /// For the signed image URL: no key is ever sent there, so redirects (a CDN's) may be followed.
    delivery: reqwest::Client,
    base_url: String,
    key: Option<Secret>,
    submit_timeout: Duration,
}

fn delivery_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("orchestrator/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS back-end initialises")
}

const MAX_IMAGE_BYTES: u64 = 64 * 1024 * 1024;

impl BflClient {
    pub fn new(config: &FluxConfig) -> Self {
        Self {
            http: api_client(Duration::from_secs(10)),
            delivery: delivery_client(),
            base_url: config.base_url.clone(),
            key: config.api_key.clone(),
            submit_timeout: config.submit_timeout,
        }
    }

    pub fn is_configured(&self) -> bool {
        self.key.is_some()
    }

    fn key_header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(self.key.as_ref()?.expose()).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// `POST /v1/<model>` with the payload.
    pub async fn submit(&self, model: &str, payload: &Map<String, Value>) -> Submitted {
        let Some(key) = self.key_header() else {
            return Submitted::NotSent("no BFL key is configured".into());
        };
        let url = format!("{}/v1/{model}", self.base_url);
        let sent = self
            .http
            .post(&url)
            .header("x-key", key)
            .header(http::header::ACCEPT, "application/json")
            .json(payload)
            .timeout(self.submit_timeout)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if error.is_connect() => {
                return Submitted::NotSent(format!("cannot connect to BFL at {}", self.base_url));
            }
            Err(error) if error.is_timeout() => {
                return Submitted::Unknown(format!(
                    "BFL did not answer within {} s",
                    self.submit_timeout.as_secs()
                ));
            }
            Err(_) => {
                return Submitted::Unknown(
                    "the connection to BFL broke after the request was sent".into(),
                );
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body: Option<Value> =
            match tokio::time::timeout(self.submit_timeout, response.bytes()).await {
                Ok(Ok(bytes)) => serde_json::from_slice(&bytes).ok(),
                _ if status.is_success() => {
                    return Submitted::Unknown("BFL's answer was cut off".into());
                }
                _ => None,
            };
        if status.is_success() {
            let body = body.unwrap_or(Value::Null);
            return match (body["id"].as_str(), body["polling_url"].as_str()) {
                (Some(id), Some(polling)) if !id.is_empty() => Submitted::Accepted {
                    id: id.to_owned(),
                    polling_url: polling.to_owned(),
                    cost_credits: body["cost"].as_f64(),
                },
                (Some(id), None) if !id.is_empty() => Submitted::Accepted {
                    id: id.to_owned(),
                    polling_url: format!("{}/v1/get_result?id={id}", self.base_url),
                    cost_credits: body["cost"].as_f64(),
                },
                _ => Submitted::Unknown(format!("BFL answered {status} without a task id")),
            };
        }
        let detail = body
            .as_ref()
            .map(describe_error)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        // A 5xx may come from a gateway in front of BFL after the task was created: not a refusal.
        if status.is_server_error() {
            return Submitted::Unknown(format!(
                "BFL answered HTTP {} ({detail}) after the request was sent",
                status.as_u16()
            ));
        }
        let (code, message) = match status.as_u16() {
            402 => (
                Code::BflInsufficientCredits,
                format!("BFL refused the task: no credits left on the account ({detail})"),
            ),
            429 => (
                Code::BflRateLimited,
                format!("BFL refused the task: too many active tasks ({detail})"),
            ),
            401 | 403 => (
                Code::BflUnauthorized,
                format!("BFL refused the key ({detail})"),
            ),
            _ => (
                Code::BflRejected,
                format!(
                    "BFL rejected the request (HTTP {}): {detail}",
                    status.as_u16()
                ),
            ),
        };
        Submitted::Refused {
            status: status.as_u16(),
            code,
            message,
            retry_after,
        }
    }

    /// Where to poll: the URL BFL gave when it is a BFL host (or the configured API's), else the API's own
    /// `get_result`, so the key never goes to a host that is not BFL's.
    pub fn polling_target(&self, polling_url: Option<&str>, id: &str) -> String {
        let fallback = format!("{}/v1/get_result?id={id}", self.base_url);
        let Some(candidate) = polling_url.and_then(|u| reqwest::Url::parse(u).ok()) else {
            return fallback;
        };
        let base = reqwest::Url::parse(&self.base_url).ok();
        let same_api = base.as_ref().is_some_and(|b| {
            b.scheme() == candidate.scheme()
                && b.host_str() == candidate.host_str()
                && b.port_or_known_default() == candidate.port_or_known_default()
        });
        let bfl_host = candidate.scheme() == "https"
            && candidate
                .host_str()
                .is_some_and(|h| h.ends_with(".bfl.ai") || h.ends_with(".bfl.ml"));
        if same_api || bfl_host {
            candidate.to_string()
        } else {
            fallback
        }
    }

    pub async fn poll(&self, url: &str) -> Polled {
        let Some(key) = self.key_header() else {
            return Polled::Retry("no BFL key is configured".into());
        };
        let answer = self
            .http
            .get(url)
            .header("x-key", key)
            .header(http::header::ACCEPT, "application/json")
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let response = match answer {
            Ok(response) => response,
            Err(error) => return Polled::Retry(format!("polling BFL failed: {}", kind_of(&error))),
        };
        let status = response.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Polled::Unauthorized(status.as_u16());
        }
        if !status.is_success() || status.as_u16() == 202 {
            return Polled::Retry(format!(
                "BFL answered the poll with HTTP {}",
                status.as_u16()
            ));
        }
        let body: Value = match response.json().await {
            Ok(body) => body,
            Err(_) => return Polled::Retry("BFL's poll answer was not JSON".into()),
        };
        match body["status"].as_str().unwrap_or_default() {
            "Ready" => match body["result"]["sample"].as_str() {
                Some(sample) => Polled::Ready {
                    sample: sample.to_owned(),
                },
                None => Polled::Failed {
                    details: json!({ "bfl_status": "Ready", "why": "no result.sample in the answer" }),
                },
            },
            "Pending" => Polled::Pending {
                progress: body["progress"].as_f64(),
            },
            moderated @ ("Request Moderated" | "Content Moderated") => Polled::Moderated {
                status: moderated.to_owned(),
                details: body["details"].clone(),
            },
            "Task not found" => Polled::NotFound,
            "Error" => Polled::Failed {
                details: json!({ "bfl_status": "Error", "details": body["details"] }),
            },
            other => Polled::Retry(format!("unknown BFL status {other:?}")),
        }
    }

    /// Fetches the finished image (without the key: it is a signed delivery URL) into `dir/<stem>.<ext>`, written
    /// under a temporary name and renamed, so a cut-off download leaves no half file. Answers the file name, its
    /// type and size.
    pub async fn download(
        &self,
        url: &str,
        dir: &Path,
        stem: &str,
        fallback_format: &str,
    ) -> Result<(String, String, u64), String> {
        let response = self
            .delivery
            .get(url)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| format!("cannot fetch the image: {}", kind_of(&e)))?;
        if !response.status().is_success() {
            return Err(format!(
                "the image URL answered HTTP {} (it expires 10 minutes after the task is ready)",
                response.status().as_u16()
            ));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_IMAGE_BYTES)
        {
            return Err("the image is larger than 64 MiB".into());
        }
        let declared = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase());
        let content_type = match declared {
            Some(kind) if kind.starts_with("image/") => kind,
            None => match fallback_format {
                "png" => "image/png".into(),
                _ => "image/jpeg".into(),
            },
            Some(other) => return Err(format!("the image URL answered {other}, not an image")),
        };
        let extension = match content_type.as_str() {
            "image/png" => "png",
            "image/webp" => "webp",
            _ => "jpg",
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let name = format!("{stem}.{extension}");
        let cannot = |e: std::io::Error| format!("cannot write the image: {e}");
        let mut file = crate::fs_safe::AtomicFile::create(&dir.join(&name))
            .await
            .map_err(cannot)?;
        let mut size = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("the image download broke: {}", kind_of(&e)))?;
            size += chunk.len() as u64;
            if size > MAX_IMAGE_BYTES {
                return Err("the image is larger than 64 MiB".to_owned());
            }
            file.write_all(&chunk).await.map_err(cannot)?;
        }
        file.commit().await.map_err(cannot)?;
        Ok((name, content_type, size))
    }

    /// `GET /v1/credits`: whether the key works, and the balance.
    pub async fn credits(&self) -> Result<Option<f64>, String> {
        let Some(key) = self.key_header() else {
            return Ok(None);
        };
        let response = self
            .http
            .get(format!("{}/v1/credits", self.base_url))
            .header("x-key", key)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| kind_of(&e).to_owned())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let body: Value = response.json().await.map_err(|_| "not JSON".to_owned())?;
        Ok(body["credits"].as_f64())
    }
}

/// A short, key-free description of a transport error (reqwest's Display can include the URL).
fn kind_of(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "the body broke off"
    } else {
        "request failed"
    }
}

/// BFL's error detail: FastAPI's `{"detail": "…"}` or `{"detail": [{loc, msg}]}`, or anything else shortened.
fn describe_error(body: &Value) -> String {
    match &body["detail"] {
        Value::String(text) => text.chars().take(300).collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let field = item["loc"]
                    .as_array()
                    .and_then(|loc| loc.last())
                    .map(|l| l.to_string().trim_matches('"').to_owned())
                    .unwrap_or_default();
                format!("{field}: {}", item["msg"].as_str().unwrap_or("invalid"))
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => body.to_string().chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> BflClient {
        BflClient {
            http: api_client(Duration::from_secs(1)),
            delivery: delivery_client(),
            base_url: base.into(),
            key: Some(Secret::new("k")),
            submit_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_key_only_goes_to_bfl_hosts_when_polling() {
        let bfl = client("https://api.bfl.ai");
        assert_eq!(
            bfl.polling_target(Some("https://api.eu2.bfl.ai/v1/get_result?id=1"), "1"),
            "https://api.eu2.bfl.ai/v1/get_result?id=1"
        );
        for hostile in [
            "https://evil.example/v1/get_result?id=1",
            "https://api.bfl.ai.evil.example/x",
            "http://api.eu2.bfl.ai/v1/get_result?id=1",
        ] {
            assert_eq!(
                bfl.polling_target(Some(hostile), "1"),
                "https://api.bfl.ai/v1/get_result?id=1"
            );
        }
        let local = client("http://127.0.0.1:9000");
        assert_eq!(
            local.polling_target(Some("http://127.0.0.1:9000/v1/get_result?id=2"), "2"),
            "http://127.0.0.1:9000/v1/get_result?id=2"
        );
        assert_eq!(
            local.polling_target(Some("http://127.0.0.1:9001/v1/get_result?id=2"), "2"),
            "http://127.0.0.1:9000/v1/get_result?id=2"
        );
    }

    #[test]
    fn fastapi_errors_read_as_one_line() {
        let body =
            json!({ "detail": [{ "loc": ["body", "width"], "msg": "must be a multiple of 32" }] });
        assert_eq!(describe_error(&body), "width: must be a multiple of 32");
        assert_eq!(
            describe_error(&json!({ "detail": "Not authenticated" })),
            "Not authenticated"
        );
    }
}
