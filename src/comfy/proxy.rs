//! The HTTP gateway to ComfyUI, in named phases: normalise the path, build the upstream request, forward it under
//! time limits, filter the response. Bodies stream in both directions and are never held whole.

use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::percent_decode_str;

use super::body::{IdleTimeout, SizeLimit};
use crate::config::{ComfyBackend, ComfyConfig};
use crate::error::ApiError;

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
    pub async fn forward(
        &self,
        request: Request<Body>,
        upstream_path: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (parts, body) = request.into_parts();
        let uri = self.upstream_uri(upstream_path, parts.uri.query())?;

        let limit = self.settings.max_body_bytes;
        if declared_length(&parts.headers).is_some_and(|len| len > limit) {
            return Err(ApiError::PayloadTooLarge { limit });
        }

        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers);
        headers.insert(header::HOST, self.upstream_host.clone());
        headers.remove(header::EXPECT);
        // Orchestrator's own credentials are not ComfyUI's business.
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::COOKIE);
        if headers.contains_key(header::ORIGIN) {
            headers.insert(header::ORIGIN, self.upstream_origin.clone());
        }
        // An empty body (most GETs) needs no limit and no idle watch: skip the wrappers and their timer.
        let (body, too_large) = if http_body::Body::is_end_stream(&body) {
            (Body::empty(), None)
        } else {
            let (limited, too_large) = SizeLimit::new(body, limit);
            (
                Body::new(IdleTimeout::new(
                    limited,
                    self.settings.idle_timeout,
                    "request body",
                )),
                Some(too_large),
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
                return Err(ApiError::ComfyTimeout {
                    upstream: self.backend.origin(),
                    seconds: deadline.as_secs_f64(),
                });
            }
            Ok(Err(_))
                if too_large.is_some_and(|flag| flag.load(std::sync::atomic::Ordering::SeqCst)) =>
            {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            Ok(Err(error)) => return Err(self.classify(error)),
            Ok(Ok(response)) => response,
        };

        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        let body = IdleTimeout::new(body, self.settings.idle_timeout, "ComfyUI response body");
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// Whether ComfyUI answers `/system_stats` within `within` (the health probe).
    pub async fn probe(&self, within: Duration) -> bool {
        let Ok(uri) = self.upstream_uri("/system_stats", None) else {
            return false;
        };
        let Ok(request) = Request::get(uri).body(Body::empty()) else {
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
        content_type: &str,
    ) -> Result<String, ApiError> {
        let boundary = format!("orchestrator-{}", uuid::Uuid::new_v4().simple());
        let file_name = file_name.replace(['"', '\r', '\n'], "_");
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
            .body(Body::from(body))
            .map_err(ApiError::internal)?;
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
            _ => Err(ApiError::ComfyBadResponse(format!(
                "POST /upload/image answered {status}"
            ))),
        }
    }

    /// POSTs a JSON body; answers the status and the body (JSON, or the text as a JSON string).
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(http::StatusCode, serde_json::Value), ApiError> {
        let uri = self.upstream_uri(path, None)?;
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .map_err(ApiError::internal)?;
        let deadline = self.settings.write_timeout;
        let timeout = || ApiError::ComfyTimeout {
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
        .map_err(|e| ApiError::ComfyBadResponse(format!("POST {path}: {e}")))?
        .to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        Ok((status, value))
    }

    /// Streams `GET path_and_query` into `dest` (through `dest.part`, renamed when complete, so a file that exists
    /// is whole). Answers the size and the content type.
    pub async fn download(
        &self,
        path: &str,
        query: &str,
        dest: &std::path::Path,
    ) -> Result<(u64, String), ApiError> {
        use tokio::io::AsyncWriteExt;
        let uri = self.upstream_uri(path, Some(query))?;
        let request = Request::get(uri)
            .body(Body::empty())
            .map_err(ApiError::internal)?;
        let response = self
            .send_within(request, self.settings.read_timeout)
            .await?;
        if !response.status().is_success() {
            return Err(ApiError::ComfyBadResponse(format!(
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
        let partial = dest.with_extension(format!(
            "{}part",
            dest.extension()
                .map(|e| format!("{}.", e.to_string_lossy()))
                .unwrap_or_default()
        ));
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(ApiError::internal)?;
        let mut body = IdleTimeout::new(
            response.into_body(),
            self.settings.idle_timeout,
            "ComfyUI output",
        );
        let mut size = 0u64;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::ComfyBadResponse(format!("GET {path}: {e}")))?;
            if let Ok(data) = frame.into_data() {
                size += data.len() as u64;
                file.write_all(&data).await.map_err(ApiError::internal)?;
            }
        }
        file.sync_all().await.map_err(ApiError::internal)?;
        drop(file);
        tokio::fs::rename(&partial, dest)
            .await
            .map_err(ApiError::internal)?;
        Ok((size, content_type))
    }

    /// Sends a GET to ComfyUI and reads a JSON answer of at most `max_bytes`.
    pub async fn get_json(
        &self,
        path: &str,
        max_bytes: usize,
    ) -> Result<serde_json::Value, ApiError> {
        let uri = self.upstream_uri(path, None)?;
        let request = Request::get(uri)
            .body(Body::empty())
            .map_err(ApiError::internal)?;
        let response = self
            .send_within(request, self.settings.read_timeout)
            .await?;
        if !response.status().is_success() {
            return Err(ApiError::ComfyBadResponse(format!(
                "GET {path} answered {}",
                response.status()
            )));
        }
        let body = tokio::time::timeout(
            self.settings.read_timeout,
            Limited::new(response.into_body(), max_bytes).collect(),
        )
        .await
        .map_err(|_| ApiError::ComfyTimeout {
            upstream: self.backend.origin(),
            seconds: self.settings.read_timeout.as_secs_f64(),
        })?
        .map_err(|e| ApiError::ComfyBadResponse(format!("GET {path}: {e}")))?
        .to_bytes();
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::ComfyBadResponse(format!("GET {path}: {e}")))
    }

    /// The upstream URI: the configured scheme and authority, never anything taken from the client, plus the
    /// normalised path and the client's query.
    pub fn upstream_uri(&self, raw_path: &str, query: Option<&str>) -> Result<Uri, ApiError> {
        let path = normalise_path(raw_path).ok_or_else(|| ApiError::InvalidPath {
            path: raw_path.chars().take(256).collect(),
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
            .map_err(|_| ApiError::InvalidPath {
                path: raw_path.chars().take(256).collect(),
            })
    }

    /// Sends one of Orchestrator's own requests: no answer within `deadline` is `comfy_timeout`, no connection
    /// `comfy_unreachable`.
    async fn send_within(
        &self,
        request: Request<Body>,
        deadline: Duration,
    ) -> Result<Response<hyper::body::Incoming>, ApiError> {
        tokio::time::timeout(deadline, self.client.request(request))
            .await
            .map_err(|_| ApiError::ComfyTimeout {
                upstream: self.backend.origin(),
                seconds: deadline.as_secs_f64(),
            })?
            .map_err(|_| ApiError::ComfyUnreachable {
                upstream: self.backend.origin(),
            })
    }

    fn header_deadline(&self, method: &Method) -> Duration {
        match *method {
            Method::GET | Method::HEAD | Method::OPTIONS => self.settings.read_timeout,
            _ => self.settings.write_timeout,
        }
    }

    fn classify(&self, error: hyper_util::client::legacy::Error) -> ApiError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(cause) = source {
            if cause.is::<super::body::IdleTimeoutError>() {
                return ApiError::ComfyTimeout {
                    upstream: self.backend.origin(),
                    seconds: self.settings.idle_timeout.as_secs_f64(),
                };
            }
            source = cause.source();
        }
        tracing::warn!(upstream = %self.backend.origin(), error = %error, connect = error.is_connect(), "ComfyUI request failed");
        ApiError::ComfyUnreachable {
            upstream: self.backend.origin(),
        }
    }
}

/// Turns the client's path below `/api/comfy` into a clean absolute path, or `None` when it tries to leave it.
///
/// Empty segments (`//host`) collapse; `.` and `..` are refused in every spelling (raw, percent-encoded, double
/// encoded, hidden inside an encoded `/`); backslashes and control characters are refused. Percent-encoding that
/// is legitimate (ComfyUI's `/userdata/workflows%2Fa.json`) is kept as the client sent it.
pub fn normalise_path(raw: &str) -> Option<String> {
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
        let once = percent_decode_str(segment).decode_utf8().ok()?;
        let twice = percent_decode_str(&once).decode_utf8_lossy();
        for decoded in [once.as_ref(), twice.as_ref()] {
            if decoded.contains('\\') || decoded.chars().any(char::is_control) {
                return None;
            }
            if decoded.split('/').any(|part| part == "." || part == "..") {
                return None;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_or_refuses_paths() {
        let ok = [
            ("/system_stats", "/system_stats"),
            ("//system_stats", "/system_stats"),
            ("", "/"),
            ("/", "/"),
            ("/api/prompt", "/api/prompt"),
            (
                "/userdata/workflows%2Fa.json",
                "/userdata/workflows%2Fa.json",
            ),
            ("//evil.example/x", "/evil.example/x"),
            ("/@evil.example", "/@evil.example"),
            ("/http:/evil.example/", "/http:/evil.example/"),
            ("/extensions/", "/extensions/"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalise_path(raw).as_deref(), Some(want), "{raw}");
        }
        for raw in [
            "/../etc/passwd",
            "/a/..",
            "/%2e%2e/x",
            "/%2E%2e/x",
            "/.%2e/x",
            "/a%2f..%2fb",
            "/%252e%252e/x",
            "/a\\b",
            "/a%5cb",
            "/./x",
            "/a%00b",
            "/%ff",
        ] {
            assert_eq!(normalise_path(raw), None, "{raw} should be refused");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("x-secret-hop", "1"),
            ("content-type", "application/json"),
            ("x-kept", "yes"),
        ] {
            from.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        remove_hop_by_hop(&mut from);
        let names: Vec<_> = from.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-kept"]);
    }
}
