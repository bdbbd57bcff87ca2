//! [`Settings::validate`]: every value checked, every problem collected, then the [`Config`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::uri::Scheme;

use super::{
    ComfyBackend, ComfyConfig, ComfyOrgConfig, Config, ConfigErrors, FleetConfig, FluxConfig,
    LogFormat, RateLimitConfig, Secret, ServiceBackend, ServiceConfig, Settings, V0Config,
};

impl std::error::Error for ConfigErrors {}

impl Settings {
    /// Checks every value and returns either the configuration or every problem found.
    pub fn validate(&self, stdout_is_terminal: bool) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();

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

        let allowed_hosts = split_list(self.allowed_hosts.as_deref().unwrap_or(""))
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

        let workers = match self.workers.trim() {
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
        };

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

        let events_max = match self.events_max_secs.trim().parse::<u64>() {
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
        };
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
        let connect_ms = positive!(comfy_connect_timeout_ms, 600_000);
        let read_secs = positive!(comfy_read_timeout_secs, 86_400);
        let write_secs = positive!(comfy_write_timeout_secs, 86_400);
        let idle_secs = positive!(comfy_idle_timeout_secs, 86_400);
        let silence_secs = positive!(comfy_silence_secs, 3600);
        let max_body_mb = positive!(max_body_mb, 1 << 20);
        let header_read_secs = positive!(header_read_timeout_secs, 3600);
        let body_idle_secs = positive!(body_idle_secs, 3600);
        let body_timeout_secs = positive!(body_timeout_secs, 86_400);
        let max_connections = positive!(max_connections, 1_000_000);
        let events_client_buffer = positive!(events_client_buffer, 1_000_000);
        let lease_secs = positive!(fleet_lease_secs, 3600);
        let restart_ms = positive!(comfy_restart_delay_ms, 60_000);
        let grace_secs = positive!(comfy_stop_grace_secs, 600);
        let hung_secs = positive!(comfy_hung_secs, 86_400);
        let ignite_secs = positive!(ignite_timeout_secs, 3600);

        let confirm_ttl_secs = positive!(flux_confirm_ttl_secs, 86_400);
        let submit_timeout_secs = positive!(flux_submit_timeout_secs, 600);
        let poll_interval_ms = positive!(flux_poll_interval_ms, 60_000);
        let poll_timeout_secs = positive!(flux_poll_timeout_secs, 86_400);
        let v0_timeout_secs = positive!(v0_timeout_secs, 86_400);
        let rate_per_min = positive!(paid_rate_limit_per_min, 1_000_000);
        let rate_burst = positive!(paid_rate_limit_burst, 1_000_000);

        let webhook = super::webhook::settings(
            self.job_webhook_url.as_deref(),
            self.job_webhook_secret.as_deref(),
            &self.job_webhook_retry_ms,
            &mut problems,
        );
        let fleet = fleet_settings(
            self.instance_id.as_deref(),
            self.public_url.as_deref(),
            Duration::from_secs(lease_secs),
            (&data_dir, self.bind.trim()),
            &mut problems,
        );
        // The others reach an instance at its public URL, else at the address it listens on: an unspecified one
        // (0.0.0.0, ::) would send them, with the fleet's token, to their own port.
        if crate::config::Engine::of_url(&database_url) == Some(crate::config::Engine::Postgres)
            && fleet.public_url.is_none()
            && bind.is_some_and(|b| b.ip().is_unspecified())
        {
            problems.push(format!(
                "{}: required when a fleet (DATABASE_URL=postgres://…) listens on every address ({} = {}): \
                 the other instances would reach this one, with the fleet's token, at their own address; set it to \
                 the URL they reach this one at (e.g. http://10.0.0.5:3000)",
                Settings::name_of("public_url"),
                Settings::name_of("bind"),
                self.bind.trim()
            ));
        }

        let allow_generation = match self.allow_generation.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" | "" => false,
            other => {
                problems.push(format!(
                    "{} = {other:?}: expected true or false",
                    Settings::name_of("allow_generation")
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
                    "{} = {:?}: expected dollars from 0 to 100000, such as 5 or 2.50",
                    Settings::name_of("flux_daily_budget_usd"),
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
                    "{} = {:?}: expected dollars from 0 to 100000, such as 1 or 0.50",
                    Settings::name_of("comfy_paid_node_max_usd"),
                    self.comfy_paid_node_max_usd
                ));
                0
            }
        };
        let bfl_base_url = match parse_api_base(&self.bfl_base_url) {
            Ok(url) => url,
            Err(why) => {
                problems.push(format!(
                    "{} = {:?}: {why}",
                    Settings::name_of("bfl_base_url"),
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
                    "{} = {:?}: {why}",
                    Settings::name_of("v0_base_url"),
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
                    "{} = {other:?}: expected windows, systemd, supervised or external",
                    Settings::name_of("service_backend")
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
                    problems.push(format!(
                        "{}: expected a JSON array of strings, program first, such as \
                         [\"python\", \"main.py\", \"--port\", \"8188\"]",
                        Settings::name_of("comfy_command")
                    ));
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
                "{} = {:?}: use letters, digits, '-', '_' and '.' only",
                Settings::name_of("service_name"),
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
                    "{} = {other:?}: expected \"json\" or \"text\"",
                    Settings::name_of("log_format")
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
                body_idle_timeout: Duration::from_secs(body_idle_secs),
                body_timeout: Duration::from_secs(body_timeout_secs),
                max_connections: max_connections as usize,
                events_max,
                events_client_buffer: events_client_buffer as usize,
                allowed_hosts,
                token,
                data_dir,
                database_url: Secret::new(database_url),
                fleet,
                comfy: ComfyConfig {
                    backends,
                    connect_timeout: Duration::from_millis(connect_ms),
                    read_timeout: Duration::from_secs(read_secs),
                    write_timeout: Duration::from_secs(write_secs),
                    idle_timeout: Duration::from_secs(idle_secs),
                    max_body_bytes: max_body_mb * 1024 * 1024,
                    silence_check: Duration::from_secs(silence_secs),
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
                webhook,
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

/// This instance's name and address in a fleet. A name is what a claim on a job records: 1 to 64 letters, digits,
/// `.`, `_` or `-`; by default the host's name and a hash of the data folder and the address it listens on: the
/// same after a restart, and different for two instances on one machine even when they share a data folder (two
/// processes cannot listen on one address).
fn fleet_settings(
    instance_id: Option<&str>,
    public_url: Option<&str>,
    lease: Duration,
    (data_dir, bind): (&std::path::Path, &str),
    problems: &mut Vec<String>,
) -> FleetConfig {
    let valid = |id: &str| {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    let instance_id = match instance_id.map(str::trim).filter(|id| !id.is_empty()) {
        Some(id) if valid(id) => id.to_owned(),
        Some(id) => {
            problems.push(format!(
                "{} = {id:?}: 1 to 64 letters, digits, '.', '_' or '-'",
                Settings::name_of("instance_id")
            ));
            String::new()
        }
        None => {
            let host: String = whoami::hostname()
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .take(40)
                .collect();
            let place = format!("{}\n{bind}", data_dir.to_string_lossy());
            let digest = ring::digest::digest(&ring::digest::SHA256, place.as_bytes());
            let hash: String = digest.as_ref()[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if host.is_empty() {
                format!("orchestrator-{hash}")
            } else {
                format!("{host}-{hash}")
            }
        }
    };
    let public_url = match public_url.map(str::trim).filter(|u| !u.is_empty()) {
        None => None,
        Some(url) => match url.parse::<http::Uri>() {
            Ok(parsed)
                if matches!(parsed.scheme_str(), Some("http" | "https"))
                    && parsed.authority().is_some() =>
            {
                Some(url.trim_end_matches('/').to_owned())
            }
            _ => {
                problems.push(format!(
                    "{} = {url:?}: expected an http:// or https:// URL",
                    Settings::name_of("public_url")
                ));
                None
            }
        },
    };
    FleetConfig {
        instance_id,
        public_url,
        lease,
    }
}
