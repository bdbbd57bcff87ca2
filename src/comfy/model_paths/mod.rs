//! ComfyUI's `extra_model_paths.yaml`: read the way ComfyUI reads it (`utils/extra_config.py`, summarised in
//! `shared/CONTRACTS.md` §1.9), checked, and written back in its format.
//!
//! The file is parsed with a YAML event parser (saphyr-parser) into a small tree, refusing what a model-folder list
//! never needs and what makes YAML dangerous: tags, anchors and aliases (the "billion laughs" bomb), several
//! documents, deep nesting, and files over [`MAX_FILE_BYTES`]. Everything ComfyUI would choke on at start-up (an
//! empty file, a top-level list, a section that is a string, a folder value that is not a string) is an error;
//! what it accepts but probably should not (missing folders, unknown keys, `custom_nodes`) is a warning.
//!
//! [`yaml`] reads the bytes into a tree, [`rules`] reads the tree as ComfyUI does, [`writer`] writes Orchestrator's
//! section back. Writes are atomic ([`crate::fs_safe::write_atomic`]: a temporary file in the same folder, fsync,
//! rename, fsync of the folder), so a crash leaves the old file or the new one; an existing file is first copied to `extra_model_paths.yaml.bak.YYYYMMDD-HHMMSS`.
//!
//! Locking rule: [`create_default`] and [`restore`] read, back up and replace the file as one step under a lock
//! keyed by the file's path ([`exclusive`]), so two writers in this process (two requests, a request and the CLI's
//! code in a test) run one after the other and each sees the file the other left. Every write has a temporary
//! file of its own (pid and a per-process counter, created with `create_new`), so two writes can never share one.

mod rules;
#[cfg(test)]
mod tests;
mod writer;
mod yaml;

use std::path::{Path, PathBuf};

use saphyr_parser::Span;
use serde::Serialize;

use rules::interpret;
pub use writer::{
    Created, WriteError, create_default, default_file, merged_file, restore, write_atomic,
};
use yaml::{parse, read_limited};

pub const FILE_NAME: &str = "extra_model_paths.yaml";
/// The real file is a few hundred bytes; anything this large is not one.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
const MAX_DEPTH: usize = 8;

/// ComfyUI's model extensions (`folder_paths.supported_pt_extensions`).
const MODEL_EXTENSIONS: [&str; 8] = [
    "ckpt",
    "pt",
    "pt2",
    "bin",
    "pth",
    "safetensors",
    "pkl",
    "sft",
];

/// The folder keys `folder_paths.py` knows.
pub const KNOWN_FOLDERS: [&str; 20] = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
];

/// Old names ComfyUI still maps to their new folders.
const LEGACY_FOLDERS: [(&str, &str); 2] = [("unet", "diffusion_models"), ("clip", "text_encoders")];

/// What a new file lists, each as `<base_path>/<key>/`.
pub const WRITTEN_FOLDERS: [&str; 10] = [
    "checkpoints",
    "loras",
    "vae",
    "controlnet",
    "clip",
    "clip_vision",
    "upscale_models",
    "embeddings",
    "diffusion_models",
    "text_encoders",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// ComfyUI fails to start, or the file was refused.
    Error,
    /// ComfyUI starts, but the set-up is probably not what was meant.
    Warning,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ModelPathsProblem)]
pub struct Problem {
    pub severity: Severity,
    #[schema(value_type = String)]
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// 1-based.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ModelPathsFolder)]
pub struct Folder {
    /// Every path the key adds, resolved as ComfyUI resolves it.
    pub paths: Vec<String>,
    /// Whether each path is an existing folder.
    pub exist: Vec<bool>,
    /// Model files under the paths (for `diffusers` and `custom_nodes`: sub-folders).
    pub files: u64,
    /// The count stopped at the scan limit.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ModelPathsSection)]
pub struct Section {
    pub name: String,
    pub base_path: Option<String>,
    pub is_default: bool,
    /// Keyed by the folder key as written (`unet` stays `unet`; the problems say what it maps to).
    pub folders: std::collections::BTreeMap<String, Folder>,
}

/// `GET /api/comfy/validate-paths`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ModelPathsReport)]
pub struct Report {
    pub path: String,
    pub exists: bool,
    /// No error: ComfyUI will start with this file (a missing file is valid: ComfyUI then reads none).
    pub valid: bool,
    pub sections: Vec<Section>,
    pub problems: Vec<Problem>,
    /// Model files per ComfyUI category across every section (legacy keys counted under their new name).
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// The file in ComfyUI's folder.
pub fn file_in(comfy_dir: &Path) -> PathBuf {
    comfy_dir.join(FILE_NAME)
}

/// Reads and checks the file at `path`.
pub fn check(path: &Path) -> Report {
    let mut report = Report {
        path: path.display().to_string(),
        exists: path.exists(),
        valid: true,
        sections: Vec::new(),
        problems: Vec::new(),
        counts: Default::default(),
    };
    if !report.exists {
        report.problems.push(problem(
            Severity::Warning,
            "file_missing",
            "there is no extra_model_paths.yaml: ComfyUI uses only its own models folder",
        ));
        return report;
    }
    let text = match read_limited(path) {
        Ok(text) => text,
        Err(refusal) => {
            report.problems.push(refusal);
            report.valid = false;
            return report;
        }
    };
    let base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    match parse(&text) {
        Ok(root) => interpret(&root, &base_dir, &mut report),
        Err(refusal) => report.problems.push(refusal),
    }
    report.valid = !report
        .problems
        .iter()
        .any(|p| p.severity == Severity::Error);
    for section in &report.sections {
        for (key, folder) in &section.folders {
            let category = LEGACY_FOLDERS
                .iter()
                .find(|(old, _)| old == key)
                .map_or(key.as_str(), |(_, new)| new);
            *report.counts.entry(category.to_owned()).or_default() += folder.files;
        }
    }
    report
}

fn problem(severity: Severity, code: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        severity,
        code,
        message: message.into(),
        section: None,
        key: None,
        line: None,
        column: None,
    }
}

fn at(mut problem: Problem, span: Span) -> Problem {
    problem.line = Some(span.start.line());
    problem.column = Some(span.start.col() + 1);
    problem
}

#[cfg(test)]
mod properties;
