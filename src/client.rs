//! Orchestrator's own HTTP API as its clients call it: the CLI, the MCP server and the integration tests share this
//! one client: one JSON call, one server-sent-event decoder (the `sse-stream` crate, which follows the WHATWG
//! rules), one way to follow a job to its end.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::model::JobStatus;

/// How long a plain call may take: generation requests wait for ComfyUI's answer to the submit.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// An answer of the API: its status and JSON body (`Null` for a body that is not JSON). Status 0 means the server
/// did not answer at all; the body then says so in the API's error shape (`orchestrator_unreachable`).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error's message, or the whole body when it has none.
    pub fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| self.body.to_string())
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    /// The `event:` field; `None` is the default `message`.
    pub kind: Option<String>,
    pub data: String,
}

impl Event {
    /// The data as JSON, when it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.data).ok()
    }
}

/// An open event stream, decoded as it arrives.
pub struct Events {
    inner: std::pin::Pin<Box<dyn futures_util::Stream<Item = Option<Event>> + Send>>,
}

impl Events {
    /// The events of a response body.
    pub fn of(response: reqwest::Response) -> Self {
        let stream =
            sse_stream::SseStream::from_bytes_stream(response.bytes_stream()).map(|item| {
                // A broken body ends the stream, as a closed one does; a malformed line is skipped.
                match item {
                    Ok(sse) => Some(Event {
                        id: sse.id,
                        kind: sse.event,
                        data: sse.data.unwrap_or_default(),
                    }),
                    Err(sse_stream::Error::Body(_)) => None,
                    Err(_) => Some(Event {
                        id: None,
                        kind: None,
                        data: String::new(),
                    }),
                }
            });
        let stream = stream.take_while(|item| std::future::ready(item.is_some()));
        Self {
            inner: Box::pin(stream),
        }
    }

    /// The next event with data or an id; `None` once the stream ended (closed or broken).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            let event = self.inner.next().await??;
            if event.id.is_some() || !event.data.is_empty() {
                return Some(event);
            }
        }
    }

    /// Every event until the stream ends.
    pub async fn collect(mut self) -> Vec<Event> {
        let mut all = Vec::new();
        while let Some(event) = self.next().await {
            all.push(event);
        }
        all
    }
}

/// The API of one Orchestrator.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A file as [`ApiClient::bytes`] read it.
#[derive(Debug)]
pub enum Download {
    Whole(Vec<u8>),
    /// Over the limit, and not read (`size` when the server declared it).
    TooLarge {
        size: Option<u64>,
    },
}

impl ApiClient {
    /// The API at `base` (`http://127.0.0.1:3000`), with the bearer token when the server wants one.
    pub fn new(base: impl Into<String>, token: Option<String>) -> Self {
        crate::outbound::install_crypto_provider();
        Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("the HTTP client initialises"),
            base: base.into(),
            token,
        }
    }

    /// The server at `addr`, reached on loopback when it listens on every interface.
    pub fn for_server(addr: SocketAddr, token: Option<String>) -> Self {
        let host = match addr.ip() {
            ip if ip.is_unspecified() && addr.is_ipv4() => "127.0.0.1".to_owned(),
            ip if ip.is_unspecified() => "[::1]".to_owned(),
            ip if addr.is_ipv6() => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        Self::new(format!("http://{host}:{}", addr.port()), token)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// A JSON call: `body` sent as JSON when given, `headers` added.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.request(method, path).timeout(CALL_TIMEOUT);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json::<Value>().await.unwrap_or(Value::Null);
                Reply { status, body }
            }
            Err(_) => self.unreachable(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(reqwest::Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(reqwest::Method::POST, path, Some(body), &[])
            .await
    }

    /// Opens an event stream, resumed after `last_event_id` when given, for at most `within` (no limit when
    /// `None`); an answer other than 200 comes back as the API's error.
    pub async fn events(
        &self,
        path: &str,
        last_event_id: Option<&str>,
        within: Option<Duration>,
    ) -> Result<Events, Reply> {
        let mut request = self
            .request(reqwest::Method::GET, path)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        if let Some(within) = within {
            request = request.timeout(within);
        }
        match request.send().await {
            Ok(response) if response.status() == reqwest::StatusCode::OK => {
                Ok(Events::of(response))
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json::<Value>().await.unwrap_or(Value::Null);
                Err(Reply { status, body })
            }
            Err(_) => Err(self.unreachable()),
        }
    }

    /// A file of at most `at_most` bytes: its content type and bytes. A larger one is not read past that (its
    /// declared length is believed when there is one): [`Download::TooLarge`].
    pub async fn bytes(&self, path: &str, at_most: usize) -> Result<(String, Download), String> {
        let response = self
            .request(reqwest::Method::GET, path)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|_| "Orchestrator is not answering".to_owned())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let kind = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        if let Some(size) = response.content_length()
            && size > at_most as u64
        {
            return Ok((kind, Download::TooLarge { size: Some(size) }));
        }
        let mut bytes = Vec::new();
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| "the download broke off".to_owned())?
        {
            if bytes.len() + chunk.len() > at_most {
                return Ok((kind, Download::TooLarge { size: None }));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((kind, Download::Whole(bytes)))
    }

    /// Follows a job's events until it ends or `within` passes, calling `seen` with every state; a dropped stream
    /// is resumed where it broke (`Last-Event-ID`), so no state is missed or seen twice. Answers the last state
    /// and whether the job has ended. With no event at all, the job as `GET /api/jobs/{id}` has it.
    pub async fn follow_job(
        &self,
        id: &str,
        within: Duration,
        mut seen: impl FnMut(&Value),
    ) -> Result<(Value, bool), Reply> {
        let deadline = tokio::time::Instant::now() + within;
        let path = format!("/api/jobs/{}/events", encode(id));
        let mut job = Value::Null;
        let mut last_event: Option<String> = None;
        // Streams opened (or tried): a job's stream ends by itself once it is final, so ten are plenty.
        let mut attempts = 0;
        while !is_final(&job) && tokio::time::Instant::now() < deadline && attempts < 10 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut events = match self.events(&path, last_event.as_deref(), Some(left)).await {
                Ok(events) => events,
                // The job does not exist, or the token is refused: no retry helps.
                Err(reply) if reply.status != 0 => return Err(reply),
                Err(_) => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(500).min(left)).await;
                    continue;
                }
            };
            while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
                if event.id.is_some() {
                    last_event = event.id.clone();
                }
                if let Some(state) = event.json() {
                    seen(&state);
                    job = state;
                    if is_final(&job) {
                        break;
                    }
                }
            }
            attempts += 1;
        }
        if job.is_null() {
            let reply = self.get(&format!("/api/jobs/{}", encode(id))).await;
            if !reply.is_success() {
                return Err(reply);
            }
            job = reply.body;
        }
        let finished = is_final(&job);
        Ok((job, finished))
    }

    fn unreachable(&self) -> Reply {
        Reply {
            status: 0,
            body: crate::problems::error_body(
                crate::codes::Code::OrchestratorUnreachable,
                &format!(
                    "Orchestrator is not answering at {}; is `orchestrator serve` running?",
                    self.base
                ),
                json!({}),
            ),
        }
    }
}

/// Whether a job state is one that never changes again.
pub fn is_final(job: &Value) -> bool {
    JobStatus::is_final_json(job)
}

/// A path segment, percent-encoded.
pub fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server answering `body` as an event stream, once.
    async fn serve(body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            // In small pieces, so events are split across reads.
            for piece in body.as_bytes().chunks(3) {
                socket.write_all(piece).await.unwrap();
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn events_are_decoded_as_the_whatwg_rules_say() {
        let base = serve(
            ": a comment\n\nid: 7\nevent: state\ndata: {\"a\":\ndata: 1}\n\nid:8\r\ndata:plain\r\n\r\ndata: no id\n\n",
        )
        .await;
        let client = ApiClient::new(base, None);
        let events = client
            .events("/", None, None)
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[0].kind.as_deref(), Some("state"));
        assert_eq!(events[0].json(), Some(json!({ "a": 1 })));
        assert_eq!(events[1].id.as_deref(), Some("8"));
        assert_eq!(events[1].data, "plain");
        assert_eq!(events[2].id, None);
        assert_eq!(events[2].data, "no id");
    }

    #[tokio::test]
    async fn an_unanswered_call_says_so_in_the_apis_error_shape() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let reply = ApiClient::for_server(addr, None).get("/api/health").await;
        assert_eq!(reply.status, 0);
        assert_eq!(reply.body["error"]["code"], "orchestrator_unreachable");
        assert!(reply.message().contains(&addr.to_string()));
    }
}
