//! `orchestrator paths …`: ComfyUI's `extra_model_paths.yaml` checked, written, restored.

use crate::config::Config;

/// `orchestrator paths …`
#[derive(Debug, clap::Subcommand)]
pub enum PathsAction {
    /// Read the file the way ComfyUI does and list every problem (exit code 1 when ComfyUI would not start).
    Check {
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Back up the current file, then write one section with the usual model folders under a base path.
    Init {
        /// The folder holding the model folders (default: MODELS_DIR).
        #[arg(long)]
        base_path: Option<std::path::PathBuf>,
        /// Also create the model folders that do not exist.
        #[arg(long)]
        create_folders: bool,
        /// Replace a file ComfyUI could not read (it is backed up first); without it such a file is left alone.
        #[arg(long)]
        force: bool,
    },
    /// Put a backup (extra_model_paths.yaml.bak.…) back in place; the current file is backed up first.
    Restore { backup: std::path::PathBuf },
}

/// Works on the file directly: it is ComfyUI's, on this machine, and needs no running server.
pub fn paths(config: &Config, action: PathsAction) -> Result<String, String> {
    use crate::comfy::model_paths;
    let dir =
        config.service.comfy_dir.as_deref().ok_or(
            "COMFY_DIR is not set: it tells where ComfyUI and its extra_model_paths.yaml are",
        )?;
    let file = model_paths::file_in(dir);
    match action {
        PathsAction::Check { json } => {
            let report = model_paths::check(&file);
            let text = if json {
                serde_json::to_string_pretty(&report).unwrap_or_default()
            } else {
                describe_paths(&report)
            };
            if report.valid { Ok(text) } else { Err(text) }
        }
        PathsAction::Init {
            base_path,
            create_folders,
            force,
        } => {
            let base = base_path
                .or_else(|| config.models_dir.clone())
                .ok_or("give --base-path, or set MODELS_DIR")?;
            let created = model_paths::create_default(&file, &base, create_folders, force)
                .map_err(|e| e.to_string())?;
            let mut text = format!("wrote {}", created.path);
            if let Some(backup) = &created.backup_path {
                text.push_str(&format!("\nthe previous file is kept as {backup}"));
            }
            for folder in &created.created_folders {
                text.push_str(&format!("\ncreated {folder}"));
            }
            Ok(text)
        }
        PathsAction::Restore { backup } => {
            let backup = if backup.is_absolute() {
                backup
            } else {
                dir.join(backup)
            };
            let restored = model_paths::restore(&file, &backup).map_err(|e| e.to_string())?;
            Ok(format!(
                "restored {} from {}{}",
                restored.path,
                backup.display(),
                restored
                    .backup_path
                    .map(|b| format!(" (the replaced file is kept as {b})"))
                    .unwrap_or_default()
            ))
        }
    }
}

fn describe_paths(report: &crate::comfy::model_paths::Report) -> String {
    let mut lines = vec![format!(
        "{}: {}",
        report.path,
        match (report.exists, report.valid) {
            (false, _) => "not there (ComfyUI uses its own models folder only)",
            (true, true) => "ComfyUI can read it",
            (true, false) => "ComfyUI would NOT start with it",
        }
    )];
    for section in &report.sections {
        lines.push(format!(
            "[{}] base_path {}{}",
            section.name,
            section
                .base_path
                .as_deref()
                .unwrap_or("(none: paths are relative to ComfyUI's folder)"),
            if section.is_default {
                ", default for downloads"
            } else {
                ""
            }
        ));
        for (key, folder) in &section.folders {
            for (path, exists) in folder.paths.iter().zip(&folder.exist) {
                let state = if *exists { "" } else { "  (missing)" };
                lines.push(format!("  {key:<16} {path}{state}"));
            }
            lines.push(format!("  {:<16} {} file(s)", "", folder.files));
        }
    }
    for problem in &report.problems {
        let place = problem
            .line
            .map(|l| format!(" (line {l}, column {})", problem.column.unwrap_or(1)))
            .unwrap_or_default();
        let severity = match problem.severity {
            crate::comfy::model_paths::Severity::Error => "error",
            crate::comfy::model_paths::Severity::Warning => "warning",
        };
        lines.push(format!("{severity}: {}{place}", problem.message));
    }
    lines.join("\n")
}
