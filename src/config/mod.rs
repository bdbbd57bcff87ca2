//! Configuration from flags, environment and `.env`, validated once at start-up.
//!
//! clap reads every value as a string on purpose: if it parsed types itself it would stop at the first bad value,
//! and a user who fixes one problem would meet the next one on the following start. [`Settings::validate`] checks
//! everything and returns every problem at once.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme};

mod fleet;
mod settings;
#[cfg(test)]
mod tests;
mod validate;
mod webhook;

pub use settings::Settings;

/// A value that must never be printed: `Debug` and `Display` show a mask, and only [`Secret::expose`] reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// One ComfyUI backend: only a scheme and an authority, so that a client's path can never change where a request
/// goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComfyBackend {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl ComfyBackend {
    /// `http://host:port`, the origin ComfyUI's own host/origin check expects to see.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// Gateway settings for ComfyUI.
#[derive(Debug, Clone)]
pub struct ComfyConfig {
    /// Every configured backend, in the order given; the gateway uses the first.
    pub backends: Vec<ComfyBackend>,
    pub connect_timeout: Duration,
    /// Response-header deadline for safe methods (GET, HEAD, OPTIONS).
    pub read_timeout: Duration,
    /// Response-header deadline for methods that change state: ComfyUI validates a whole graph on POST /prompt.
    pub write_timeout: Duration,
    /// The longest pause between two chunks of a streamed body before the stream is cut.
    pub idle_timeout: Duration,
    pub max_body_bytes: u64,
    /// How long the shared WebSocket may stay silent, with jobs on it, before ComfyUI's queue is asked.
    pub silence_check: Duration,
}

/// How ComfyUI is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceBackend {
    Windows,
    Systemd,
    Supervised,
    External,
}

/// Settings of the service layer.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub backend: ServiceBackend,
    pub name: String,
    pub comfy_dir: Option<PathBuf>,
    /// `COMFY_COMMAND`, when given: program and arguments.
    pub command: Option<(String, Vec<String>)>,
    pub log_file: PathBuf,
    pub nssm: String,
    pub ignite_timeout: Duration,
    pub restart_delay: Duration,
    pub stop_grace: Duration,
    /// A supervised ComfyUI failing its health probe this long is hung.
    pub hung_after: Duration,
}

/// Settings of the Black Forest Labs (FLUX) client and its money guards.
#[derive(Debug, Clone)]
pub struct FluxConfig {
    pub allow_generation: bool,
    pub api_key: Option<Secret>,
    /// Without a trailing slash.
    pub base_url: String,
    /// The day's spending cap in millionths of a dollar, so sums stay exact.
    pub daily_budget_micros: i64,
    pub confirm_ttl: Duration,
    pub submit_timeout: Duration,
    pub poll_interval: Duration,
    pub poll_timeout: Duration,
}

/// ComfyUI's paid API nodes, billed to a Comfy.org account.
#[derive(Debug, Clone)]
pub struct ComfyOrgConfig {
    pub api_key: Option<Secret>,
    /// Where the egress forwards ComfyUI's API-node calls: scheme, host and optional path, no trailing slash.
    pub base_url: String,
    /// The price of a paid node whose price is not known otherwise, in millionths of a dollar.
    pub paid_node_max_micros: i64,
}

/// Settings of the v0 Platform API gateway.
#[derive(Debug, Clone)]
pub struct V0Config {
    pub api_key: Option<Secret>,
    /// Scheme, host and optional path prefix, without a trailing slash or API version.
    pub base_url: String,
    pub timeout: Duration,
}

/// The per-client limit on the paid routes.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    pub per_minute: u32,
    pub burst: u32,
}

/// This instance in a fleet of Orchestrators on one store.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Its name in claims and in the instances list (`ORCH_INSTANCE_ID`).
    pub instance_id: String,
    /// Where other instances reach it, when configured (`ORCH_PUBLIC_URL`); else its bound address.
    pub public_url: Option<String>,
    /// How long a claim on a job lasts unrenewed (`FLEET_LEASE_SECS`).
    pub lease: Duration,
}

/// Word of every job that ends, POSTed to a URL of the user's (`JOB_WEBHOOK_URL`), signed with
/// `JOB_WEBHOOK_SECRET`; a failed delivery is tried again after `first_retry`, then twice as long each time.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: Secret,
    pub first_retry: Duration,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    /// Where ComfyUI's editor is served, on its own origin; `None` when it is `off`.
    pub editor_bind: Option<SocketAddr>,
    /// Serving threads, each with its own event loop and upstream pool.
    pub workers: usize,
    /// A client's time to send a request head; also a new connection's time to send its first one.
    pub header_read_timeout: Duration,
    /// Longest silence inside a request body (`ORCH_BODY_IDLE_SECS`).
    pub body_idle_timeout: Duration,
    /// Longest time a request body may take in all (`ORCH_BODY_TIMEOUT_SECS`).
    pub body_timeout: Duration,
    /// Client connections open at once, across every serving thread.
    pub max_connections: usize,
    /// How long one event stream stays open before the client is asked to reconnect; `None`: as long as it likes.
    pub events_max: Option<Duration>,
    /// Events held for a slow client before it is dropped (`ORCH_EVENTS_CLIENT_BUFFER`).
    pub events_client_buffer: usize,
    /// Lower-cased extra `Host` names; loopback names are always allowed.
    pub allowed_hosts: Vec<String>,
    pub token: Option<Secret>,
    pub data_dir: PathBuf,
    pub database_url: Secret,
    pub fleet: FleetConfig,
    pub comfy: ComfyConfig,
    pub service: ServiceConfig,
    /// A folder of user templates, when configured.
    pub templates_dir: Option<PathBuf>,
    /// The default `base_path` of a new `extra_model_paths.yaml`.
    pub models_dir: Option<PathBuf>,
    pub flux: FluxConfig,
    pub comfy_org: ComfyOrgConfig,
    pub v0: V0Config,
    pub paid_rate_limit: RateLimitConfig,
    /// Word of ended jobs to `JOB_WEBHOOK_URL`, when it is set.
    pub webhook: Option<WebhookConfig>,
    pub log_format: LogFormat,
    /// Where each variable's value came from (`flag`, `env`, `dotenv`); a variable not listed has its default.
    pub sources: std::collections::BTreeMap<String, &'static str>,
}

/// Every problem found in the settings, each naming the variable and the flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

/// How the settings page shows a secret: masked when set, empty when not.
fn masked(value: &Option<Secret>) -> String {
    match value {
        Some(_) => "***".to_owned(),
        None => String::new(),
    }
}

/// How the settings page shows an optional folder: empty when unset.
fn shown_path(value: &Option<PathBuf>) -> String {
    value
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A duration in whole seconds, as its `_SECS` variable is written.
fn secs(d: Duration) -> String {
    d.as_secs().to_string()
}

impl Config {
    /// Every setting as the settings page shows it: variable name and effective value, secrets masked.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        [
            self.effective_server(),
            self.effective_comfy(),
            self.effective_paid(),
        ]
        .concat()
    }

    /// The server's own settings, `bind` to `database_url`.
    fn effective_server(&self) -> Vec<(&'static str, String)> {
        // Each variable named by its clap definition, never typed again.
        let v = Settings::variable_of;
        vec![
            (v("bind"), self.bind.to_string()),
            (
                v("comfy_bind"),
                self.editor_bind
                    .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            ),
            (v("workers"), self.workers.to_string()),
            (
                v("header_read_timeout_secs"),
                secs(self.header_read_timeout),
            ),
            (v("body_idle_secs"), secs(self.body_idle_timeout)),
            (v("body_timeout_secs"), secs(self.body_timeout)),
            (v("max_connections"), self.max_connections.to_string()),
            (
                v("events_max_secs"),
                self.events_max.map_or(0, |d| d.as_secs()).to_string(),
            ),
            (
                v("events_client_buffer"),
                self.events_client_buffer.to_string(),
            ),
            (v("allowed_hosts"), self.allowed_hosts.join(",")),
            (v("token"), masked(&self.token)),
            (v("data_dir"), self.data_dir.display().to_string()),
            (v("instance_id"), self.fleet.instance_id.clone()),
            (
                v("public_url"),
                self.fleet.public_url.clone().unwrap_or_default(),
            ),
            (v("fleet_lease_secs"), secs(self.fleet.lease)),
            (v("database_url"), "***".to_owned()),
        ]
    }

    /// ComfyUI's: the gateway and how it is run, `comfy_url` to `models_dir`.
    fn effective_comfy(&self) -> Vec<(&'static str, String)> {
        let v = Settings::variable_of;
        let service = &self.service;
        let comfy = &self.comfy;
        vec![
            (
                v("comfy_url"),
                comfy
                    .backends
                    .iter()
                    .map(ComfyBackend::origin)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                v("comfy_connect_timeout_ms"),
                comfy.connect_timeout.as_millis().to_string(),
            ),
            (v("comfy_read_timeout_secs"), secs(comfy.read_timeout)),
            (v("comfy_write_timeout_secs"), secs(comfy.write_timeout)),
            (v("comfy_idle_timeout_secs"), secs(comfy.idle_timeout)),
            (v("comfy_silence_secs"), secs(comfy.silence_check)),
            (
                v("max_body_mb"),
                (comfy.max_body_bytes / (1024 * 1024)).to_string(),
            ),
            (v("comfy_dir"), shown_path(&service.comfy_dir)),
            (
                v("comfy_command"),
                service
                    .command
                    .as_ref()
                    .map(|(program, args)| {
                        serde_json::to_string(
                            &std::iter::once(program).chain(args).collect::<Vec<_>>(),
                        )
                        .unwrap_or_default()
                    })
                    .unwrap_or_default(),
            ),
            (v("comfy_log_file"), service.log_file.display().to_string()),
            (
                v("service_backend"),
                match service.backend {
                    ServiceBackend::Windows => "windows",
                    ServiceBackend::Systemd => "systemd",
                    ServiceBackend::Supervised => "supervised",
                    ServiceBackend::External => "external",
                }
                .to_owned(),
            ),
            (v("service_name"), service.name.clone()),
            (v("nssm_path"), service.nssm.clone()),
            (
                v("comfy_restart_delay_ms"),
                service.restart_delay.as_millis().to_string(),
            ),
            (v("comfy_stop_grace_secs"), secs(service.stop_grace)),
            (v("ignite_timeout_secs"), secs(service.ignite_timeout)),
            (v("comfy_hung_secs"), secs(service.hung_after)),
            (v("templates_dir"), shown_path(&self.templates_dir)),
            (v("models_dir"), shown_path(&self.models_dir)),
        ]
    }

    /// The paid providers', the webhook's and the log's, `allow_generation` to `log_format`.
    fn effective_paid(&self) -> Vec<(&'static str, String)> {
        let v = Settings::variable_of;
        let flux = &self.flux;
        vec![
            (v("allow_generation"), flux.allow_generation.to_string()),
            (v("bfl_api_key"), masked(&flux.api_key)),
            (v("bfl_base_url"), flux.base_url.clone()),
            (
                v("flux_daily_budget_usd"),
                format!("{:.2}", flux.daily_budget_micros as f64 / 1_000_000.0),
            ),
            (v("flux_confirm_ttl_secs"), secs(flux.confirm_ttl)),
            (v("flux_submit_timeout_secs"), secs(flux.submit_timeout)),
            (
                v("flux_poll_interval_ms"),
                flux.poll_interval.as_millis().to_string(),
            ),
            (v("flux_poll_timeout_secs"), secs(flux.poll_timeout)),
            (v("comfy_org_api_key"), masked(&self.comfy_org.api_key)),
            (v("comfy_org_api_base"), self.comfy_org.base_url.clone()),
            // Masked: a receiver's URL often carries its token.
            (
                v("job_webhook_url"),
                masked(&self.webhook.as_ref().map(|w| Secret::new(w.url.clone()))),
            ),
            (
                v("job_webhook_secret"),
                masked(&self.webhook.as_ref().map(|w| w.secret.clone())),
            ),
            (
                v("job_webhook_retry_ms"),
                self.webhook
                    .as_ref()
                    .map(|w| w.first_retry.as_millis().to_string())
                    .unwrap_or_default(),
            ),
            (
                v("comfy_paid_node_max_usd"),
                format!(
                    "{:.2}",
                    self.comfy_org.paid_node_max_micros as f64 / 1_000_000.0
                ),
            ),
            (v("v0_api_key"), masked(&self.v0.api_key)),
            (v("v0_base_url"), self.v0.base_url.clone()),
            (v("v0_timeout_secs"), secs(self.v0.timeout)),
            (
                v("paid_rate_limit_per_min"),
                self.paid_rate_limit.per_minute.to_string(),
            ),
            (
                v("paid_rate_limit_burst"),
                self.paid_rate_limit.burst.to_string(),
            ),
            (
                v("log_format"),
                match self.log_format {
                    LogFormat::Json => "json",
                    LogFormat::Text => "text",
                }
                .to_owned(),
            ),
        ]
    }

    /// Where Orchestrator serves the Comfy.org egress on the panel's address.
    pub const EGRESS_PATH: &'static str = "/api/comfy-org";

    /// The Comfy.org egress as a ComfyUI reaches it (its `--comfy-api-base`): `ORCH_PUBLIC_URL` in a fleet, else
    /// the address Orchestrator listens on (loopback for an unspecified one: the supervised ComfyUI is on this
    /// machine). The trailing `/` keeps the path when an older ComfyUI joins a route to it with `urljoin`.
    pub fn comfy_org_egress_url(&self) -> String {
        let origin = match &self.fleet.public_url {
            Some(url) => url.clone(),
            None => {
                let ip = match self.bind.ip() {
                    std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
                    }
                    std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                        std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
                    }
                    ip => ip,
                };
                format!("http://{}", std::net::SocketAddr::new(ip, self.bind.port()))
            }
        };
        format!("{origin}{}/", Self::EGRESS_PATH)
    }

    /// The first ComfyUI backend, the one the gateway talks to.
    pub fn primary_comfy(&self) -> &ComfyBackend {
        &self.comfy.backends[0]
    }

    /// Every secret's value (keys, tokens, the webhook's URL and key, the database's password), for masking text
    /// from elsewhere that may hold one: ComfyUI's log shows what its nodes print, prompts included.
    pub fn secret_values(&self) -> Vec<String> {
        let keys = [
            self.token.as_ref(),
            self.flux.api_key.as_ref(),
            self.v0.api_key.as_ref(),
            self.comfy_org.api_key.as_ref(),
            self.webhook.as_ref().map(|w| &w.secret),
        ];
        let password = self
            .database_url
            .expose()
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(user, _)| user.split_once(':'))
            .map(|(_, password)| password.to_owned());
        // As written in the URL, and as it means (percent-decoded), which is how a driver's message would show it.
        let decoded = password.as_deref().map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        });
        keys.into_iter()
            .flatten()
            .map(|s| s.expose().to_owned())
            .chain(self.webhook.as_ref().map(|w| w.url.clone()))
            .chain(password)
            .chain(decoded)
            .filter(|value| !value.is_empty())
            .collect()
    }

    /// Whether the server listens on a loopback address only.
    pub fn is_loopback(&self) -> bool {
        self.bind.ip().is_loopback()
    }
}

/// Which database holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// The engine a `DATABASE_URL` names, by its scheme.
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.trim().split(':').next().unwrap_or_default();
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }
}
