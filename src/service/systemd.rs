//! Linux with systemd: a unit generated for ComfyUI, controlled with `systemctl`, its state read from
//! `systemctl show`. Plain code, tested on recorded outputs; only running `systemctl` touches the system.

use std::path::{Path, PathBuf};

use super::{LaunchSpec, ServiceState};

/// System units when Orchestrator runs as root, user units (`systemctl --user`) otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    System,
    User,
}

impl Scope {
    /// Root gets system units; everyone else user units, which need no privileges.
    pub fn for_current_user() -> Self {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
            });
        if uid == Some(0) {
            Scope::System
        } else {
            Scope::User
        }
    }

    /// `systemctl` and, for user units, `--user`.
    pub fn systemctl(self) -> Vec<String> {
        match self {
            Scope::System => vec!["systemctl".into()],
            Scope::User => vec!["systemctl".into(), "--user".into()],
        }
    }

    /// Where the unit file goes.
    pub fn unit_dir(self, home: Option<&Path>) -> PathBuf {
        match self {
            Scope::System => PathBuf::from("/etc/systemd/system"),
            Scope::User => home.unwrap_or(Path::new("~")).join(".config/systemd/user"),
        }
    }
}

/// The unit's file name: `<service name>.service`.
pub fn unit_name(service_name: &str) -> String {
    format!("{service_name}.service")
}

/// The unit file for ComfyUI: restarted after a failure, with a start limit so a crash loop stops, and its output
/// appended to the log file the viewer tails.
pub fn unit_file(spec: &LaunchSpec, scope: Scope) -> String {
    let mut exec = vec![quote_systemd_arg(&spec.program)];
    exec.extend(spec.args.iter().map(|a| quote_systemd_arg(a)));
    let log = spec.log_file.display().to_string().replace('%', "%%");
    let working_dir = spec
        .working_dir
        .as_ref()
        .map(|d| {
            format!(
                "WorkingDirectory={}\n",
                quote_systemd_arg(&d.display().to_string())
            )
        })
        .unwrap_or_default();
    let wanted_by = match scope {
        Scope::System => "multi-user.target",
        Scope::User => "default.target",
    };
    format!(
        "# Written by Orchestrator (`orchestrator service install`); changes are overwritten on the next install.\n\
         [Unit]\n\
         Description=ComfyUI (managed by Orchestrator)\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         # More than 5 failed starts in 5 minutes means a crash loop: stop trying until someone looks.\n\
         StartLimitIntervalSec=300\n\
         StartLimitBurst=5\n\
         \n\
         [Service]\n\
         Type=simple\n\
         {working_dir}\
         ExecStart={exec}\n\
         Environment=PYTHONUNBUFFERED=1\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         # SIGTERM to ComfyUI, then to what is left of its process group after the timeout.\n\
         KillMode=mixed\n\
         TimeoutStopSec=20\n\
         StandardOutput=append:{log}\n\
         StandardError=append:{log}\n\
         \n\
         [Install]\n\
         WantedBy={wanted_by}\n",
        exec = exec.join(" "),
    )
}

/// Quotes one `ExecStart=` word: double quotes when needed, `%` and `$` escaped (systemd expands both).
pub fn quote_systemd_arg(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty() && !escaped.contains([' ', '\t', '"', '\'', '\\', ';']) {
        return escaped;
    }
    let mut quoted = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

/// The properties `systemctl show` is asked for.
pub const SHOW_PROPERTIES: &str =
    "ActiveState,SubState,MainPID,NRestarts,ExecMainStatus,LoadState,ActiveEnterTimestamp";

/// What `systemctl show -p …` says about the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    pub state: ServiceState,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// `ExecMainStatus`: the exit code of the last run.
    pub last_exit_code: Option<i32>,
    /// `ActiveEnterTimestamp`, as systemd prints it.
    pub since: Option<String>,
}

pub fn parse_show(output: &str) -> UnitStatus {
    let field = |name: &str| {
        output
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let restarts = field("NRestarts").and_then(|v| v.parse().ok()).unwrap_or(0);
    let state = match (field("LoadState"), field("ActiveState"), field("SubState")) {
        (Some("not-found"), _, _) => ServiceState::NotInstalled,
        // Restart= gave up after StartLimitBurst failures: that is a crash loop, not a plain stop.
        (_, Some("failed"), _) if restarts > 0 => ServiceState::CrashLooping,
        (_, Some("active"), _) => ServiceState::Running,
        (_, Some("reloading"), _) => ServiceState::Running,
        (_, Some("activating"), _) => ServiceState::Starting,
        (_, Some("deactivating"), _) => ServiceState::Stopping,
        (_, Some("inactive" | "failed"), _) => ServiceState::Stopped,
        _ => ServiceState::Unknown,
    };
    UnitStatus {
        state,
        pid: field("MainPID")
            .and_then(|v| v.parse().ok())
            .filter(|pid| *pid != 0),
        restarts,
        last_exit_code: field("ExecMainStatus").and_then(|v| v.parse().ok()),
        since: field("ActiveEnterTimestamp").map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::recorded;

    #[test]
    fn show_output_states() {
        let running = parse_show(&recorded("systemctl_show_running.txt"));
        assert_eq!(
            running,
            UnitStatus {
                state: ServiceState::Running,
                pid: Some(48213),
                restarts: 2,
                last_exit_code: Some(0),
                since: Some("Tue 2026-11-24 08:01:12 UTC".into()),
            }
        );
        let failed = parse_show(&recorded("systemctl_show_failed.txt"));
        assert_eq!(
            (failed.state, failed.restarts, failed.last_exit_code),
            (ServiceState::CrashLooping, 5, Some(1))
        );
        assert_eq!(
            parse_show(&recorded("systemctl_show_auto_restart.txt")).state,
            ServiceState::Starting
        );
        assert_eq!(
            parse_show(&recorded("systemctl_show_missing.txt")).state,
            ServiceState::NotInstalled
        );
        assert_eq!(parse_show("").state, ServiceState::Unknown);
    }

    #[test]
    fn exec_words_are_quoted() {
        assert_eq!(quote_systemd_arg("main.py"), "main.py");
        assert_eq!(quote_systemd_arg("/opt/My Models"), "\"/opt/My Models\"");
        assert_eq!(quote_systemd_arg("100%"), "100%%");
        assert_eq!(quote_systemd_arg("$HOME"), "$$HOME");
        assert_eq!(quote_systemd_arg(""), "\"\"");
    }

    #[test]
    fn unit_file_snapshot() {
        let spec = LaunchSpec {
            service_name: "OrchestratorComfyUI".into(),
            program: "/opt/ComfyUI/venv/bin/python".into(),
            args: vec![
                "main.py".into(),
                "--listen".into(),
                "127.0.0.1".into(),
                "--port".into(),
                "8188".into(),
            ],
            working_dir: Some(PathBuf::from("/opt/ComfyUI")),
            log_file: PathBuf::from("/var/lib/orchestrator/data/logs/comfyui.log"),
            env_remove: Vec::new(),
            masked: Vec::new(),
        };
        insta::assert_snapshot!(unit_file(&spec, Scope::System));
    }
}
