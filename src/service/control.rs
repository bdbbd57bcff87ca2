//! One control surface over the four backends.

use std::path::PathBuf;
use std::time::Duration;

use super::supervisor::{RestartPolicy, Supervisor, SupervisorError};
use super::systemd::{self, Scope};
use super::windows;
use super::{LaunchSpec, ServiceState, ServiceStatus};

/// How long an OS service command (`systemctl`, `sc`, `nssm`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "ComfyUI is run by someone else (SERVICE_BACKEND=external): Orchestrator does not start or stop it"
    )]
    External,
    #[error("the ComfyUI service is not installed; run `orchestrator service install` first")]
    NotInstalled,
    #[error("no way to start ComfyUI is configured: set COMFY_DIR (or COMFY_COMMAND)")]
    NoCommand,
    #[error("`{command}` failed{}: {output}", code.map(|c| format!(" with exit code {c}")).unwrap_or_default())]
    CommandFailed {
        command: String,
        code: Option<i32>,
        output: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// One step of an install or uninstall, printed as it is by `--dry-run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    WriteFile { path: PathBuf, contents: String },
    RemoveFile { path: PathBuf },
    Run(Vec<String>),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::WriteFile { path, contents } => {
                write!(f, "# write {}\n{contents}", path.display())
            }
            Step::RemoveFile { path } => write!(f, "# remove {}", path.display()),
            Step::Run(command) => f.write_str(&windows::windows_command_line(command)),
        }
    }
}

/// The backend the configuration asks for.
pub fn for_config(config: &crate::config::Config) -> ServiceControl {
    use crate::config::ServiceBackend;
    let service = &config.service;
    match service.backend {
        ServiceBackend::Supervised => {
            let policy = RestartPolicy {
                backoff_initial: service.restart_delay,
                stop_grace: service.stop_grace,
                ..RestartPolicy::default()
            };
            ServiceControl::supervised(super::LaunchSpec::of(config), policy)
        }
        ServiceBackend::Systemd => ServiceControl::Systemd {
            spec: super::LaunchSpec::of(config),
            service_name: service.name.clone(),
            scope: Scope::for_current_user(),
        },
        ServiceBackend::Windows => ServiceControl::Windows {
            spec: super::LaunchSpec::of(config),
            service_name: service.name.clone(),
            nssm: service.nssm.clone(),
        },
        ServiceBackend::External => ServiceControl::External,
    }
}

pub enum ServiceControl {
    Supervised {
        supervisor: Option<Supervisor>,
    },
    Systemd {
        spec: Option<LaunchSpec>,
        service_name: String,
        scope: Scope,
    },
    Windows {
        spec: Option<LaunchSpec>,
        service_name: String,
        nssm: String,
    },
    External,
}

impl ServiceControl {
    /// The supervised backend; `spec` is `None` when no command is configured (start then says so).
    pub fn supervised(spec: Option<LaunchSpec>, policy: RestartPolicy) -> Self {
        Self::Supervised {
            supervisor: spec.map(|spec| Supervisor::spawn(spec, policy)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Supervised { .. } => "supervised",
            Self::Systemd { .. } => "systemd",
            Self::Windows { .. } => "windows",
            Self::External => "external",
        }
    }

    pub fn supervisor(&self) -> Option<&Supervisor> {
        match self {
            Self::Supervised { supervisor } => supervisor.as_ref(),
            _ => None,
        }
    }

    pub async fn status(&self) -> ServiceStatus {
        match self {
            Self::Supervised {
                supervisor: Some(supervisor),
            } => supervisor.status(),
            Self::Supervised { supervisor: None } => {
                ServiceStatus::simple("supervised", ServiceState::NotInstalled)
            }
            Self::Systemd {
                service_name,
                scope,
                ..
            } => {
                let mut command = scope.systemctl();
                command.extend([
                    "show".into(),
                    systemd::unit_name(service_name),
                    "-p".into(),
                    systemd::SHOW_PROPERTIES.into(),
                ]);
                match run(&command).await {
                    Ok(output) => {
                        let unit = systemd::parse_show(&output);
                        ServiceStatus {
                            status: unit.state,
                            backend: "systemd",
                            pid: unit.pid,
                            restarts: unit.restarts,
                            last_exit: None,
                            since: unit.since,
                            next_start: None,
                            adopted: false,
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "systemctl show failed");
                        ServiceStatus::simple("systemd", ServiceState::Unknown)
                    }
                }
            }
            Self::Windows { service_name, .. } => {
                // `sc` answers 1060 with a non-zero exit code: its output is what matters.
                let output = match run(&windows::sc_command("queryex", service_name)).await {
                    Ok(output) => output,
                    Err(ServiceError::CommandFailed { output, .. }) => output,
                    Err(_) => String::new(),
                };
                let query = windows::parse_sc_query(&output);
                ServiceStatus {
                    pid: query.pid,
                    ..ServiceStatus::simple("windows", query.state)
                }
            }
            Self::External => ServiceStatus::simple("external", ServiceState::Unknown),
        }
    }

    /// Starts ComfyUI; a no-op when it already runs.
    pub async fn start(&self) -> Result<(), ServiceError> {
        match self {
            Self::Supervised {
                supervisor: Some(supervisor),
            } => Ok(supervisor.start().await?),
            Self::Supervised { supervisor: None } => Err(ServiceError::NoCommand),
            Self::Systemd {
                service_name,
                scope,
                ..
            } => {
                let mut command = scope.systemctl();
                command.extend(["start".into(), systemd::unit_name(service_name)]);
                run(&command).await.map(drop)
            }
            Self::Windows { service_name, .. } => {
                match run(&windows::sc_command("start", service_name)).await {
                    // 1056: an instance of the service is already running.
                    Err(ServiceError::CommandFailed { output, .. }) if output.contains("1056") => {
                        Ok(())
                    }
                    Err(ServiceError::CommandFailed { output, .. }) if output.contains("1060") => {
                        Err(ServiceError::NotInstalled)
                    }
                    other => other.map(drop),
                }
            }
            Self::External => Err(ServiceError::External),
        }
    }

    /// Stops ComfyUI; a no-op when it is stopped.
    pub async fn stop(&self) -> Result<(), ServiceError> {
        match self {
            Self::Supervised {
                supervisor: Some(supervisor),
            } => Ok(supervisor.stop().await?),
            Self::Supervised { supervisor: None } => Ok(()),
            Self::Systemd {
                service_name,
                scope,
                ..
            } => {
                let mut command = scope.systemctl();
                command.extend(["stop".into(), systemd::unit_name(service_name)]);
                run(&command).await.map(drop)
            }
            Self::Windows { service_name, .. } => {
                match run(&windows::sc_command("stop", service_name)).await {
                    // 1062: the service has not been started.
                    Err(ServiceError::CommandFailed { output, .. }) if output.contains("1062") => {
                        Ok(())
                    }
                    Err(ServiceError::CommandFailed { output, .. }) if output.contains("1060") => {
                        Err(ServiceError::NotInstalled)
                    }
                    other => other.map(drop),
                }
            }
            Self::External => Err(ServiceError::External),
        }
    }

    /// What `service install` does, step by step.
    pub fn install_plan(&self) -> Result<Vec<Step>, ServiceError> {
        match self {
            Self::Supervised { .. } | Self::External => Ok(Vec::new()),
            Self::Systemd {
                spec,
                scope,
                service_name,
            } => {
                let spec = spec.as_ref().ok_or(ServiceError::NoCommand)?;
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let path = scope
                    .unit_dir(home.as_deref())
                    .join(systemd::unit_name(service_name));
                let mut reload = scope.systemctl();
                reload.push("daemon-reload".into());
                let mut enable = scope.systemctl();
                enable.extend(["enable".into(), systemd::unit_name(service_name)]);
                Ok(vec![
                    Step::WriteFile {
                        path,
                        contents: systemd::unit_file(spec, *scope),
                    },
                    Step::Run(reload),
                    Step::Run(enable),
                ])
            }
            Self::Windows { spec, nssm, .. } => {
                let spec = spec.as_ref().ok_or(ServiceError::NoCommand)?;
                Ok(windows::nssm_install_commands(nssm, spec)
                    .into_iter()
                    .map(Step::Run)
                    .collect())
            }
        }
    }

    pub fn uninstall_plan(&self) -> Vec<Step> {
        match self {
            Self::Supervised { .. } | Self::External => Vec::new(),
            Self::Systemd {
                scope,
                service_name,
                ..
            } => {
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let unit = systemd::unit_name(service_name);
                let mut disable = scope.systemctl();
                disable.extend(["disable".into(), "--now".into(), unit.clone()]);
                let mut reload = scope.systemctl();
                reload.push("daemon-reload".into());
                vec![
                    Step::Run(disable),
                    Step::RemoveFile {
                        path: scope.unit_dir(home.as_deref()).join(unit),
                    },
                    Step::Run(reload),
                ]
            }
            Self::Windows {
                service_name, nssm, ..
            } => windows::nssm_uninstall_commands(nssm, service_name)
                .into_iter()
                .map(Step::Run)
                .collect(),
        }
    }
}

/// Carries out a plan, stopping at the first failure.
pub async fn execute(plan: &[Step]) -> Result<(), ServiceError> {
    for step in plan {
        match step {
            Step::WriteFile { path, contents } => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| ServiceError::Write {
                        path: path.display().to_string(),
                        source,
                    })?;
                }
                std::fs::write(path, contents).map_err(|source| ServiceError::Write {
                    path: path.display().to_string(),
                    source,
                })?;
            }
            Step::RemoveFile { path } => match std::fs::remove_file(path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ServiceError::Write {
                        path: path.display().to_string(),
                        source: error,
                    });
                }
                _ => {}
            },
            Step::Run(command) => {
                run(command).await?;
            }
        }
    }
    Ok(())
}

/// Runs a program with arguments (never through a shell) under a time limit; stdout and stderr together.
async fn run(command: &[String]) -> Result<String, ServiceError> {
    let shown = command.join(" ");
    let (program, args) = command.split_first().expect("a command has a program");
    let output = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(COMMAND_TIMEOUT, output).await {
        Err(_) => {
            return Err(ServiceError::CommandFailed {
                command: shown,
                code: None,
                output: "timed out".into(),
            });
        }
        Ok(Err(error)) => {
            return Err(ServiceError::CommandFailed {
                command: shown,
                code: None,
                output: error.to_string(),
            });
        }
        Ok(Ok(output)) => output,
    };
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(ServiceError::CommandFailed {
            command: shown,
            code: output.status.code(),
            output: text.trim().to_owned(),
        })
    }
}
