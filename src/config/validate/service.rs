//! How ComfyUI is run: the service layer's settings.

use std::path::Path;
use std::time::Duration;

use super::{Limits, absolute};
use crate::config::{ServiceBackend, ServiceConfig, Settings};

impl Settings {
    /// The service layer's settings; their problems pushed in the order of the fields.
    pub(super) fn service(
        &self,
        data_dir: &Path,
        limits: &Limits,
        problems: &mut Vec<String>,
    ) -> ServiceConfig {
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
        let command = self.launch_command(problems);
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
        ServiceConfig {
            backend: service_backend,
            name: service_name,
            comfy_dir,
            command,
            log_file,
            nssm: self.nssm_path.trim().to_owned(),
            ignite_timeout: Duration::from_secs(limits.ignite_secs),
            restart_delay: Duration::from_millis(limits.restart_ms),
            stop_grace: Duration::from_secs(limits.grace_secs),
            hung_after: Duration::from_secs(limits.hung_secs),
        }
    }

    /// `comfy_command`, when given: a JSON array of strings, program first.
    fn launch_command(&self, problems: &mut Vec<String>) -> Option<(String, Vec<String>)> {
        match self
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
        }
    }
}
