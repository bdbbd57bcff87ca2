//! The guard every request passes, WebSocket upgrades included.
//!
//! In order: the `Host` must be an allowed name (a DNS-rebinding page reaches us under its own name, so a
//! loopback listener alone is no protection); the token must match when one is configured (always, when bound to a
//! non-loopback address); a state-changing request or a WebSocket upgrade must not come from a foreign origin
//! (CSRF and cross-site WebSocket hijacking).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, header};
use subtle::ConstantTimeEq;

use crate::config::{Config, Secret};
use crate::error::ApiError;

/// What the guard lets through, derived once from the configuration.
#[derive(Debug)]
pub struct GuardPolicy {
    /// Lower-cased names accepted besides the loopback ones.
    extra_hosts: Vec<String>,
    token: Option<Secret>,
    /// The fleet's token: another instance fetching an output this one holds shows it instead of the user's.
    fleet_token: Option<Secret>,
    /// The panel's origin serves the Comfy.org egress, whose calls show a job's key instead of the user's token;
    /// the editor's origin relays every path to ComfyUI, so there it opens nothing.
    egress: bool,
}

/// The header an instance of the fleet proves itself with, when it fetches an output another instance holds.
pub const FLEET_HEADER: &str = "x-orchestrator-fleet";

impl GuardPolicy {
    pub fn from_config(config: &Config) -> Self {
        let mut extra_hosts = config.allowed_hosts.clone();
        for ip in std::iter::once(config.bind.ip()).chain(config.editor_bind.map(|a| a.ip())) {
            if !ip.is_unspecified() && !ip.is_loopback() {
                // Bound to one LAN address: people will type that address into the browser.
                extra_hosts.push(ip.to_string());
            }
        }
        // The name the fleet's other instances reach this one by.
        if let Some(host) = config
            .fleet
            .public_url
            .as_deref()
            .and_then(|url| url.parse::<http::Uri>().ok())
            .and_then(|uri| {
                uri.host()
                    .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
            })
        {
            extra_hosts.push(host);
        }
        Self {
            extra_hosts,
            token: config.token.clone(),
            fleet_token: None,
            egress: false,
        }
    }

    /// Lets the Comfy.org egress's calls through without the user's token (the panel's origin only).
    pub fn with_egress(mut self) -> Self {
        self.egress = true;
        self
    }

    /// Accepts the fleet's token on the fetch of a job's output (`GET /api/jobs/{id}/outputs/{name}`) from another
    /// instance.
    pub fn with_fleet_token(mut self, token: Option<Secret>) -> Self {
        self.fleet_token = token;
        self
    }

    /// A fetch of an output by another instance of the fleet, with the fleet's token.
    fn is_fleet_fetch(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.fleet_token else {
            return false;
        };
        let parts: Vec<&str> = path.split('/').collect();
        let output = matches!(parts.as_slice(), ["", "api", "jobs", _, "outputs", _]);
        output
            && method == Method::GET
            && headers
                .get(FLEET_HEADER)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| bool::from(t.as_bytes().ct_eq(expected.expose().as_bytes())))
    }

    /// Whether `hostname` (no port, no brackets) names this server.
    pub fn host_allowed(&self, hostname: &str) -> bool {
        let name = hostname.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = name.parse::<IpAddr>()
            && ip.is_loopback()
        {
            return true;
        }
        self.extra_hosts.contains(&name)
    }

    /// [`GuardPolicy::check`] plus the rules that depend on the route: `TRACE` is answered by no route and forwarded
    /// nowhere; `/api/v0/*` answers with what the server's v0 key can read, so a cross-site request is refused
    /// there whatever its method (a GET included).
    pub fn check_request(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        if method == Method::TRACE {
            return Err(ApiError::MethodNotAllowed {
                method: method.to_string(),
            });
        }
        // The Comfy.org egress takes a job's key, not the user's token: ComfyUI calls it, and holds no credential
        // of the panel's.
        let egress = self.egress
            && path
                .strip_prefix(crate::config::Config::EGRESS_PATH)
                .is_some_and(|rest| rest.starts_with('/'));
        let own_credential = egress || self.is_fleet_fetch(method, path, headers);
        self.check_with(method, headers, own_credential)?;
        if egress || path == "/api/v0" || path.starts_with("/api/v0/") {
            self.refuse_cross_site(headers)?;
        }
        Ok(())
    }

    /// The rule for a request relayed to ComfyUI (`/api/comfy/…` on the panel, every path on the editor's origin;
    /// `path` is what follows `/api/comfy`, or the editor's path): ComfyUI and its custom nodes have GET routes that
    /// change things (ComfyUI-Manager reboots and restores snapshots on a GET), so only the page's own origin
    /// (`Sec-Fetch-Site: same-origin`) or the user (`none`: typed, bookmarked; or a client that sends no such header)
    /// reaches it. Another site is refused, and so is another port of the same host (`same-site`: any local web
    /// server). Two navigations pass, without a foreign `Origin`: to the editor's page (`/`, which the panel links
    /// to, from the same site), and on the panel's origin to `/view` (a link to a picture, from anywhere: the panel
    /// serves it inert, sandboxed or as a download; the editor's origin serves it as ComfyUI does, so not there).
    pub fn check_gateway(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        origin: super::gateway::Origin,
    ) -> Result<(), ApiError> {
        use super::gateway::Origin;
        let site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        let navigation = matches!(*method, Method::GET | Method::HEAD)
            && headers
                .get("sec-fetch-mode")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|m| m.eq_ignore_ascii_case("navigate"));
        let allowed = match site.as_deref() {
            None | Some("same-origin" | "none") => true,
            Some(site) if navigation => {
                let route = crate::comfy::routes::comfy_route(path);
                match origin {
                    Origin::Panel => crate::comfy::routes::is_file_route(&route),
                    Origin::Editor => site == "same-site" && route == "/",
                }
            }
            Some(_) => false,
        };
        if !allowed {
            return Err(ApiError::CrossOrigin {
                origin: origin_of(headers),
            });
        }
        self.refuse_foreign_origin(headers)
    }

    fn refuse_cross_site(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if fetch_site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
            return Err(ApiError::CrossOrigin {
                origin: origin_of(headers),
            });
        }
        self.refuse_foreign_origin(headers)
    }

    fn refuse_foreign_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = origin
                .to_str()
                .ok()
                .is_some_and(|o| crate::address::same_origin(o, host));
            if !same {
                return Err(ApiError::CrossOrigin {
                    origin: origin_of(headers),
                });
            }
        }
        Ok(())
    }

    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        self.check_with(method, headers, false)
    }

    /// [`GuardPolicy::check`]; `own_credential`: the request is one whose handler checks a credential of its own
    /// instead of the user's token (the fleet's token on an output, a job's key at the Comfy.org egress).
    fn check_with(
        &self,
        method: &Method,
        headers: &HeaderMap,
        own_credential: bool,
    ) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let hostname = crate::address::split_host_port(host)
            .map(|(name, _)| name)
            .unwrap_or("");
        if hostname.is_empty() || !self.host_allowed(hostname) {
            return Err(ApiError::HostNotAllowed {
                host: host.chars().take(256).collect(),
            });
        }

        if let Some(expected) = &self.token
            && !own_credential
            && !presented_token(headers)
                .is_some_and(|t| bool::from(t.as_bytes().ct_eq(expected.expose().as_bytes())))
        {
            return Err(ApiError::Unauthorized);
        }

        if changes_state(method) || is_websocket_upgrade(headers) {
            self.refuse_cross_site(headers)?;
        }
        Ok(())
    }
}

/// The axum middleware around [`GuardPolicy::check`].
pub async fn guard(
    State(policy): State<Arc<GuardPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    match policy.check_request(request.method(), request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// Refuses a state-changing request whose body is not JSON, on routes that only take JSON. A browser can send a
/// cross-site form or `text/plain` body without a CORS preflight; it cannot send `application/json`.
pub async fn require_json_body(request: Request, next: Next) -> Response {
    if changes_state(request.method()) && has_body(request.headers()) && !is_json(request.headers())
    {
        return ApiError::UnsupportedMediaType.into_response();
    }
    next.run(request).await
}

pub fn changes_state(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    match length {
        Some(len) => len.trim() != "0",
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, value) = auth.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| value.trim());
    }
    // Browsers cannot put headers on page loads or WebSocket upgrades, so the panel carries the token in a cookie.
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("orch_token="))
}

fn origin_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(|o| o.chars().take(256).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy(token: Option<&str>) -> GuardPolicy {
        GuardPolicy {
            extra_hosts: vec!["studio.lan".into()],
            token: token.map(Secret::new),
            fleet_token: None,
            egress: false,
        }
    }

    /// The egress takes a job's key, not the user's token, on the panel's origin alone, and only below its path.
    #[test]
    fn the_egress_needs_no_token_on_the_panel_and_opens_nothing_else() {
        let panel = policy(Some("0123456789abcdef")).with_egress();
        let comfyui = headers(&[("host", "127.0.0.1:3000")]);
        let call = "/api/comfy-org/proxy/bfl/flux-pro-1.1-ultra/generate";
        assert!(panel.check_request(&Method::POST, call, &comfyui).is_ok());
        for path in [
            "/api/comfy-org",
            "/api/comfy-orgs/x",
            "/api/jobs",
            "/api/comfy/queue",
        ] {
            let refused = panel
                .check_request(&Method::GET, path, &comfyui)
                .unwrap_err();
            assert_eq!(refused.code().as_str(), "unauthorized", "{path}");
        }
        // The editor's origin relays every path to ComfyUI: there the egress's path is no exception.
        let editor = policy(Some("0123456789abcdef"));
        let refused = editor
            .check_request(&Method::POST, call, &comfyui)
            .unwrap_err();
        assert_eq!(refused.code().as_str(), "unauthorized");
        // A page of another site cannot use it.
        let cross = headers(&[("host", "127.0.0.1:3000"), ("sec-fetch-site", "cross-site")]);
        assert!(panel.check_request(&Method::POST, call, &cross).is_err());
    }

    /// The fleet's token stands for the user's on exactly one kind of request: an instance's GET of a job's output.
    #[test]
    fn the_fleet_token_opens_only_the_fetch_of_an_output() {
        let p =
            policy(Some("0123456789abcdef")).with_fleet_token(Some(Secret::new("fleet-secret")));
        let host = ("host", "localhost:3000");
        let fleet = headers(&[host, (FLEET_HEADER, "fleet-secret")]);
        let output = "/api/jobs/01a2/outputs/image_00001_.png";
        assert!(p.check_request(&Method::GET, output, &fleet).is_ok());
        for (method, path) in [
            (Method::POST, output),
            (Method::DELETE, output),
            (Method::GET, "/api/jobs/01a2"),
            (Method::GET, "/api/settings"),
            (Method::GET, "/api/jobs/01a2/outputs/a/../../b"),
        ] {
            let refused = p.check_request(&method, path, &fleet).unwrap_err();
            assert_eq!(refused.code().as_str(), "unauthorized", "{method} {path}");
        }
        let forged = headers(&[host, (FLEET_HEADER, "fleet-secreT")]);
        assert!(p.check_request(&Method::GET, output, &forged).is_err());
        // Without a fleet (SQLite), the header means nothing.
        let alone = policy(Some("0123456789abcdef"));
        assert!(alone.check_request(&Method::GET, output, &fleet).is_err());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn host_allowlist() {
        let p = policy(None);
        for ok in [
            "127.0.0.1:3000",
            "localhost:3000",
            "LOCALHOST",
            "[::1]:3000",
            "127.9.9.9",
            "studio.lan:3000",
        ] {
            assert!(
                p.check(&Method::GET, &headers(&[("host", ok)])).is_ok(),
                "{ok} should pass"
            );
        }
        for bad in [
            "evil.example",
            "localhost.evil.com",
            "",
            "127.0.0.1.nip.io:3000",
            "[::1",
            "a:b:c",
        ] {
            let err = p
                .check(&Method::GET, &headers(&[("host", bad)]))
                .unwrap_err();
            assert_eq!(err.code().as_str(), "host_not_allowed", "{bad}");
        }
        assert!(
            p.check(&Method::GET, &HeaderMap::new()).is_err(),
            "a missing Host is refused"
        );
    }

    #[test]
    fn foreign_origins_cannot_write() {
        let p = policy(None);
        let host = ("host", "127.0.0.1:3000");
        let ok = headers(&[host, ("origin", "http://127.0.0.1:3000")]);
        assert!(p.check(&Method::POST, &ok).is_ok());
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:5173",
            "null",
            "http://localhost:3000",
        ] {
            let err = p
                .check(&Method::POST, &headers(&[host, ("origin", origin)]))
                .unwrap_err();
            assert_eq!(err.code().as_str(), "cross_origin_refused", "{origin}");
        }
        let cross = headers(&[host, ("sec-fetch-site", "cross-site")]);
        assert!(p.check(&Method::DELETE, &cross).is_err());
        // Reads from elsewhere are harmless: the browser's same-origin policy keeps the answer from the page.
        assert!(
            p.check(
                &Method::GET,
                &headers(&[host, ("origin", "http://evil.example")])
            )
            .is_ok()
        );
        let ws = headers(&[
            host,
            ("origin", "http://evil.example"),
            ("upgrade", "websocket"),
        ]);
        assert!(
            p.check(&Method::GET, &ws).is_err(),
            "cross-site WebSocket hijacking"
        );
    }

    #[test]
    fn token_when_configured() {
        let p = policy(Some("0123456789abcdef"));
        let host = ("host", "localhost:3000");
        assert_eq!(
            p.check(&Method::GET, &headers(&[host]))
                .unwrap_err()
                .code()
                .as_str(),
            "unauthorized"
        );
        let wrong = headers(&[host, ("authorization", "Bearer nope")]);
        assert!(p.check(&Method::GET, &wrong).is_err());
        assert!(
            p.check(
                &Method::GET,
                &headers(&[host, ("authorization", "Bearer 0123456789abcdef")])
            )
            .is_ok()
        );
        assert!(
            p.check(
                &Method::GET,
                &headers(&[host, ("cookie", "a=b; orch_token=0123456789abcdef")])
            )
            .is_ok()
        );
    }
}
