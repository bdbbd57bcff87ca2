//! The HTTP gateway to ComfyUI, in named phases: normalise the path, build the upstream request, forward it under
//! time limits, filter the response. Bodies stream in both directions and are never held whole.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::percent_decode_str;

use super::body::{BoxError, IdleTimeout, SizeLimit};
use crate::comfy::error::ComfyError;
use crate::config::{ComfyBackend, ComfyConfig};
use crate::problems::RequestError;

/// The body of every request to ComfyUI and every answer from it: any body, boxed once. (The HTTP layer turns its
/// own into this and back; this module knows no web framework.)
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// `body` as a [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

fn empty() -> Body {
    boxed(http_body_util::Empty::new())
}

fn full(bytes: impl Into<bytes::Bytes>) -> Body {
    boxed(http_body_util::Full::new(bytes.into()))
}

pub type HttpClient = Client<HttpConnector, Body>;

/// Builds the pooled HTTP/1.1 client every ComfyUI call shares.
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// Forwards requests to one ComfyUI backend.
#[derive(Clone)]
pub struct ComfyGateway {
    client: HttpClient,
    backend: ComfyBackend,
    /// The `Origin` ComfyUI's host/origin check accepts: its own.
    upstream_origin: HeaderValue,
    /// The `Host` header for every upstream request, made once instead of by the client on every request.
    upstream_host: HeaderValue,
    settings: ComfyConfig,
}

impl ComfyGateway {
    /// How long the jobs' shared WebSocket to this ComfyUI may stay silent before its queue is asked.
    pub fn silence_check(&self) -> Duration {
        self.settings.silence_check
    }

    pub fn new(client: HttpClient, backend: ComfyBackend, settings: ComfyConfig) -> Self {
        let upstream_origin =
            HeaderValue::from_str(&backend.origin()).expect("an origin built from a valid URI");
        let upstream_host = HeaderValue::from_str(backend.authority.as_str())
            .expect("an authority is a valid header value");
        Self {
            client,
            backend,
            upstream_origin,
            upstream_host,
            settings,
        }
    }

    pub fn backend(&self) -> &ComfyBackend {
        &self.backend
    }

    /// Sends `request` to ComfyUI at `upstream_path` (still percent-encoded, below `/api/comfy`).
    pub async fn forward<B>(
        &self,
        request: Request<B>,
        upstream_path: &str,
    ) -> Result<Response<Body>, ComfyError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        let uri = self.upstream_uri(upstream_path, parts.uri.query())?;
        let route = parts.uri.path_and_query().cloned();

        let limit = self.settings.max_body_bytes;
        if declared_length(&parts.headers).is_some_and(|len| len > limit) {
            return Err(ComfyError::Request(RequestError::PayloadTooLarge { limit }));
        }

        let mut headers = parts.headers;
        // ComfyUI's own check compares `Origin` with `Host`; both are rewritten to ComfyUI's own only when the
        // browser's `Origin` names the address it sent the request to. A foreign one (which the guard refuses
        // before it gets here) is passed on as it is, so ComfyUI refuses it too.
        let own_origin = origin_is_the_hosts(&headers);
        remove_hop_by_hop(&mut headers);
        headers.insert(header::HOST, self.upstream_host.clone());
        headers.remove(header::EXPECT);
        // Orchestrator's own credentials are not ComfyUI's business.
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::COOKIE);
        if own_origin {
            headers.insert(header::ORIGIN, self.upstream_origin.clone());
        }
        // An empty body (most GETs) needs no limit and no idle watch: skip the wrappers and their timer.
        let (body, too_large, client_failed) = if http_body::Body::is_end_stream(&body) {
            (empty(), None, None)
        } else {
            let (limited, too_large) = SizeLimit::new(body, limit);
            let client_failed = limited.failed_flag();
            (
                boxed(
                    IdleTimeout::new(limited, self.settings.idle_timeout, "request body")
                        .on_route(route.clone()),
                ),
                Some(too_large),
                Some(client_failed),
            )
        };
        let mut upstream = Request::new(body);
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.headers_mut() = headers;

        let deadline = self.header_deadline(&parts.method);
        let answer = tokio::time::timeout(deadline, self.client.request(upstream)).await;
        let response = match answer {
            Err(_elapsed) => {
                return Err(ComfyError::Timeout {
                    upstream: self.backend.origin(),
                    seconds: deadline.as_secs_f64(),
                });
            }
            Ok(Err(_))
                if too_large.is_some_and(|flag| flag.load(std::sync::atomic::Ordering::SeqCst)) =>
            {
                return Err(ComfyError::Request(RequestError::PayloadTooLarge { limit }));
            }
            // The client's own body broke (bad chunked framing, or it hung up mid-upload): not ComfyUI's doing.
            Ok(Err(error))
                if client_failed
                    .is_some_and(|flag| flag.load(std::sync::atomic::Ordering::SeqCst)) =>
            {
                tracing::debug!(%error, "the client's request body failed");
                return Err(ComfyError::Request(match super::body::timed_out(&error) {
                    Some(after) => RequestError::BodyTimeout { after },
                    None => RequestError::BodyUnreadable,
                }));
            }
            Ok(Err(error)) => return Err(self.classify(error)),
            Ok(Ok(response)) => response,
        };

        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        remove_cors(&mut parts.headers);
        let body = IdleTimeout::new(body, self.settings.idle_timeout, "ComfyUI response body")
            .on_route(route);
        Ok(Response::from_parts(parts, boxed(body)))
    }

    /// Whether ComfyUI answers `/system_stats` within `within` (the health probe).
    pub async fn probe(&self, within: Duration) -> bool {
        let Ok(uri) = self.upstream_uri("/system_stats", None) else {
            return false;
        };
        let Ok(request) = Request::get(uri).body(empty()) else {
            return false;
        };
        let answer = tokio::time::timeout(within, async {
            let response = self.client.request(request).await.ok()?;
            let ok = response.status().is_success();
            // Read the small body so the connection goes back to the pool.
            response.into_body().collect().await.ok()?;
            Some(ok)
        });
        matches!(answer.await, Ok(Some(true)))
    }

    /// Uploads an image into ComfyUI's input folder (`/upload/image`, multipart); answers the name ComfyUI gave it,
    /// which is what a LoadImage node takes.
    pub async fn upload_image(
        &self,
        bytes: bytes::Bytes,
        file_name: &str,
        content_type: &mime::Mime,
    ) -> Result<String, ComfyError> {
        let boundary = format!("orchestrator-{}", uuid::Uuid::new_v4().simple());
        // The name is the one value here a client chose; the content type is a parsed MIME type's essence.
        let file_name = file_name.replace(|c: char| c == '"' || c.is_control(), "_");
        let content_type = content_type.essence_str();
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{file_name}\"\r\n\
             Content-Type: {content_type}\r\n\r\n"
        );
        let tail = format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\ninput\r\n--{boundary}--\r\n"
        );
        let mut body = Vec::with_capacity(head.len() + bytes.len() + tail.len());
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(&bytes);
        body.extend_from_slice(tail.as_bytes());
        let uri = self.upstream_uri("/upload/image", None)?;
        let request = Request::post(uri)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(full(body))
            .map_err(ComfyError::internal)?;
        let deadline = self.settings.write_timeout;
        let response = self.send_within(request, deadline).await?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), 1024 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        match answer["name"].as_str() {
            Some(name) if status.is_success() => Ok(
                match answer["subfolder"].as_str().filter(|s| !s.is_empty()) {
                    Some(subfolder) => format!("{subfolder}/{name}"),
                    None => name.to_owned(),
                },
            ),
            _ => Err(ComfyError::BadResponse(format!(
                "POST /upload/image answered {status}"
            ))),
        }
    }

    /// POSTs a JSON body; answers the status and the body (JSON, or the text as a JSON string).
    pub(in crate::comfy) async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(http::StatusCode, serde_json::Value), ComfyError> {
        let uri = self.upstream_uri(path, None)?;
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(body.to_string()))
            .map_err(ComfyError::internal)?;
        let deadline = self.settings.write_timeout;
        let timeout = || ComfyError::Timeout {
            upstream: self.backend.origin(),
            seconds: deadline.as_secs_f64(),
        };
        let response = self.send_within(request, deadline).await?;
        let status = response.status();
        let bytes = tokio::time::timeout(
            deadline,
            Limited::new(response.into_body(), 16 * 1024 * 1024).collect(),
        )
        .await
        .map_err(|_| timeout())?
        .map_err(|e| ComfyError::BadResponse(format!("POST {path}: {e}")))?
        .to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        Ok((status, value))
    }

    /// Streams `GET path_and_query` into `dest` (through `dest.part`, renamed when complete, so a file that exists
    /// is whole). Answers the size and the content type.
    pub(in crate::comfy) async fn download(
        &self,
        path: &str,
        query: &str,
        dest: &std::path::Path,
    ) -> Result<(u64, String), ComfyError> {
        let uri = self.upstream_uri(path, Some(query))?;
        let request = Request::get(uri)
            .body(empty())
            .map_err(ComfyError::internal)?;
        let response = self
            .send_within(request, self.settings.read_timeout)
            .await?;
        if !response.status().is_success() {
            return Err(ComfyError::BadResponse(format!(
                "GET {path}?{query} answered {}",
                response.status()
            )));
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        // A file of its own beside the target, put in place whole (never a half-written output under the name).
        let mut file = crate::fs_safe::AtomicFile::create(dest)
            .await
            .map_err(ComfyError::internal)?;
        let mut body = IdleTimeout::new(
            response.into_body(),
            self.settings.idle_timeout,
            "ComfyUI output",
        );
        let mut size = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ComfyError::BadResponse(format!("GET {path}: {e}")))?;
            if let Ok(data) = frame.into_data() {
                size += data.len() as u64;
                file.write_all(&data).await.map_err(ComfyError::internal)?;
            }
        }
        file.commit().await.map_err(ComfyError::internal)?;
        Ok((size, content_type))
    }

    /// Sends a GET to ComfyUI and reads a JSON answer of at most `max_bytes`.
    pub(in crate::comfy) async fn get_json(
        &self,
        path: &str,
        max_bytes: usize,
    ) -> Result<serde_json::Value, ComfyError> {
        let uri = self.upstream_uri(path, None)?;
        let request = Request::get(uri)
            .body(empty())
            .map_err(ComfyError::internal)?;
        let response = self
            .send_within(request, self.settings.read_timeout)
            .await?;
        if !response.status().is_success() {
            return Err(ComfyError::BadResponse(format!(
                "GET {path} answered {}",
                response.status()
            )));
        }
        let body = tokio::time::timeout(
            self.settings.read_timeout,
            Limited::new(response.into_body(), max_bytes).collect(),
        )
        .await
        .map_err(|_| ComfyError::Timeout {
            upstream: self.backend.origin(),
            seconds: self.settings.read_timeout.as_secs_f64(),
        })?
        .map_err(|e| ComfyError::BadResponse(format!("GET {path}: {e}")))?
        .to_bytes();
        serde_json::from_slice(&body)
            .map_err(|e| ComfyError::BadResponse(format!("GET {path}: {e}")))
    }

    /// The upstream URI: the configured scheme and authority, never anything taken from the client, plus the
    /// normalised path and the client's query.
    pub fn upstream_uri(&self, raw_path: &str, query: Option<&str>) -> Result<Uri, ComfyError> {
        let path = normalise_path(raw_path).ok_or_else(|| {
            ComfyError::Request(RequestError::InvalidPath {
                path: raw_path.chars().take(256).collect(),
            })
        })?;
        let path_and_query = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        Uri::builder()
            .scheme(self.backend.scheme.clone())
            .authority(self.backend.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| {
                ComfyError::Request(RequestError::InvalidPath {
                    path: raw_path.chars().take(256).collect(),
                })
            })
    }

    /// Sends one of Orchestrator's own requests: no answer within `deadline` is `comfy_timeout`, no connection
    /// `comfy_unreachable`.
    async fn send_within(
        &self,
        request: Request<Body>,
        deadline: Duration,
    ) -> Result<Response<hyper::body::Incoming>, ComfyError> {
        tokio::time::timeout(deadline, self.client.request(request))
            .await
            .map_err(|_| ComfyError::Timeout {
                upstream: self.backend.origin(),
                seconds: deadline.as_secs_f64(),
            })?
            .map_err(|_| ComfyError::Unreachable {
                upstream: self.backend.origin(),
            })
    }

    fn header_deadline(&self, method: &Method) -> Duration {
        match *method {
            Method::GET | Method::HEAD | Method::OPTIONS => self.settings.read_timeout,
            _ => self.settings.write_timeout,
        }
    }

    fn classify(&self, error: hyper_util::client::legacy::Error) -> ComfyError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(cause) = source {
            if cause.is::<super::body::IdleTimeoutError>() {
                return ComfyError::Timeout {
                    upstream: self.backend.origin(),
                    seconds: self.settings.idle_timeout.as_secs_f64(),
                };
            }
            source = cause.source();
        }
        tracing::warn!(upstream = %self.backend.origin(), error = %error, connect = error.is_connect(), "ComfyUI request failed");
        ComfyError::Unreachable {
            upstream: self.backend.origin(),
        }
    }
}

/// Decodings of one segment checked before it counts as a climb in disguise (a real name needs two at most).
const MAX_DECODINGS: usize = 4;

/// Turns the client's path below `/api/comfy` into a clean absolute path, or `None` when it tries to leave it.
///
/// Empty segments (`//host`) collapse; `.` and `..` are refused in every spelling (raw, percent-encoded once, twice
/// or more, hidden inside an encoded `/`); backslashes and control characters are refused, in every decoding too.
/// Percent-encoding that is legitimate (ComfyUI's `/userdata/workflows%2Fa.json`) is kept as the client sent it.
/// A raw `?` or `#` is refused: a path never holds one (encoded, `%3F` and `%23` are kept), and in the URI built
/// from it one would end the path early, so `..?` would reach ComfyUI as the path `/..`.
pub fn normalise_path(raw: &str) -> Option<String> {
    if raw.contains(['?', '#']) {
        return None;
    }
    let mut path = String::with_capacity(raw.len() + 1);
    for segment in raw.split('/') {
        if segment.is_empty() {
            continue;
        }
        let plain = !segment.contains(['%', '\\']) && segment != "." && segment != "..";
        if plain && !segment.chars().any(char::is_control) {
            path.push('/');
            path.push_str(segment);
            continue;
        }
        // Every decoding is checked until one changes nothing, so a server that decodes once more than ComfyUI
        // does (or a proxy in front of it) finds no climb either; a segment still changing after a few decodings
        // is no name anyone means, and is refused rather than decoded on (each pass costs its length).
        let mut decoded = percent_decode_str(segment).decode_utf8().ok()?.into_owned();
        for pass in 0.. {
            if decoded.contains('\\') || decoded.chars().any(char::is_control) {
                return None;
            }
            if decoded.split('/').any(|part| part == "." || part == "..") {
                return None;
            }
            let next = percent_decode_str(&decoded).decode_utf8_lossy();
            if next == decoded {
                break;
            }
            if pass == MAX_DECODINGS {
                return None;
            }
            decoded = next.into_owned();
        }
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() || raw.ends_with('/') {
        path.push('/');
    }
    Some(path)
}

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1): the fixed list and every name the `Connection` header
/// lists. In place, because rebuilding the map costs an allocation per header on every request.
/// Drops an upstream's CORS headers (`Access-Control-*`): whether another site may read an answer is
/// Orchestrator's to say (it says no), not ComfyUI's (`--enable-cors-header`) or v0's.
pub fn remove_cors(headers: &mut HeaderMap) {
    let cors: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in cors {
        headers.remove(name);
    }
}

pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none: one pass over the names is cheaper than nine failed removals.
    if !headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(&name.as_str()))
    {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the request's `Origin` names the address it was sent to (its `Host`): only such an `Origin` is
/// rewritten to ComfyUI's own.
fn origin_is_the_hosts(headers: &HeaderMap) -> bool {
    match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (Some(origin), Some(host)) => match (origin.to_str(), host.to_str()) {
            (Ok(origin), Ok(host)) => crate::address::same_origin(origin, host),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod properties;
#[cfg(test)]
mod tests;
