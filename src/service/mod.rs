//! ComfyUI as a service: the only module that starts processes.
//!
//! Four backends behind one [`ServiceControl`]: `windows` (NSSM + the Service Control Manager), `systemd`,
//! `supervised` (Orchestrator runs ComfyUI as its child) and `external` (someone else runs it; Orchestrator only
//! watches its health). Processes are always started from a program and an argument list, never a shell string.

pub mod control;
pub mod ignite;
pub mod logs;
pub mod supervisor;
pub mod systemd;
pub mod windows;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, Settings};

pub use control::{ServiceControl, ServiceError};

/// A service's state, in the words the API and the panel use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Running,
    Stopped,
    Starting,
    Stopping,
    NotInstalled,
    /// It kept dying soon after each start, and restarting it was given up until someone starts it again.
    CrashLooping,
    /// Alive but not answering its health probe for `COMFY_HUNG_SECS`: its process tree is being ended.
    Unresponsive,
    Unknown,
}

/// Why a run ended, as far as the supervisor knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum ExitCause {
    /// It ended by itself (a crash, or killed from outside).
    Exited,
    /// It was asked to stop.
    Stopped,
    /// It stopped answering its health probe and its process tree was ended.
    Unresponsive,
}

/// How the last run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ExitRecord {
    pub cause: ExitCause,
    /// The exit code, when the process exited by itself.
    pub code: Option<i32>,
    /// The signal that ended it (Unix).
    pub signal: Option<i32>,
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
    /// How long that run lasted.
    pub uptime_ms: u64,
    /// The last lines of ComfyUI's log when it ended.
    pub log_tail: Vec<String>,
}

/// `GET /api/system/comfy/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ServiceStatus {
    pub status: ServiceState,
    /// `windows`, `systemd`, `supervised` or `external`.
    #[schema(value_type = String)]
    pub backend: &'static str,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<ExitRecord>,
    /// When the current state began, where the backend knows it.
    pub since: Option<String>,
    /// When the supervisor starts ComfyUI again after an exit (RFC 3339); `null` when no start is scheduled
    /// (running, stopped, given up as `crash_looping`, or another backend's to decide).
    pub next_start: Option<String>,
    /// A ComfyUI Orchestrator did not start answers on the configured address (started by hand, or restarted by
    /// ComfyUI-Manager): it is used as it is, and nothing is started beside it.
    pub adopted: bool,
}

impl ServiceStatus {
    pub fn simple(backend: &'static str, status: ServiceState) -> Self {
        Self {
            status,
            backend,
            pid: None,
            restarts: 0,
            last_exit: None,
            since: None,
            next_start: None,
            adopted: false,
        }
    }
}

/// How to start ComfyUI, and under which name and log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub service_name: String,
    pub program: String,
    pub args: Vec<String>,
    pub working_dir: Option<PathBuf>,
    /// Where ComfyUI's stdout and stderr go (the log viewer tails it).
    pub log_file: PathBuf,
    /// Variables of Orchestrator's own environment the child must not get: its secrets, and everything its `.env`
    /// set (those are Orchestrator's configuration, not ComfyUI's).
    pub env_remove: Vec<String>,
    /// Values never shown from its log (Orchestrator's secrets): see [`logs::masked`].
    pub masked: Vec<String>,
}

impl LaunchSpec {
    /// How to start ComfyUI: `COMFY_COMMAND` when given, else the default for `COMFY_DIR`; `None` when neither
    /// is set.
    pub fn of(config: &Config) -> Option<Self> {
        let service = &config.service;
        let (program, mut args) = match (&service.command, &service.comfy_dir) {
            (Some((program, args)), _) => (program.clone(), args.clone()),
            (None, Some(dir)) => {
                let comfy = config.primary_comfy();
                let host = comfy
                    .authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                default_command(dir, host, comfy.authority.port_u16().unwrap_or(80))
            }
            (None, None) => return None,
        };
        // Its paid API nodes call Comfy.org through Orchestrator's egress, which meters them (a command that names
        // another base keeps it, and the diagnostics say so).
        if crate::comfy::api::comfy_api_base(&args).is_none() {
            args.push("--comfy-api-base".to_owned());
            args.push(config.comfy_org_egress_url());
        }
        let env_remove = Settings::secret_variables()
            .iter()
            .map(|name| (*name).to_owned())
            .chain(
                config
                    .sources
                    .iter()
                    .filter(|(_, source)| **source == "dotenv")
                    .map(|(name, _)| name.clone()),
            )
            .collect();
        Some(Self {
            service_name: service.name.clone(),
            program,
            args,
            working_dir: service.comfy_dir.clone(),
            log_file: service.log_file.clone(),
            env_remove,
            masked: config.secret_values(),
        })
    }
}

/// The default command line for ComfyUI in `comfy_dir`, listening where `COMFY_URL` says.
///
/// The Windows portable build keeps its Python in `python_embeded` next to the `ComfyUI` folder and is started
/// from the outer folder; a git checkout has `main.py` at its root and runs with the Python on the PATH (or its
/// `venv`/`.venv`).
pub fn default_command(
    comfy_dir: &std::path::Path,
    host: &str,
    port: u16,
) -> (String, Vec<String>) {
    let listen = [
        "--listen".to_owned(),
        host.to_owned(),
        "--port".to_owned(),
        port.to_string(),
    ];
    let portable_python = comfy_dir.join("python_embeded").join("python.exe");
    if portable_python.exists() || comfy_dir.join("ComfyUI").join("main.py").exists() {
        let python = if portable_python.exists() {
            portable_python.display().to_string()
        } else {
            python_name()
        };
        let mut args = vec![
            "-s".to_owned(),
            format!("ComfyUI{}main.py", std::path::MAIN_SEPARATOR),
        ];
        args.push("--windows-standalone-build".to_owned());
        args.extend(listen);
        return (python, args);
    }
    let venv_python = ["venv", ".venv"].iter().map(|v| {
        if cfg!(windows) {
            comfy_dir.join(v).join("Scripts").join("python.exe")
        } else {
            comfy_dir.join(v).join("bin").join("python")
        }
    });
    let python = venv_python
        .into_iter()
        .find(|p| p.exists())
        .map(|p| p.display().to_string())
        .unwrap_or_else(python_name);
    let mut args = vec!["main.py".to_owned()];
    args.extend(listen);
    (python, args)
}

fn python_name() -> String {
    if cfg!(windows) {
        "python.exe".to_owned()
    } else {
        "python3".to_owned()
    }
}

/// A recorded service-manager output from `tests/fixtures/service`.
#[cfg(test)]
pub(crate) fn recorded(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/service/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_commands_follow_the_install_layout() {
        let checkout = tempfile::tempdir().unwrap();
        std::fs::write(checkout.path().join("main.py"), "").unwrap();
        let (program, args) = default_command(checkout.path(), "127.0.0.1", 8188);
        assert!(program.starts_with("python"));
        assert_eq!(args, ["main.py", "--listen", "127.0.0.1", "--port", "8188"]);

        std::fs::create_dir_all(checkout.path().join("venv/bin")).unwrap();
        std::fs::write(checkout.path().join("venv/bin/python"), "").unwrap();
        if cfg!(unix) {
            assert_eq!(
                default_command(checkout.path(), "127.0.0.1", 8188).0,
                checkout
                    .path()
                    .join("venv/bin/python")
                    .display()
                    .to_string()
            );
        }

        let portable = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(portable.path().join("python_embeded")).unwrap();
        std::fs::write(portable.path().join("python_embeded/python.exe"), "").unwrap();
        let (program, args) = default_command(portable.path(), "127.0.0.1", 8188);
        assert!(program.ends_with("python.exe"));
        assert_eq!(args[0], "-s");
        assert!(args.contains(&"--windows-standalone-build".to_owned()));
    }

    #[test]
    fn comfyui_is_started_with_the_egress_as_its_comfy_api_base() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.py"), "").unwrap();
        let settings = |command: Option<&str>| {
            let mut settings = crate::config::Settings::defaults();
            settings.comfy_dir = Some(dir.path().display().to_string());
            settings.comfy_command = command.map(str::to_owned);
            settings.validate(false).unwrap()
        };
        let spec = LaunchSpec::of(&settings(None)).unwrap();
        let at = spec
            .args
            .iter()
            .position(|a| a == "--comfy-api-base")
            .unwrap();
        assert_eq!(spec.args[at + 1], "http://127.0.0.1:3000/api/comfy-org/");
        // A command that names a base of its own keeps it (the diagnostics say when it is not an egress).
        let own = LaunchSpec::of(&settings(Some(
            r#"["python", "main.py", "--comfy-api-base=https://x.example"]"#,
        )))
        .unwrap();
        assert_eq!(
            crate::comfy::api::comfy_api_base(&own.args).as_deref(),
            Some("https://x.example")
        );
        assert_eq!(
            own.args
                .iter()
                .filter(|a| a.contains("comfy-api-base"))
                .count(),
            1
        );
    }
}
