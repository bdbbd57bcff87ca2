//! The command line and environment as clap reads them: every value a string, checked by [`super::Settings::validate`].

use clap::Args;

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

    /// Longest silence inside a request body, in seconds, before the request is answered `408 body_timeout` and
    /// its connection closed.
    #[arg(long, env = "ORCH_BODY_IDLE_SECS", default_value = "30", global = true)]
    pub body_idle_secs: String,

    /// Longest time a request body may take in all, in seconds (a 100 MiB upload at 2 Mbit/s takes about 7
    /// minutes); a body still arriving then is answered `408 body_timeout`.
    #[arg(
        long,
        env = "ORCH_BODY_TIMEOUT_SECS",
        default_value = "600",
        global = true
    )]
    pub body_timeout_secs: String,

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

    /// Events an event stream holds for a client that reads slower than they come; past that, the client is
    /// dropped (it reconnects with `Last-Event-ID` and misses nothing) rather than held in memory.
    #[arg(
        long,
        env = "ORCH_EVENTS_CLIENT_BUFFER",
        default_value = "1024",
        global = true
    )]
    pub events_client_buffer: String,

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

    /// This Orchestrator's name among the instances of a fleet on one PostgreSQL (its claims on jobs, the
    /// instances list); defaults to the host name and a hash of the data folder, so a restart keeps it.
    #[arg(long, env = "ORCH_INSTANCE_ID", global = true)]
    pub instance_id: Option<String>,

    /// Where the fleet's other instances reach this one (they stream the outputs it holds from there); defaults to
    /// `http://` and the address it listens on.
    #[arg(long, env = "ORCH_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// How long an instance's claim on a job lasts unless it renews it, in seconds; it renews a third of the way in,
    /// and another instance takes over a job whose claim ran out (its instance died).
    #[arg(long, env = "FLEET_LEASE_SECS", default_value = "30", global = true)]
    pub fleet_lease_secs: String,

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

    /// How long ComfyUI's WebSocket may say nothing while jobs run there before its queue is asked which of them
    /// ended (ComfyUI can silently stop sending a socket its events), in seconds.
    #[arg(long, env = "COMFY_SILENCE_SECS", default_value = "15", global = true)]
    pub comfy_silence_secs: String,

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

    /// Comfy.org API key for ComfyUI's paid API nodes: held by the Comfy.org egress, which swaps it for the key of
    /// each approved prompt's job; never given to ComfyUI, never shown. A client's own Comfy.org credentials are
    /// removed from every prompt that passes the gateway.
    #[arg(long, env = "COMFY_ORG_API_KEY", hide_env_values = true, global = true)]
    pub comfy_org_api_key: Option<String>,

    /// The Comfy.org API that ComfyUI's paid API nodes reach through Orchestrator's egress (`/api/comfy-org/…`,
    /// which ComfyUI is given as `--comfy-api-base`): every call is priced, counted against its job's confirmed
    /// amount and forwarded here with `COMFY_ORG_API_KEY`.
    #[arg(
        long,
        env = "COMFY_ORG_API_BASE",
        default_value = "https://api.comfy.org",
        global = true
    )]
    pub comfy_org_api_base: String,

    /// The price assumed for a paid ComfyUI node whose price is neither in its `price_badge` nor public, in US
    /// dollars.
    #[arg(
        long,
        env = "COMFY_PAID_NODE_MAX_USD",
        default_value = "1",
        global = true
    )]
    pub comfy_paid_node_max_usd: String,

    /// Where word of every job that ends is POSTed (JSON, signed); unset: no webhooks.
    #[arg(long, env = "JOB_WEBHOOK_URL", hide_env_values = true, global = true)]
    pub job_webhook_url: Option<String>,

    /// The key of the deliveries' HMAC-SHA256 signature (required with JOB_WEBHOOK_URL); never shown.
    #[arg(
        long,
        env = "JOB_WEBHOOK_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub job_webhook_secret: Option<String>,

    /// How long after a failed delivery it is tried again, in milliseconds; twice as long after each further
    /// failure, at most an hour, 20 tries in all.
    #[arg(
        long,
        env = "JOB_WEBHOOK_RETRY_MS",
        default_value = "1000",
        global = true
    )]
    pub job_webhook_retry_ms: String,

    /// `json` or `text`; the default is `text` on a terminal and `json` elsewhere.
    #[arg(long, env = "LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
}

impl Settings {
    /// Every setting at its default, the environment not read: where tests and tools start from.
    pub fn defaults() -> Self {
        use clap::FromArgMatches;
        let command =
            Self::augment_args(clap::Command::new("orchestrator")).mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(["orchestrator"])
            .expect("every setting has a default or is optional");
        Self::from_arg_matches(&matches).expect("the defaults are read back")
    }

    /// How a message names a setting: its variable and flag, `ORCH_BIND (--bind)`, as the clap definition of the
    /// field (`bind`) has them, so no message names a variable or flag that does not exist.
    pub fn name_of(field: &str) -> String {
        let (variable, flag) = Self::names(field);
        format!("{variable} (--{flag})")
    }

    /// The variables that hold secrets: those whose definition hides their value (`hide_env_values`). They are
    /// never shown, and never handed to a process Orchestrator starts (`DATABASE_URL` may hold a password).
    pub fn secret_variables() -> &'static [&'static str] {
        use std::sync::LazyLock;
        static SECRETS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
            Settings::augment_args(clap::Command::new("orchestrator"))
                .get_arguments()
                .filter(|arg| arg.is_hide_env_values_set())
                .map(|arg| Settings::variable_of(arg.get_id().as_str()))
                .collect()
        });
        &SECRETS
    }

    /// The environment variable of a field, from its clap definition.
    pub fn variable_of(field: &str) -> &'static str {
        Self::names(field).0
    }

    fn names(field: &str) -> (&'static str, &'static str) {
        use std::collections::HashMap;
        use std::sync::LazyLock;
        static NAMES: LazyLock<HashMap<String, (String, String)>> = LazyLock::new(|| {
            let command = Settings::augment_args(clap::Command::new("orchestrator"));
            command
                .get_arguments()
                .filter_map(|arg| {
                    let variable = arg.get_env()?.to_str()?.to_owned();
                    let flag = arg.get_long()?.to_owned();
                    Some((arg.get_id().to_string(), (variable, flag)))
                })
                .collect()
        });
        let (variable, flag) = NAMES
            .get(field)
            .unwrap_or_else(|| panic!("no setting {field:?}"));
        (variable, flag)
    }
}
