//! `orchestrator service …`: through the OS's service manager, or the running server's supervisor.

use serde_json::Value;

use super::{answered, api};
use crate::config::{Config, ServiceBackend};
use crate::service::control::{self, ServiceControl, Step};
use crate::service::{ServiceStatus, logs};

/// `orchestrator service …`
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum ServiceAction {
    /// Install ComfyUI as an OS service (NSSM on Windows, a systemd unit on Linux).
    Install,
    /// Remove the OS service.
    Uninstall,
    /// Start ComfyUI (a no-op when it runs).
    Start,
    /// Stop ComfyUI (a no-op when it is stopped).
    Stop,
    /// Show whether ComfyUI runs, its pid, restarts and last exit.
    Status,
    /// Print the last lines of ComfyUI's log.
    Logs {
        /// How many lines (1 to 5000).
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: usize,
    },
}

pub async fn service(
    config: &Config,
    action: ServiceAction,
    dry_run: bool,
) -> Result<String, String> {
    if let ServiceAction::Logs { lines } = action {
        let path = &config.service.log_file;
        if dry_run {
            return Ok(format!(
                "# would print the last {lines} lines of {}",
                path.display()
            ));
        }
        return logs::tail(path, lines.clamp(1, 5000))
            .map(|lines| lines.join("\n"))
            .map_err(|error| format!("cannot read ComfyUI's log {}: {error}", path.display()));
    }
    match config.service.backend {
        // ComfyUI runs inside the server's supervisor, or outside Orchestrator: the running server is asked.
        ServiceBackend::Supervised | ServiceBackend::External => {
            via_server(config, action, dry_run).await
        }
        ServiceBackend::Systemd | ServiceBackend::Windows => {
            let control = control::for_config(config);
            directly(&control, action, dry_run).await
        }
    }
}

async fn directly(
    control: &ServiceControl,
    action: ServiceAction,
    dry_run: bool,
) -> Result<String, String> {
    let plan = match action {
        ServiceAction::Install => control.install_plan().map_err(|e| e.to_string())?,
        ServiceAction::Uninstall => control.uninstall_plan(),
        ServiceAction::Start | ServiceAction::Stop | ServiceAction::Status => {
            if dry_run {
                return Ok(
                    format!("# would ask the {} backend to {action:?}", control.name())
                        .to_lowercase(),
                );
            }
            match action {
                ServiceAction::Start => control.start().await.map_err(|e| e.to_string())?,
                ServiceAction::Stop => control.stop().await.map_err(|e| e.to_string())?,
                _ => {}
            }
            return Ok(describe(&control.status().await));
        }
        ServiceAction::Logs { .. } => unreachable!("handled by the caller"),
    };
    let printed = plan
        .iter()
        .map(Step::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    if dry_run {
        return Ok(printed);
    }
    control::execute(&plan).await.map_err(|e| e.to_string())?;
    Ok(format!("{printed}\n# done"))
}

async fn via_server(
    config: &Config,
    action: ServiceAction,
    dry_run: bool,
) -> Result<String, String> {
    let (method, path) = match action {
        ServiceAction::Install | ServiceAction::Uninstall => {
            let why = match config.service.backend {
                ServiceBackend::External => {
                    "ComfyUI is run by someone else (SERVICE_BACKEND=external)"
                }
                _ => {
                    "the supervised backend needs no installation: `orchestrator serve` starts and watches ComfyUI \
                      itself; to run it as an OS service choose SERVICE_BACKEND=systemd or windows"
                }
            };
            return Ok(format!(
                "# nothing to {}: {why}",
                format!("{action:?}").to_lowercase()
            ));
        }
        ServiceAction::Start => (reqwest::Method::POST, "/api/system/comfy/start"),
        ServiceAction::Stop => (reqwest::Method::POST, "/api/system/comfy/stop"),
        ServiceAction::Status => (reqwest::Method::GET, "/api/system/comfy/status"),
        ServiceAction::Logs { .. } => unreachable!("handled by the caller"),
    };
    let api = api(config);
    if dry_run {
        return Ok(format!("{method} {}{path}", api.base()));
    }
    let reply = answered(api.call(method, path, None, &[]).await)?;
    if reply.is_success() {
        Ok(describe_json(&reply.body))
    } else {
        Err(reply.message())
    }
}

/// One human line about a service.
pub fn describe(status: &ServiceStatus) -> String {
    describe_json(&serde_json::to_value(status).unwrap_or(Value::Null))
}

fn describe_json(status: &Value) -> String {
    let text = |key: &str| status[key].as_str().unwrap_or("unknown").to_owned();
    let mut line = format!("ComfyUI ({} backend): {}", text("backend"), text("status"));
    if let Some(pid) = status["pid"].as_u64() {
        line.push_str(&format!(", pid {pid}"));
    }
    if let Some(restarts) = status["restarts"].as_u64().filter(|r| *r > 0) {
        line.push_str(&format!(", {restarts} restart(s)"));
    }
    let exit = &status["last_exit"];
    if let Some(code) = exit["code"].as_i64() {
        line.push_str(&format!("; last exit: code {code}"));
    } else if let Some(signal) = exit["signal"].as_i64() {
        line.push_str(&format!("; last exit: signal {signal}"));
    }
    line
}
