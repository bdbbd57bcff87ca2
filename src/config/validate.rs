//! [`Settings::validate`]: every value checked, every problem collected, then the [`Config`].
//!
//! One method per group of settings, called in the order their problems are reported; each pushes onto the one
//! list. The paid providers' settings are in [`providers`], the service layer's in [`service`], the fleet's in
//! `config::fleet`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::uri::Scheme;

use super::{
    ComfyBackend, ComfyConfig, Config, ConfigErrors, LogFormat, RateLimitConfig, Secret, Settings,
};

mod providers;
mod service;

impl std::error::Error for ConfigErrors {}

/// The bounded whole numbers (timeouts, sizes, rates) as read, for the groups that build on them.
struct Limits {
    connect_ms: u64,
    read_secs: u64,
    write_secs: u64,
    idle_secs: u64,
    silence_secs: u64,
    max_body_mb: u64,
    header_read_secs: u64,
    body_idle_secs: u64,
    body_timeout_secs: u64,
    max_connections: u64,
    events_client_buffer: u64,
    lease_secs: u64,
    restart_ms: u64,
    grace_secs: u64,
    hung_secs: u64,
    ignite_secs: u64,
    confirm_ttl_secs: u64,
    submit_timeout_secs: u64,
    poll_interval_ms: u64,
    poll_timeout_secs: u64,
    v0_timeout_secs: u64,
    rate_per_min: u64,
    rate_burst: u64,
}

impl Settings {
    /// Checks every value and returns either the configuration or every problem found.
    pub fn validate(&self, stdout_is_terminal: bool) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();
        let (bind, editor_bind) = self.addresses(&mut problems);
        let (allowed_hosts, token) = self.access(bind, editor_bind, &mut problems);
        let (data_dir, database_url) = self.storage(&mut problems);
        let workers = self.worker_count(&mut problems);
        let backends = self.backends(&mut problems);
        let events_max = self.events_limit(&mut problems);
        let limits = self.limits(&mut problems);
        let webhook = super::webhook::settings(
            self.job_webhook_url.as_deref(),
            self.job_webhook_secret.as_deref(),
            &self.job_webhook_retry_ms,
            &mut problems,
        );
        let fleet = super::fleet::settings(
            self.instance_id.as_deref(),
            self.public_url.as_deref(),
            Duration::from_secs(limits.lease_secs),
            (&data_dir, self.bind.trim()),
            &mut problems,
        );
        super::fleet::require_public_url(
            &fleet,
            &database_url,
            bind,
            self.bind.trim(),
            &mut problems,
        );
        let (flux, comfy_org, v0) = self.providers(&limits, &mut problems);
        let service = self.service(&data_dir, &limits, &mut problems);
        let log_format = self.log_format_for(stdout_is_terminal, &mut problems);

        match (problems.is_empty(), bind) {
            (true, Some(bind)) => Ok(Config {
                bind,
                editor_bind,
                workers,
                header_read_timeout: Duration::from_secs(limits.header_read_secs),
                body_idle_timeout: Duration::from_secs(limits.body_idle_secs),
                body_timeout: Duration::from_secs(limits.body_timeout_secs),
                max_connections: limits.max_connections as usize,
                events_max,
                events_client_buffer: limits.events_client_buffer as usize,
                allowed_hosts,
                token,
                data_dir,
                database_url: Secret::new(database_url),
                fleet,
                comfy: comfy_config(backends, &limits),
                templates_dir: self
                    .templates_dir
                    .as_deref()
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from),
                service,
                models_dir: self
                    .models_dir
                    .as_deref()
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(absolute),
                flux,
                comfy_org,
                v0,
                paid_rate_limit: RateLimitConfig {
                    per_minute: u32::try_from(limits.rate_per_min).unwrap_or(u32::MAX),
                    burst: u32::try_from(limits.rate_burst).unwrap_or(u32::MAX),
                },
                webhook,
                log_format,
                sources: Default::default(),
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }

    /// `bind` and `comfy_bind`, and whether they clash.
    fn addresses(&self, problems: &mut Vec<String>) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let bind = match self.bind.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problems.push(format!(
                    "{} = {:?}: expected an IP address and port such as 127.0.0.1:3000",
                    Settings::name_of("bind"),
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
                        "{} = {:?}: expected an IP address and port such as \
                         127.0.0.1:3001, or off",
                        Settings::name_of("comfy_bind"),
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
                "{} = {editor}: the editor needs an address of its own, not the panel's \
                 ({panel})",
                Settings::name_of("comfy_bind")
            ));
        }
        (bind, editor_bind)
    }

    /// `allowed_hosts` and `token`, and the token an address other than loopback needs.
    fn access(
        &self,
        bind: Option<SocketAddr>,
        editor_bind: Option<SocketAddr>,
        problems: &mut Vec<String>,
    ) -> (Vec<String>, Option<Secret>) {
        let allowed_hosts: Vec<String> = split_list(self.allowed_hosts.as_deref().unwrap_or(""))
            .filter_map(|host| match valid_host_name(host) {
                true => Some(host.to_ascii_lowercase()),
                false => {
                    problems.push(format!(
                        "{}: {host:?} is not a host name (no scheme, port or path)",
                        Settings::name_of("allowed_hosts")
                    ));
                    None
                }
            })
            .collect();

        let token = match self.token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) if t.len() < 16 => {
                problems.push(format!(
                    "{}: must be at least 16 characters long",
                    Settings::name_of("token")
                ));
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
                "{}: required because ORCH_BIND = {addr} is not a loopback address",
                Settings::name_of("token")
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
                "{}: required because ORCH_COMFY_BIND = {addr} is not a loopback address",
                Settings::name_of("token")
            ));
        }
        (allowed_hosts, token)
    }

    /// `data_dir` and `database_url`, which defaults to a SQLite file in it.
    fn storage(&self, problems: &mut Vec<String>) -> (PathBuf, String) {
        let data_dir = absolute(self.data_dir.trim());
        if self.data_dir.trim().is_empty() {
            problems.push(format!(
                "{}: must not be empty",
                Settings::name_of("data_dir")
            ));
        }
        let database_url = match self.database_url.as_deref().map(str::trim) {
            None | Some("") => format!("sqlite://{}", data_dir.join("orchestrator.db").display()),
            Some(url) if crate::config::Engine::of_url(url).is_some() => url.to_string(),
            Some(url) => {
                let scheme = url.split(':').next().unwrap_or_default();
                problems.push(format!(
                    "{}: the {scheme:?} store is not supported; use sqlite://PATH or postgres://USER@HOST/DATABASE",
                    Settings::name_of("database_url")
                ));
                String::new()
            }
        };
        (data_dir, database_url)
    }

    /// `workers`: serving threads, by default one per core.
    fn worker_count(&self, problems: &mut Vec<String>) -> usize {
        match self.workers.trim() {
            "" | "auto" => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            raw => match raw.parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => n,
                _ => {
                    problems.push(format!(
                        "{} = {raw:?}: expected \"auto\" or a whole number from 1 to 256",
                        Settings::name_of("workers")
                    ));
                    1
                }
            },
        }
    }

    /// `comfy_url`: at least one ComfyUI backend.
    fn backends(&self, problems: &mut Vec<String>) -> Vec<ComfyBackend> {
        let backends: Vec<ComfyBackend> = split_list(&self.comfy_url)
            .filter_map(|url| match parse_backend(url) {
                Ok(backend) => Some(backend),
                Err(why) => {
                    problems.push(format!("{}: {url:?} {why}", Settings::name_of("comfy_url")));
                    None
                }
            })
            .collect();
        if backends.is_empty() && !problems.iter().any(|p| p.starts_with("COMFY_URL")) {
            problems.push(format!(
                "{}: at least one ComfyUI URL is required",
                Settings::name_of("comfy_url")
            ));
        }
        backends
    }

    /// `events_max_secs`: how long one event stream stays open; `None` for no limit.
    fn events_limit(&self, problems: &mut Vec<String>) -> Option<Duration> {
        match self.events_max_secs.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(secs) if secs <= 86_400 => Some(Duration::from_secs(secs)),
            _ => {
                problems.push(format!(
                    "{} = {:?}: expected a whole number from 0 (no limit) to \
                     86400",
                    Settings::name_of("events_max_secs"),
                    self.events_max_secs
                ));
                None
            }
        }
    }

    /// Every bounded whole number. A struct's fields are evaluated in the order written, which is the order their
    /// problems are reported in.
    fn limits(&self, problems: &mut Vec<String>) -> Limits {
        let mut positive_number = |field: &str, raw: &str, max: u64| -> u64 {
            match raw.trim().parse::<u64>() {
                Ok(n) if n >= 1 && n <= max => n,
                _ => {
                    problems.push(format!(
                        "{} = {raw:?}: expected a whole number from 1 to {max}",
                        Settings::name_of(field)
                    ));
                    1
                }
            }
        };
        // The field's name once: its variable and flag in the message come from its clap definition.
        macro_rules! positive {
            ($field:ident, $max:expr) => {
                positive_number(stringify!($field), &self.$field, $max)
            };
        }
        Limits {
            connect_ms: positive!(comfy_connect_timeout_ms, 600_000),
            read_secs: positive!(comfy_read_timeout_secs, 86_400),
            write_secs: positive!(comfy_write_timeout_secs, 86_400),
            idle_secs: positive!(comfy_idle_timeout_secs, 86_400),
            silence_secs: positive!(comfy_silence_secs, 3600),
            max_body_mb: positive!(max_body_mb, 1 << 20),
            header_read_secs: positive!(header_read_timeout_secs, 3600),
            body_idle_secs: positive!(body_idle_secs, 3600),
            body_timeout_secs: positive!(body_timeout_secs, 86_400),
            max_connections: positive!(max_connections, 1_000_000),
            events_client_buffer: positive!(events_client_buffer, 1_000_000),
            lease_secs: positive!(fleet_lease_secs, 3600),
            restart_ms: positive!(comfy_restart_delay_ms, 60_000),
            grace_secs: positive!(comfy_stop_grace_secs, 600),
            hung_secs: positive!(comfy_hung_secs, 86_400),
            ignite_secs: positive!(ignite_timeout_secs, 3600),
            confirm_ttl_secs: positive!(flux_confirm_ttl_secs, 86_400),
            submit_timeout_secs: positive!(flux_submit_timeout_secs, 600),
            poll_interval_ms: positive!(flux_poll_interval_ms, 60_000),
            poll_timeout_secs: positive!(flux_poll_timeout_secs, 86_400),
            v0_timeout_secs: positive!(v0_timeout_secs, 86_400),
            rate_per_min: positive!(paid_rate_limit_per_min, 1_000_000),
            rate_burst: positive!(paid_rate_limit_burst, 1_000_000),
        }
    }

    /// `log_format`: by default text on a terminal and JSON elsewhere.
    fn log_format_for(&self, stdout_is_terminal: bool, problems: &mut Vec<String>) -> LogFormat {
        match self
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
                    "{} = {other:?}: expected \"json\" or \"text\"",
                    Settings::name_of("log_format")
                ));
                LogFormat::Json
            }
        }
    }
}

/// The gateway's settings: the backends and the limits on talking to them.
fn comfy_config(backends: Vec<ComfyBackend>, limits: &Limits) -> ComfyConfig {
    ComfyConfig {
        backends,
        connect_timeout: Duration::from_millis(limits.connect_ms),
        read_timeout: Duration::from_secs(limits.read_secs),
        write_timeout: Duration::from_secs(limits.write_secs),
        idle_timeout: Duration::from_secs(limits.idle_secs),
        max_body_bytes: limits.max_body_mb * 1024 * 1024,
        silence_check: Duration::from_secs(limits.silence_secs),
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
