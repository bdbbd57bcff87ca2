//! Configuration from flags, environment and `.env`, validated once at start-up.
//!
//! clap reads every value as a string on purpose: if it parsed types itself it would stop at the first bad value,
//! and a user who fixes one problem would meet the next one on the following start. [`Settings::validate`] checks
//! everything and returns every problem at once.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use http::uri::{Authority, Scheme};

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

/// The raw settings as clap reads them from flags and environment (a `.env` file is loaded into the environment
/// before this is parsed). Every flag mirrors its environment variable: `ORCH_BIND` ↔ `--bind`.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address of the panel and API.
    #[arg(
        long,
        env = "ORCH_BIND",
        default_value = "127.0.0.1:3000",
        global = true
    )]
    pub bind: String,

    /// Address of ComfyUI's editor, on an origin of its own so its scripts (and every custom node's) cannot act
    /// as the panel; `off` serves no editor.
    #[arg(
        long,
        env = "ORCH_COMFY_BIND",
        default_value = "127.0.0.1:3001",
        global = true
    )]
    pub comfy_bind: String,

    /// Serving threads (one event loop each); `auto` is one per core.
    #[arg(long, env = "ORCH_WORKERS", default_value = "auto", global = true)]
    pub workers: String,

    /// How long a client may take to send a request's headers, in seconds; a connection that has sent no complete
    /// request by then is closed.
    #[arg(
        long,
        env = "ORCH_HEADER_READ_TIMEOUT_SECS",
        default_value = "10",
        global = true
    )]
    pub header_read_timeout_secs: String,

    /// Most client connections open at once; past it, connections that have not sent a request yet are closed first.
    #[arg(
        long,
        env = "ORCH_MAX_CONNECTIONS",
        default_value = "1024",
        global = true
    )]
    pub max_connections: String,

    /// Longest time one event stream (`/api/events`, `/api/jobs/{id}/events`) stays open, in seconds; the client
    /// then reconnects with `Last-Event-ID` and misses nothing (EventSource does so by itself). 0: no limit.
    #[arg(long, env = "ORCH_EVENTS_MAX_SECS", default_value = "0", global = true)]
    pub events_max_secs: String,

    /// Extra `Host` names accepted besides the loopback names (comma list).
    #[arg(long, env = "ORCH_ALLOWED_HOSTS", global = true)]
    pub allowed_hosts: Option<String>,

    /// Token required on every request; mandatory when the bind address is not loopback.
    #[arg(
        long,
        env = "ORCHESTRATOR_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,

    /// Folder for the SQLite file, outputs and Orchestrator's own logs.
    #[arg(long, env = "DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: String,

    /// Store URL; defaults to `sqlite://$DATA_DIR/orchestrator.db`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,

    /// One or more ComfyUI base URLs (comma list); the gateway uses the first.
    #[arg(
        long,
        env = "COMFY_URL",
        default_value = "http://127.0.0.1:8188",
        global = true
    )]
    pub comfy_url: String,

    /// How long to wait for a TCP connection to ComfyUI, in milliseconds.
    #[arg(
        long,
        env = "COMFY_CONNECT_TIMEOUT_MS",
        default_value = "2000",
        global = true
    )]
    pub comfy_connect_timeout_ms: String,

    /// How long a GET (and other reads) may wait for ComfyUI's response headers, in seconds.
    #[arg(
        long,
        env = "COMFY_READ_TIMEOUT_SECS",
        default_value = "10",
        global = true
    )]
    pub comfy_read_timeout_secs: String,

    /// How long a POST (and other writes) may wait for ComfyUI's response headers, in seconds.
    #[arg(
        long,
        env = "COMFY_WRITE_TIMEOUT_SECS",
        default_value = "30",
        global = true
    )]
    pub comfy_write_timeout_secs: String,

    /// The longest silence allowed inside a streamed body, in seconds.
    #[arg(
        long,
        env = "COMFY_IDLE_TIMEOUT_SECS",
        default_value = "30",
        global = true
    )]
    pub comfy_idle_timeout_secs: String,

    /// Largest request body the gateway forwards, in MiB (ComfyUI's own default is 100).
    #[arg(long, env = "MAX_BODY_MB", default_value = "100", global = true)]
    pub max_body_mb: String,

    /// ComfyUI's folder: where it is started from, and where `extra_model_paths.yaml` lives.
    #[arg(long, env = "COMFY_DIR", global = true)]
    pub comfy_dir: Option<String>,

    /// The program and arguments that start ComfyUI, as a JSON array (default: derived from COMFY_DIR).
    #[arg(long, env = "COMFY_COMMAND", global = true)]
    pub comfy_command: Option<String>,

    /// The log the viewer tails (default: `$DATA_DIR/logs/comfyui.log`, where every backend writes it).
    #[arg(long, env = "COMFY_LOG_FILE", global = true)]
    pub comfy_log_file: Option<String>,

    /// How ComfyUI is run: `windows`, `systemd`, `supervised` or `external` (default: windows on Windows,
    /// supervised elsewhere).
    #[arg(long, env = "SERVICE_BACKEND", global = true)]
    pub service_backend: Option<String>,

    /// The OS service's name.
    #[arg(
        long,
        env = "SERVICE_NAME",
        default_value = "OrchestratorComfyUI",
        global = true
    )]
    pub service_name: String,

    /// NSSM's executable, for the windows backend.
    #[arg(long, env = "NSSM_PATH", default_value = "nssm", global = true)]
    pub nssm_path: String,

    /// The first restart delay after ComfyUI exits (supervised backend), in ms; it doubles per quick crash, to 30 s.
    #[arg(
        long,
        env = "COMFY_RESTART_DELAY_MS",
        default_value = "1000",
        global = true
    )]
    pub comfy_restart_delay_ms: String,

    /// How long a stop waits for ComfyUI to exit before it is killed (supervised backend), in seconds.
    #[arg(
        long,
        env = "COMFY_STOP_GRACE_SECS",
        default_value = "15",
        global = true
    )]
    pub comfy_stop_grace_secs: String,

    /// How long a supervised ComfyUI may stay alive without answering its health probe before it is killed and
    /// restarted, in seconds.
    #[arg(long, env = "COMFY_HUNG_SECS", default_value = "60", global = true)]
    pub comfy_hung_secs: String,

    /// A folder of your own workflow templates (`<name>.json` + `<name>.manifest.json`), added to the built-in ones.
    #[arg(long, env = "TEMPLATES_DIR", global = true)]
    pub templates_dir: Option<String>,

    /// How long Ignite waits for ComfyUI to answer, in seconds.
    #[arg(long, env = "IGNITE_TIMEOUT_SECS", default_value = "60", global = true)]
    pub ignite_timeout_secs: String,

    /// `base_path` for a new `extra_model_paths.yaml` (`orchestrator paths init`, the panel's "create" button).
    #[arg(long, env = "MODELS_DIR", global = true)]
    pub models_dir: Option<String>,

    /// Whether paid cloud calls (FLUX) may happen at all; `false` keeps every FLUX request a dry run.
    #[arg(long, env = "ALLOW_GENERATION", default_value = "false", global = true)]
    pub allow_generation: String,

    /// Black Forest Labs API key (sent as `x-key`, never shown).
    #[arg(long, env = "BFL_API_KEY", hide_env_values = true, global = true)]
    pub bfl_api_key: Option<String>,

    /// BFL's API: `https://api.bfl.ai` (global) or a regional one such as `https://api.eu.bfl.ai`.
    #[arg(
        long,
        env = "BFL_BASE_URL",
        default_value = "https://api.bfl.ai",
        global = true
    )]
    pub bfl_base_url: String,

    /// The most FLUX may cost per UTC day, in US dollars.
    #[arg(
        long,
        env = "FLUX_DAILY_BUDGET_USD",
        default_value = "5",
        global = true
    )]
    pub flux_daily_budget_usd: String,

    /// How long a dry run's confirmation token stays valid, in seconds.
    #[arg(
        long,
        env = "FLUX_CONFIRM_TTL_SECS",
        default_value = "600",
        global = true
    )]
    pub flux_confirm_ttl_secs: String,

    /// How long a submit to BFL may take before its outcome counts as unknown, in seconds.
    #[arg(
        long,
        env = "FLUX_SUBMIT_TIMEOUT_SECS",
        default_value = "30",
        global = true
    )]
    pub flux_submit_timeout_secs: String,

    /// The first pause between two polls of a FLUX task, in milliseconds; it grows to 5 s.
    #[arg(
        long,
        env = "FLUX_POLL_INTERVAL_MS",
        default_value = "1000",
        global = true
    )]
    pub flux_poll_interval_ms: String,

    /// How long a FLUX task may stay unfinished before its job fails, in seconds.
    #[arg(
        long,
        env = "FLUX_POLL_TIMEOUT_SECS",
        default_value = "900",
        global = true
    )]
    pub flux_poll_timeout_secs: String,

    /// v0 Platform API key (sent as `Authorization: Bearer`, never shown).
    #[arg(long, env = "V0_API_KEY", hide_env_values = true, global = true)]
    pub v0_api_key: Option<String>,

    /// The v0 Platform API; `/api/v0/chats` goes to `$V0_BASE_URL/v1/chats`.
    #[arg(
        long,
        env = "V0_BASE_URL",
        default_value = "https://api.v0.dev",
        global = true
    )]
    pub v0_base_url: String,

    /// How long v0 may take to start answering, and the longest pause inside a streamed answer, in seconds.
    #[arg(long, env = "V0_TIMEOUT_SECS", default_value = "300", global = true)]
    pub v0_timeout_secs: String,

    /// Requests per minute one client may make to `/api/flux/*` and `/api/v0/*`.
    #[arg(
        long,
        env = "PAID_RATE_LIMIT_PER_MIN",
        default_value = "30",
        global = true
    )]
    pub paid_rate_limit_per_min: String,

    /// How many of those requests may come at once before the per-minute pace applies.
    #[arg(
        long,
        env = "PAID_RATE_LIMIT_BURST",
        default_value = "10",
        global = true
    )]
    pub paid_rate_limit_burst: String,

    /// Comfy.org API key for ComfyUI's paid API nodes: put into approved prompts only, never shown; a client's own
    /// Comfy.org credentials are removed from every prompt that passes the gateway.
    #[arg(long, env = "COMFY_ORG_API_KEY", hide_env_values = true, global = true)]
    pub comfy_org_api_key: Option<String>,

    /// The price assumed for a paid ComfyUI node whose price is neither in its `price_badge` nor public, in US
    /// dollars.
    #[arg(
        long,
        env = "COMFY_PAID_NODE_MAX_USD",
        default_value = "1",
        global = true
    )]
    pub comfy_paid_node_max_usd: String,

    /// `json` or `text`; the default is `text` on a terminal and `json` elsewhere.
    #[arg(long, env = "LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
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

/// Variables that hold secrets: never handed to a process Orchestrator starts. `DATABASE_URL` may hold a password.
pub const SECRET_VARIABLES: [&str; 5] = [
    "BFL_API_KEY",
    "V0_API_KEY",
    "COMFY_ORG_API_KEY",
    "ORCHESTRATOR_TOKEN",
    "DATABASE_URL",
];

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
    /// Client connections open at once, across every serving thread.
    pub max_connections: usize,
    /// How long one event stream stays open before the client is asked to reconnect; `None`: as long as it likes.
    pub events_max: Option<Duration>,
    /// Lower-cased extra `Host` names; loopback names are always allowed.
    pub allowed_hosts: Vec<String>,
    pub token: Option<Secret>,
    pub data_dir: PathBuf,
    pub database_url: Secret,
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

impl std::error::Error for ConfigErrors {}

impl Settings {
    /// Checks every value and returns either the configuration or every problem found.
    pub fn validate(&self, stdout_is_terminal: bool) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();

        let bind = match self.bind.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problems.push(format!(
                    "ORCH_BIND (--bind) = {:?}: expected an IP address and port such as 127.0.0.1:3000",
                    self.bind
                ));
                None
            }
        };

        let editor_bind = match self.comfy_bind.trim() {
            "off" | "" => None,
            raw => match raw.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    problems.push(format!(
                        "ORCH_COMFY_BIND (--comfy-bind) = {:?}: expected an IP address and port such as \
                         127.0.0.1:3001, or off",
                        self.comfy_bind
                    ));
                    None
                }
            },
        };
        if let (Some(editor), Some(panel)) = (editor_bind, bind)
            && editor.port() != 0
            && editor.port() == panel.port()
            && (editor.ip() == panel.ip()
                || editor.ip().is_unspecified()
                || panel.ip().is_unspecified())
        {
            problems.push(format!(
                "ORCH_COMFY_BIND (--comfy-bind) = {editor}: the editor needs an address of its own, not the panel's \
                 ({panel})"
            ));
        }

        let allowed_hosts = split_list(self.allowed_hosts.as_deref().unwrap_or(""))
            .filter_map(|host| match valid_host_name(host) {
                true => Some(host.to_ascii_lowercase()),
                false => {
                    problems.push(format!(
                        "ORCH_ALLOWED_HOSTS (--allowed-hosts): {host:?} is not a host name (no scheme, port or path)"
                    ));
                    None
                }
            })
            .collect();

        let token = match self.token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) if t.len() < 16 => {
                problems.push(
                    "ORCHESTRATOR_TOKEN (--token): must be at least 16 characters long".to_string(),
                );
                None
            }
            Some(t) => Some(Secret::new(t)),
        };
        if let Some(addr) = bind
            && !addr.ip().is_loopback()
            && self
                .token
                .as_deref()
                .map(str::trim)
                .unwrap_or("")
                .is_empty()
        {
            problems.push(format!(
                "ORCHESTRATOR_TOKEN (--token): required because ORCH_BIND = {addr} is not a loopback address"
            ));
        }
        if let Some(addr) = editor_bind
            && !addr.ip().is_loopback()
            && bind.is_some_and(|panel| panel.ip().is_loopback())
            && self
                .token
                .as_deref()
                .map(str::trim)
                .unwrap_or("")
                .is_empty()
        {
            problems.push(format!(
                "ORCHESTRATOR_TOKEN (--token): required because ORCH_COMFY_BIND = {addr} is not a loopback address"
            ));
        }

        let data_dir = absolute(self.data_dir.trim());
        if self.data_dir.trim().is_empty() {
            problems.push("DATA_DIR (--data-dir): must not be empty".to_string());
        }
        let database_url = match self.database_url.as_deref().map(str::trim) {
            None | Some("") => format!("sqlite://{}", data_dir.join("orchestrator.db").display()),
            Some(url) if url.starts_with("sqlite:") => url.to_string(),
            Some(url) => {
                let scheme = url.split(':').next().unwrap_or_default();
                problems.push(format!(
                    "DATABASE_URL (--database-url): the {scheme:?} store is not supported yet; use sqlite://PATH"
                ));
                String::new()
            }
        };

        let workers = match self.workers.trim() {
            "" | "auto" => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            raw => match raw.parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => n,
                _ => {
                    problems.push(format!(
                        "ORCH_WORKERS (--workers) = {raw:?}: expected \"auto\" or a whole number from 1 to 256"
                    ));
                    1
                }
            },
        };

        let backends: Vec<ComfyBackend> = split_list(&self.comfy_url)
            .filter_map(|url| match parse_backend(url) {
                Ok(backend) => Some(backend),
                Err(why) => {
                    problems.push(format!("COMFY_URL (--comfy-url): {url:?} {why}"));
                    None
                }
            })
            .collect();
        if backends.is_empty() && !problems.iter().any(|p| p.starts_with("COMFY_URL")) {
            problems
                .push("COMFY_URL (--comfy-url): at least one ComfyUI URL is required".to_string());
        }

        let events_max = match self.events_max_secs.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(secs) if secs <= 86_400 => Some(Duration::from_secs(secs)),
            _ => {
                problems.push(format!(
                    "ORCH_EVENTS_MAX_SECS (--events-max-secs) = {:?}: expected a whole number from 0 (no limit) to \
                     86400",
                    self.events_max_secs
                ));
                None
            }
        };
        let mut positive = |name: &str, flag: &str, raw: &str, max: u64| -> u64 {
            match raw.trim().parse::<u64>() {
                Ok(n) if n >= 1 && n <= max => n,
                _ => {
                    problems.push(format!(
                        "{name} ({flag}) = {raw:?}: expected a whole number from 1 to {max}"
                    ));
                    1
                }
            }
        };
        let connect_ms = positive(
            "COMFY_CONNECT_TIMEOUT_MS",
            "--comfy-connect-timeout-ms",
            &self.comfy_connect_timeout_ms,
            600_000,
        );
        let read_secs = positive(
            "COMFY_READ_TIMEOUT_SECS",
            "--comfy-read-timeout-secs",
            &self.comfy_read_timeout_secs,
            86_400,
        );
        let write_secs = positive(
            "COMFY_WRITE_TIMEOUT_SECS",
            "--comfy-write-timeout-secs",
            &self.comfy_write_timeout_secs,
            86_400,
        );
        let idle_secs = positive(
            "COMFY_IDLE_TIMEOUT_SECS",
            "--comfy-idle-timeout-secs",
            &self.comfy_idle_timeout_secs,
            86_400,
        );
        let max_body_mb = positive("MAX_BODY_MB", "--max-body-mb", &self.max_body_mb, 1 << 20);
        let header_read_secs = positive(
            "ORCH_HEADER_READ_TIMEOUT_SECS",
            "--header-read-timeout-secs",
            &self.header_read_timeout_secs,
            3600,
        );
        let max_connections = positive(
            "ORCH_MAX_CONNECTIONS",
            "--max-connections",
            &self.max_connections,
            1_000_000,
        );
        let restart_ms = positive(
            "COMFY_RESTART_DELAY_MS",
            "--comfy-restart-delay-ms",
            &self.comfy_restart_delay_ms,
            60_000,
        );
        let grace_secs = positive(
            "COMFY_STOP_GRACE_SECS",
            "--comfy-stop-grace-secs",
            &self.comfy_stop_grace_secs,
            600,
        );
        let hung_secs = positive(
            "COMFY_HUNG_SECS",
            "--comfy-hung-secs",
            &self.comfy_hung_secs,
            86_400,
        );
        let ignite_secs = positive(
            "IGNITE_TIMEOUT_SECS",
            "--ignite-timeout-secs",
            &self.ignite_timeout_secs,
            3600,
        );

        let confirm_ttl_secs = positive(
            "FLUX_CONFIRM_TTL_SECS",
            "--flux-confirm-ttl-secs",
            &self.flux_confirm_ttl_secs,
            86_400,
        );
        let submit_timeout_secs = positive(
            "FLUX_SUBMIT_TIMEOUT_SECS",
            "--flux-submit-timeout-secs",
            &self.flux_submit_timeout_secs,
            600,
        );
        let poll_interval_ms = positive(
            "FLUX_POLL_INTERVAL_MS",
            "--flux-poll-interval-ms",
            &self.flux_poll_interval_ms,
            60_000,
        );
        let poll_timeout_secs = positive(
            "FLUX_POLL_TIMEOUT_SECS",
            "--flux-poll-timeout-secs",
            &self.flux_poll_timeout_secs,
            86_400,
        );
        let v0_timeout_secs = positive(
            "V0_TIMEOUT_SECS",
            "--v0-timeout-secs",
            &self.v0_timeout_secs,
            86_400,
        );
        let rate_per_min = positive(
            "PAID_RATE_LIMIT_PER_MIN",
            "--paid-rate-limit-per-min",
            &self.paid_rate_limit_per_min,
            1_000_000,
        );
        let rate_burst = positive(
            "PAID_RATE_LIMIT_BURST",
            "--paid-rate-limit-burst",
            &self.paid_rate_limit_burst,
            1_000_000,
        );

        let allow_generation = match self.allow_generation.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" | "" => false,
            other => {
                problems.push(format!(
                    "ALLOW_GENERATION (--allow-generation) = {other:?}: expected true or false"
                ));
                false
            }
        };
        let daily_budget_micros = match self.flux_daily_budget_usd.trim().parse::<f64>() {
            Ok(usd) if usd.is_finite() && (0.0..=100_000.0).contains(&usd) => {
                (usd * 1_000_000.0).round() as i64
            }
            _ => {
                problems.push(format!(
                    "FLUX_DAILY_BUDGET_USD (--flux-daily-budget-usd) = {:?}: expected dollars from 0 to 100000, such as 5 or 2.50",
                    self.flux_daily_budget_usd
                ));
                0
            }
        };
        let paid_node_max_micros = match self.comfy_paid_node_max_usd.trim().parse::<f64>() {
            Ok(usd) if usd.is_finite() && (0.0..=100_000.0).contains(&usd) => {
                (usd * 1_000_000.0).round() as i64
            }
            _ => {
                problems.push(format!(
                    "COMFY_PAID_NODE_MAX_USD (--comfy-paid-node-max-usd) = {:?}: expected dollars from 0 to 100000, such as 1 or 0.50",
                    self.comfy_paid_node_max_usd
                ));
                0
            }
        };
        let bfl_base_url = match parse_api_base(&self.bfl_base_url) {
            Ok(url) => url,
            Err(why) => {
                problems.push(format!(
                    "BFL_BASE_URL (--bfl-base-url) = {:?}: {why}",
                    self.bfl_base_url
                ));
                String::new()
            }
        };
        let v0_base_url = match parse_api_base(&self.v0_base_url) {
            // The version is part of the forwarded path (`/api/v0/v2/…` reaches v2), so a base given with
            // `/v1` is taken without it.
            Ok(url) => url.strip_suffix("/v1").map(str::to_owned).unwrap_or(url),
            Err(why) => {
                problems.push(format!(
                    "V0_BASE_URL (--v0-base-url) = {:?}: {why}",
                    self.v0_base_url
                ));
                String::new()
            }
        };
        let optional_secret = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(Secret::new)
        };

        let service_backend = match self
            .service_backend
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") if cfg!(windows) => ServiceBackend::Windows,
            None | Some("") => ServiceBackend::Supervised,
            Some("windows") => ServiceBackend::Windows,
            Some("systemd") => ServiceBackend::Systemd,
            Some("supervised") => ServiceBackend::Supervised,
            Some("external") => ServiceBackend::External,
            Some(other) => {
                problems.push(format!(
                    "SERVICE_BACKEND (--service-backend) = {other:?}: expected windows, systemd, supervised or external"
                ));
                ServiceBackend::External
            }
        };
        let comfy_dir = self
            .comfy_dir
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(absolute);
        let command = match self
            .comfy_command
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            None => None,
            Some(raw) => match serde_json::from_str::<Vec<String>>(raw) {
                Ok(words) if !words.is_empty() && !words[0].trim().is_empty() => {
                    let mut words = words.into_iter();
                    let program = words.next().expect("checked non-empty");
                    Some((program, words.collect()))
                }
                _ => {
                    problems.push(
                        "COMFY_COMMAND (--comfy-command): expected a JSON array of strings, program first, such as \
                         [\"python\", \"main.py\", \"--port\", \"8188\"]"
                            .to_string(),
                    );
                    None
                }
            },
        };
        let service_name = self.service_name.trim().to_owned();
        if service_name.is_empty()
            || !service_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            problems.push(format!(
                "SERVICE_NAME (--service-name) = {:?}: use letters, digits, '-', '_' and '.' only",
                self.service_name
            ));
        }
        let log_file = match self
            .comfy_log_file
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            Some(path) => absolute(path),
            None => data_dir.join("logs").join("comfyui.log"),
        };

        let log_format = match self
            .log_format
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
        {
            None => {
                if stdout_is_terminal {
                    LogFormat::Text
                } else {
                    LogFormat::Json
                }
            }
            Some(ref f) if f == "json" => LogFormat::Json,
            Some(ref f) if f == "text" || f == "pretty" => LogFormat::Text,
            Some(other) => {
                problems.push(format!(
                    "LOG_FORMAT (--log-format) = {other:?}: expected \"json\" or \"text\""
                ));
                LogFormat::Json
            }
        };

        match (problems.is_empty(), bind) {
            (true, Some(bind)) => Ok(Config {
                bind,
                editor_bind,
                workers,
                header_read_timeout: Duration::from_secs(header_read_secs),
                max_connections: max_connections as usize,
                events_max,
                allowed_hosts,
                token,
                data_dir,
                database_url: Secret::new(database_url),
                comfy: ComfyConfig {
                    backends,
                    connect_timeout: Duration::from_millis(connect_ms),
                    read_timeout: Duration::from_secs(read_secs),
                    write_timeout: Duration::from_secs(write_secs),
                    idle_timeout: Duration::from_secs(idle_secs),
                    max_body_bytes: max_body_mb * 1024 * 1024,
                },
                templates_dir: self
                    .templates_dir
                    .as_deref()
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from),
                service: ServiceConfig {
                    backend: service_backend,
                    name: service_name,
                    comfy_dir,
                    command,
                    log_file,
                    nssm: self.nssm_path.trim().to_owned(),
                    ignite_timeout: Duration::from_secs(ignite_secs),
                    restart_delay: Duration::from_millis(restart_ms),
                    stop_grace: Duration::from_secs(grace_secs),
                    hung_after: Duration::from_secs(hung_secs),
                },
                models_dir: self
                    .models_dir
                    .as_deref()
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(absolute),
                flux: FluxConfig {
                    allow_generation,
                    api_key: optional_secret(&self.bfl_api_key),
                    base_url: bfl_base_url,
                    daily_budget_micros,
                    confirm_ttl: Duration::from_secs(confirm_ttl_secs),
                    submit_timeout: Duration::from_secs(submit_timeout_secs),
                    poll_interval: Duration::from_millis(poll_interval_ms),
                    poll_timeout: Duration::from_secs(poll_timeout_secs),
                },
                comfy_org: ComfyOrgConfig {
                    api_key: optional_secret(&self.comfy_org_api_key),
                    paid_node_max_micros,
                },
                v0: V0Config {
                    api_key: optional_secret(&self.v0_api_key),
                    base_url: v0_base_url,
                    timeout: Duration::from_secs(v0_timeout_secs),
                },
                paid_rate_limit: RateLimitConfig {
                    per_minute: u32::try_from(rate_per_min).unwrap_or(u32::MAX),
                    burst: u32::try_from(rate_burst).unwrap_or(u32::MAX),
                },
                log_format,
                sources: Default::default(),
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }
}

/// An HTTP(S) API's base URL, checked and without a trailing slash, query or fragment.
fn parse_api_base(raw: &str) -> Result<String, &'static str> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|_| "expected a URL such as https://api.example.com")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("expected an http:// or https:// URL");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host");
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("expected no query, fragment or user name");
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

impl Config {
    /// Every setting as the settings page shows it: variable name and effective value, secrets masked.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        let secret = |value: &Option<Secret>| match value {
            Some(_) => "***".to_owned(),
            None => String::new(),
        };
        let path = |value: &Option<PathBuf>| {
            value
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let secs = |d: Duration| d.as_secs().to_string();
        let service = &self.service;
        let comfy = &self.comfy;
        let flux = &self.flux;
        vec![
            ("ORCH_BIND", self.bind.to_string()),
            (
                "ORCH_COMFY_BIND",
                self.editor_bind
                    .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            ),
            ("ORCH_WORKERS", self.workers.to_string()),
            (
                "ORCH_HEADER_READ_TIMEOUT_SECS",
                secs(self.header_read_timeout),
            ),
            ("ORCH_MAX_CONNECTIONS", self.max_connections.to_string()),
            (
                "ORCH_EVENTS_MAX_SECS",
                self.events_max.map_or(0, |d| d.as_secs()).to_string(),
            ),
            ("ORCH_ALLOWED_HOSTS", self.allowed_hosts.join(",")),
            ("ORCHESTRATOR_TOKEN", secret(&self.token)),
            ("DATA_DIR", self.data_dir.display().to_string()),
            ("DATABASE_URL", "***".to_owned()),
            (
                "COMFY_URL",
                comfy
                    .backends
                    .iter()
                    .map(ComfyBackend::origin)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "COMFY_CONNECT_TIMEOUT_MS",
                comfy.connect_timeout.as_millis().to_string(),
            ),
            ("COMFY_READ_TIMEOUT_SECS", secs(comfy.read_timeout)),
            ("COMFY_WRITE_TIMEOUT_SECS", secs(comfy.write_timeout)),
            ("COMFY_IDLE_TIMEOUT_SECS", secs(comfy.idle_timeout)),
            (
                "MAX_BODY_MB",
                (comfy.max_body_bytes / (1024 * 1024)).to_string(),
            ),
            ("COMFY_DIR", path(&service.comfy_dir)),
            (
                "COMFY_COMMAND",
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
            ("COMFY_LOG_FILE", service.log_file.display().to_string()),
            (
                "SERVICE_BACKEND",
                match service.backend {
                    ServiceBackend::Windows => "windows",
                    ServiceBackend::Systemd => "systemd",
                    ServiceBackend::Supervised => "supervised",
                    ServiceBackend::External => "external",
                }
                .to_owned(),
            ),
            ("SERVICE_NAME", service.name.clone()),
            ("NSSM_PATH", service.nssm.clone()),
            (
                "COMFY_RESTART_DELAY_MS",
                service.restart_delay.as_millis().to_string(),
            ),
            ("COMFY_STOP_GRACE_SECS", secs(service.stop_grace)),
            ("IGNITE_TIMEOUT_SECS", secs(service.ignite_timeout)),
            ("COMFY_HUNG_SECS", secs(service.hung_after)),
            ("TEMPLATES_DIR", path(&self.templates_dir)),
            ("MODELS_DIR", path(&self.models_dir)),
            ("ALLOW_GENERATION", flux.allow_generation.to_string()),
            ("BFL_API_KEY", secret(&flux.api_key)),
            ("BFL_BASE_URL", flux.base_url.clone()),
            (
                "FLUX_DAILY_BUDGET_USD",
                format!("{:.2}", flux.daily_budget_micros as f64 / 1_000_000.0),
            ),
            ("FLUX_CONFIRM_TTL_SECS", secs(flux.confirm_ttl)),
            ("FLUX_SUBMIT_TIMEOUT_SECS", secs(flux.submit_timeout)),
            (
                "FLUX_POLL_INTERVAL_MS",
                flux.poll_interval.as_millis().to_string(),
            ),
            ("FLUX_POLL_TIMEOUT_SECS", secs(flux.poll_timeout)),
            ("COMFY_ORG_API_KEY", secret(&self.comfy_org.api_key)),
            (
                "COMFY_PAID_NODE_MAX_USD",
                format!(
                    "{:.2}",
                    self.comfy_org.paid_node_max_micros as f64 / 1_000_000.0
                ),
            ),
            ("V0_API_KEY", secret(&self.v0.api_key)),
            ("V0_BASE_URL", self.v0.base_url.clone()),
            ("V0_TIMEOUT_SECS", secs(self.v0.timeout)),
            (
                "PAID_RATE_LIMIT_PER_MIN",
                self.paid_rate_limit.per_minute.to_string(),
            ),
            (
                "PAID_RATE_LIMIT_BURST",
                self.paid_rate_limit.burst.to_string(),
            ),
            (
                "LOG_FORMAT",
                match self.log_format {
                    LogFormat::Json => "json",
                    LogFormat::Text => "text",
                }
                .to_owned(),
            ),
        ]
    }

    /// The first ComfyUI backend, the one the gateway talks to.
    pub fn primary_comfy(&self) -> &ComfyBackend {
        &self.comfy.backends[0]
    }

    /// How to start ComfyUI: `COMFY_COMMAND` when given, else the default for `COMFY_DIR`; `None` when neither
    /// is set.
    pub fn launch_spec(&self) -> Option<crate::service::LaunchSpec> {
        let service = &self.service;
        let (program, args) = match (&service.command, &service.comfy_dir) {
            (Some((program, args)), _) => (program.clone(), args.clone()),
            (None, Some(dir)) => {
                let comfy = self.primary_comfy();
                let host = comfy
                    .authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                crate::service::default_command(dir, host, comfy.authority.port_u16().unwrap_or(80))
            }
            (None, None) => return None,
        };
        let env_remove = SECRET_VARIABLES
            .iter()
            .map(|name| (*name).to_owned())
            .chain(
                self.sources
                    .iter()
                    .filter(|(_, source)| **source == "dotenv")
                    .map(|(name, _)| name.clone()),
            )
            .collect();
        Some(crate::service::LaunchSpec {
            service_name: service.name.clone(),
            program,
            args,
            working_dir: service.comfy_dir.clone(),
            log_file: service.log_file.clone(),
            env_remove,
        })
    }

    /// Whether the server listens on a loopback address only.
    pub fn is_loopback(&self) -> bool {
        self.bind.ip().is_loopback()
    }
}

fn split_list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn valid_host_name(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn parse_backend(raw: &str) -> Result<ComfyBackend, &'static str> {
    let uri: http::Uri = raw.parse().map_err(|_| "is not a URL")?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or("needs a scheme: http://HOST:PORT")?;
    if scheme != Scheme::HTTP {
        return Err("must use http:// (ComfyUI over TLS is not supported yet)");
    }
    let authority = uri.authority().cloned().ok_or("needs a host")?;
    if authority.as_str().contains('@') {
        return Err("must not carry user information");
    }
    if authority.host().is_empty() {
        return Err("needs a host");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must be a base URL without a path or query");
    }
    Ok(ComfyBackend { scheme, authority })
}

/// `path` made absolute against the working directory Orchestrator started in. Every folder it hands to another
/// program (NSSM, a systemd unit, the supervised child's working directory) must be: NSSM opens `AppStdout` from
/// its own working directory, so `./data\logs\comfyui.log` there is another file than the one the log viewer reads.
fn absolute(path: &str) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        settings: Settings,
    }

    fn settings(args: &[&str]) -> Settings {
        let mut argv = vec!["orchestrator"];
        argv.extend_from_slice(args);
        TestCli::try_parse_from(argv).expect("flags parse").settings
    }

    #[test]
    fn defaults_are_valid_and_loopback() {
        let config = settings(&[]).validate(false).expect("defaults are valid");
        assert!(config.is_loopback());
        assert_eq!(config.bind.port(), 3000);
        assert_eq!(config.primary_comfy().origin(), "http://127.0.0.1:8188");
        assert_eq!(config.comfy.max_body_bytes, 100 * 1024 * 1024);
        assert_eq!(config.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.max_connections, 1024);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let errors = settings(&[
            "--bind",
            "nonsense",
            "--comfy-url",
            "ftp://x:1,http://h:1/path",
            "--comfy-read-timeout-secs",
            "0",
            "--max-body-mb",
            "lots",
            "--log-format",
            "xml",
            "--allowed-hosts",
            "http://evil/",
            "--database-url",
            "mysql://u:p@h/db",
        ])
        .validate(false)
        .expect_err("invalid");
        let text = errors.to_string();
        for needle in [
            "ORCH_BIND",
            "ftp://x:1",
            "http://h:1/path",
            "COMFY_READ_TIMEOUT_SECS",
            "MAX_BODY_MB",
            "LOG_FORMAT",
            "ORCH_ALLOWED_HOSTS",
            "DATABASE_URL",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert_eq!(errors.0.len(), 8, "{text}");
        assert!(!text.contains("u:p"), "a store password leaked: {text}");
    }

    #[test]
    fn non_loopback_bind_requires_a_token() {
        let errors = settings(&["--bind", "0.0.0.0:3000"])
            .validate(false)
            .expect_err("token needed");
        assert!(errors.to_string().contains("ORCHESTRATOR_TOKEN"));
        let config = settings(&["--bind", "0.0.0.0:3000", "--token", "0123456789abcdef0123"])
            .validate(false)
            .expect("valid with a token");
        assert!(!config.is_loopback());
    }

    #[test]
    fn secrets_never_print() {
        let config = settings(&["--token", "super-secret-token-value"])
            .validate(false)
            .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("super-secret-token-value"), "{debug}");
        assert!(debug.contains("***"));
    }
}
