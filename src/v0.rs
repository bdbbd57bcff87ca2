//! The v0 Platform API behind `/api/v0/{*path}`, with the key kept on the server.
//!
//! `/api/v0/chats` goes to `$V0_BASE_URL/v1/chats`; a path that names its version (`/api/v0/v2/…`) keeps it. The
//! client's `Authorization`, cookies and hop-by-hop headers are dropped before the server's key is added, and
//! answers stream back chunk by chunk, so v0's server-sent events (`responseMode: "experimental_stream"`) reach
//! the browser as they are produced.

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::codes::Code;
use crate::comfy::proxy::normalise_path;
use crate::config::V0Config;
use crate::problems::{NotConfigured, ProviderError, RequestError};

/// v0 without `V0_API_KEY`.
pub const NOT_CONFIGURED: NotConfigured = NotConfigured {
    code: Code::V0NotConfigured,
    what: "the v0 Platform API (V0_API_KEY)",
};

/// Why a v0 call did not get v0's answer; `http` turns it into an answer.
#[derive(Debug, thiserror::Error)]
pub enum V0Error {
    #[error(transparent)]
    NotConfigured(#[from] NotConfigured),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}
use crate::outbound::api_client;
use crate::outbound::relay::{forwarded_headers, read_body, stream_back};
use crate::store::Link;

/// Characters a chat id keeps in a path segment (RFC 3986 unreserved); everything else is percent-encoded.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// v0's request bodies are JSON with attachments given as URLs; anything larger is a mistake.
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct V0Gateway {
    http: reqwest::Client,
    config: V0Config,
}

impl V0Gateway {
    pub fn new(config: V0Config) -> Self {
        Self {
            http: api_client(Duration::from_secs(10)),
            config,
        }
    }

    pub fn is_configured(&self) -> bool {
        self.config.api_key.is_some()
    }

    fn bearer(&self) -> Result<HeaderValue, V0Error> {
        let key = self.config.api_key.as_ref().ok_or(NOT_CONFIGURED)?;
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                V0Error::Internal("V0_API_KEY holds characters a header cannot carry".into())
            })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// The upstream URL for a path below `/api/v0`.
    fn upstream_url(&self, path: &str, query: Option<&str>) -> Result<String, V0Error> {
        let clean = normalise_path(path).ok_or_else(|| RequestError::InvalidPath {
            path: path.chars().take(256).collect(),
        })?;
        let versioned = clean.split('/').nth(1).is_some_and(|first| {
            first.len() >= 2
                && first.starts_with('v')
                && first[1..].bytes().all(|b| b.is_ascii_digit())
        });
        let mut url = self.config.base_url.clone();
        if !versioned {
            url.push_str("/v1");
        }
        url.push_str(&clean);
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(query);
        }
        Ok(url)
    }

    /// Forwards one request and streams the answer back.
    pub async fn forward<B>(
        &self,
        request: http::Request<B>,
        path: &str,
    ) -> Result<http::Response<reqwest::Body>, V0Error>
    where
        B: http_body::Body<Data = bytes::Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let bearer = self.bearer()?;
        let url = self.upstream_url(path, request.uri().query())?;
        let (parts, body) = request.into_parts();
        let body = read_body(body, MAX_REQUEST_BYTES).await?;
        let mut headers = forwarded_headers(parts.headers, &[]);
        headers.insert(header::AUTHORIZATION, bearer);
        // The limit is on the time to the answer's headers; a long stream is then held to the idle limit per chunk
        // (`stream_back`).
        let sent = tokio::time::timeout(
            self.config.timeout,
            self.http
                .request(parts.method, &url)
                .headers(headers)
                .body(body)
                .send(),
        )
        .await;
        let upstream = match sent {
            Ok(Ok(response)) => response,
            Err(_) => {
                return Err(ProviderError {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    code: Code::V0Timeout,
                    message: format!(
                        "v0 did not answer within {} s",
                        self.config.timeout.as_secs()
                    ),
                    details: json!({}),
                    retry_after: None,
                }
                .into());
            }
            Ok(Err(_)) => {
                return Err(ProviderError {
                    status: StatusCode::BAD_GATEWAY,
                    code: Code::V0Unreachable,
                    message: format!(
                        "cannot reach the v0 Platform API at {}",
                        self.config.base_url
                    ),
                    details: json!({}),
                    retry_after: None,
                }
                .into());
            }
        };
        Ok(stream_back(upstream, self.config.timeout, "v0"))
    }

    /// `GET /api/v0/validate`: the key checked with v0's cheapest call, `GET /v1/user`.
    pub async fn validate(&self) -> Value {
        let Ok(bearer) = self.bearer() else {
            return json!({ "status": "not_configured", "message": "V0_API_KEY is not set on the server" });
        };
        let url = format!("{}/v1/user", self.config.base_url);
        let answer = self
            .http
            .get(url)
            .header(header::AUTHORIZATION, bearer)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => {
                let user: Value = response.json().await.unwrap_or(Value::Null);
                json!({ "status": "valid", "user": { "name": user["name"], "id": user["id"] } })
            }
            Ok(response) if matches!(response.status().as_u16(), 401 | 403) => json!({
                "status": "invalid",
                "message": format!("v0 refused the key (HTTP {})", response.status().as_u16()),
            }),
            Ok(response) => json!({
                "status": "unknown",
                "message": format!("v0 answered HTTP {}", response.status().as_u16()),
            }),
            Err(_) => {
                json!({ "status": "unreachable", "message": format!("cannot reach {}", self.config.base_url) })
            }
        }
    }
}

/// What v0 answered to one builder message.
#[derive(Debug, Clone)]
pub struct ChatReply {
    pub chat_id: String,
    pub text: String,
    pub links: Vec<Link>,
}

impl V0Gateway {
    /// Sends a builder message: a new chat, or the next message of `chat_id`. Waits for the whole answer
    /// (`responseMode: sync`), up to `V0_TIMEOUT_SECS`.
    pub async fn chat(&self, chat_id: Option<&str>, message: &str) -> Result<ChatReply, V0Error> {
        let bearer = self.bearer()?;
        let (url, body) = match chat_id {
            None => (
                format!("{}/v1/chats", self.config.base_url),
                json!({ "message": message, "chatPrivacy": "private", "responseMode": "sync" }),
            ),
            Some(id) => {
                let id: String = percent_encoding::utf8_percent_encode(id, PATH_SEGMENT).collect();
                (
                    format!("{}/v1/chats/{id}/messages", self.config.base_url),
                    json!({ "message": message, "responseMode": "sync" }),
                )
            }
        };
        let sent = self
            .http
            .post(url)
            .header(header::AUTHORIZATION, bearer)
            .json(&body)
            .timeout(self.config.timeout)
            .send()
            .await;
        let response = sent.map_err(|error| ProviderError {
            status: if error.is_timeout() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            },
            code: if error.is_timeout() {
                Code::V0Timeout
            } else {
                Code::V0Unreachable
            },
            message: format!(
                "v0 did not answer ({})",
                if error.is_timeout() {
                    "timed out"
                } else {
                    "cannot connect"
                }
            ),
            details: json!({}),
            retry_after: None,
        })?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(ProviderError {
                status: StatusCode::BAD_GATEWAY,
                code: Code::V0Error,
                message: format!(
                    "v0 answered HTTP {}: {}",
                    status.as_u16(),
                    answer["error"]["message"].as_str().unwrap_or("no message")
                ),
                details: json!({ "v0_status": status.as_u16(), "type": answer["error"]["type"] }),
                retry_after: None,
            }
            .into());
        }
        let text = answer["messages"]
            .as_array()
            .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "assistant"))
            .and_then(|m| m["content"].as_str())
            .or_else(|| answer["text"].as_str())
            .unwrap_or_default()
            .to_owned();
        let mut links = Vec::new();
        for (label, pointer) in [
            ("open_result", "/latestVersion/demoUrl"),
            ("open_chat", "/webUrl"),
        ] {
            if let Some(url) = answer.pointer(pointer).and_then(Value::as_str)
                && (url.starts_with("https://") || url.starts_with("http://"))
            {
                links.push(Link {
                    label: label.to_owned(),
                    url: url.to_owned(),
                });
            }
        }
        Ok(ChatReply {
            chat_id: answer["id"]
                .as_str()
                .or(chat_id)
                .unwrap_or_default()
                .to_owned(),
            text,
            links,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn gateway(base: &str) -> V0Gateway {
        V0Gateway::new(V0Config {
            api_key: Some(Secret::new("k")),
            base_url: base.into(),
            timeout: Duration::from_secs(5),
        })
    }

    #[test]
    fn paths_get_v1_unless_they_name_a_version() {
        let v0 = gateway("https://api.v0.dev");
        assert_eq!(
            v0.upstream_url("/chats", Some("limit=2")).unwrap(),
            "https://api.v0.dev/v1/chats?limit=2"
        );
        assert_eq!(
            v0.upstream_url("/v2/chats", None).unwrap(),
            "https://api.v0.dev/v2/chats"
        );
        assert_eq!(
            v0.upstream_url("/video/x", None).unwrap(),
            "https://api.v0.dev/v1/video/x"
        );
        for bad in ["/../admin", "/chats/%2e%2e/x", "/a\\b"] {
            assert!(v0.upstream_url(bad, None).is_err(), "{bad}");
        }
    }
}
