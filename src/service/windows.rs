//! Windows: ComfyUI installed as a service with NSSM and controlled through the Service Control Manager with
//! `sc.exe`. Everything here is plain code (command lines, parsing) so it is tested on Linux; only running the
//! commands happens on Windows.

use super::{LaunchSpec, ServiceState};

/// What `sc queryex <name>` says about a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScQuery {
    pub state: ServiceState,
    pub pid: Option<u32>,
    /// `WIN32_EXIT_CODE`: why the service last stopped (0 when it has not failed).
    pub win32_exit_code: Option<u32>,
}

/// Parses `sc queryex` output. Error 1060 ("service does not exist") is `NotInstalled`; anything unrecognised is
/// `Unknown` rather than an error, so a status page never breaks on an odd answer.
pub fn parse_sc_query(output: &str) -> ScQuery {
    if output.contains("FAILED 1060") {
        return ScQuery {
            state: ServiceState::NotInstalled,
            pid: None,
            win32_exit_code: None,
        };
    }
    let field = |name: &str| {
        output.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let state = match field("STATE")
        .as_deref()
        .and_then(|v| v.split_whitespace().nth(1))
    {
        Some("RUNNING") => ServiceState::Running,
        Some("STOPPED") => ServiceState::Stopped,
        Some("START_PENDING") | Some("CONTINUE_PENDING") => ServiceState::Starting,
        Some("STOP_PENDING") | Some("PAUSE_PENDING") => ServiceState::Stopping,
        _ => ServiceState::Unknown,
    };
    let pid = field("PID")
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|pid| *pid != 0);
    let win32_exit_code =
        field("WIN32_EXIT_CODE").and_then(|v| v.split_whitespace().next()?.parse().ok());
    ScQuery {
        state,
        pid,
        win32_exit_code,
    }
}

/// NSSM's rotation: rotate the log when it passes 10 MiB, also while the service runs.
pub const ROTATE_BYTES: u64 = 10 * 1024 * 1024;

/// The commands that install ComfyUI as service `spec.service_name` with NSSM, in order.
pub fn nssm_install_commands(nssm: &str, spec: &LaunchSpec) -> Vec<Vec<String>> {
    let name = spec.service_name.as_str();
    let log = spec.log_file.display().to_string();
    let set = |key: &str, values: &[&str]| {
        let mut command = vec![
            nssm.to_owned(),
            "set".into(),
            name.to_owned(),
            key.to_owned(),
        ];
        command.extend(values.iter().map(|v| (*v).to_owned()));
        command
    };
    let mut commands = vec![vec![
        nssm.to_owned(),
        "install".into(),
        name.to_owned(),
        spec.program.clone(),
    ]];
    if !spec.args.is_empty() {
        commands.push(set("AppParameters", &[&windows_command_line(&spec.args)]));
    }
    if let Some(dir) = &spec.working_dir {
        commands.push(set("AppDirectory", &[&dir.display().to_string()]));
    }
    commands.extend([
        set("DisplayName", &["ComfyUI (Orchestrator)"]),
        set(
            "Description",
            &["ComfyUI, installed and supervised by Orchestrator"],
        ),
        set("Start", &["SERVICE_AUTO_START"]),
        set("AppStdout", &[&log]),
        set("AppStderr", &[&log]),
        set("AppRotateFiles", &["1"]),
        set("AppRotateOnline", &["1"]),
        set("AppRotateBytes", &[&ROTATE_BYTES.to_string()]),
        // Restart after any exit, but a run shorter than 10 s counts as a failed start and is throttled.
        set("AppExit", &["Default", "Restart"]),
        set("AppThrottle", &["10000"]),
        set("AppRestartDelay", &["5000"]),
        // Ctrl+C first, and time to finish a step before the process is ended.
        set("AppStopMethodConsole", &["15000"]),
        set("AppEnvironmentExtra", &["PYTHONUNBUFFERED=1"]),
    ]);
    commands
}

pub fn nssm_uninstall_commands(nssm: &str, name: &str) -> Vec<Vec<String>> {
    vec![
        vec![nssm.to_owned(), "stop".into(), name.to_owned()],
        vec![
            nssm.to_owned(),
            "remove".into(),
            name.to_owned(),
            "confirm".into(),
        ],
    ]
}

pub fn sc_command(verb: &str, name: &str) -> Vec<String> {
    vec!["sc".to_owned(), verb.to_owned(), name.to_owned()]
}

/// Joins arguments into one Windows command line the way the C runtime splits it back (quotes around arguments
/// with spaces, tabs or quotes; backslashes doubled only before a quote).
pub fn windows_command_line(args: &[String]) -> String {
    args.iter()
        .map(|arg| quote_windows_arg(arg))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote_windows_arg(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '"']) {
        return arg.to_owned();
    }
    let mut quoted = String::from("\"");
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                quoted.push_str(&"\\".repeat(backslashes * 2 + 1));
                quoted.push('"');
                backslashes = 0;
            }
            other => {
                quoted.push_str(&"\\".repeat(backslashes));
                quoted.push(other);
                backslashes = 0;
            }
        }
    }
    quoted.push_str(&"\\".repeat(backslashes * 2));
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::recorded;
    use std::path::PathBuf;

    #[test]
    fn sc_query_states() {
        let running = parse_sc_query(&recorded("sc_queryex_running.txt"));
        assert_eq!(
            running,
            ScQuery {
                state: ServiceState::Running,
                pid: Some(4312),
                win32_exit_code: Some(0)
            }
        );
        let stopped = parse_sc_query(&recorded("sc_queryex_stopped.txt"));
        assert_eq!(
            (stopped.state, stopped.pid, stopped.win32_exit_code),
            (ServiceState::Stopped, None, Some(1077))
        );
        assert_eq!(
            parse_sc_query(&recorded("sc_queryex_start_pending.txt")).state,
            ServiceState::Starting
        );
        assert_eq!(
            parse_sc_query(&recorded("sc_queryex_stop_pending.txt")).state,
            ServiceState::Stopping
        );
        assert_eq!(
            parse_sc_query(&recorded("sc_queryex_missing.txt")).state,
            ServiceState::NotInstalled
        );
        assert_eq!(parse_sc_query("garbage").state, ServiceState::Unknown);
    }

    #[test]
    fn real_sc_query_output_recorded_under_wine() {
        let running = parse_sc_query(&recorded("wine_sc_query_running.txt"));
        assert_eq!(
            running,
            ScQuery {
                state: ServiceState::Running,
                pid: None,
                win32_exit_code: Some(0)
            }
        );
        let stopped = parse_sc_query(&recorded("wine_sc_query_stopped.txt"));
        assert_eq!(
            stopped,
            ScQuery {
                state: ServiceState::Stopped,
                pid: None,
                win32_exit_code: Some(1077)
            }
        );
    }

    #[test]
    fn arguments_survive_the_windows_command_line() {
        let args: Vec<String> = [
            "-s",
            r"ComfyUI\main.py",
            "--output-directory",
            r"D:\My Outputs\",
            r#"say "hi""#,
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            windows_command_line(&args),
            r#"-s ComfyUI\main.py --output-directory "D:\My Outputs\\" "say \"hi\"" """#
        );
    }

    #[test]
    fn nssm_install_plan() {
        let spec = LaunchSpec {
            service_name: "OrchestratorComfyUI".into(),
            program: r"F:\ComfyUI_windows_portable\python_embeded\python.exe".into(),
            args: vec![
                "-s".into(),
                r"ComfyUI\main.py".into(),
                "--windows-standalone-build".into(),
            ],
            working_dir: Some(PathBuf::from(r"F:\ComfyUI_windows_portable")),
            log_file: PathBuf::from(r"F:\Orchestrator\data\logs\comfyui.log"),
            env_remove: Vec::new(),
            masked: Vec::new(),
        };
        let lines: Vec<String> = nssm_install_commands("nssm", &spec)
            .iter()
            .map(|c| windows_command_line(c))
            .collect();
        insta::assert_snapshot!(lines.join("\n"));
    }
}
