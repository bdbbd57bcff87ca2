//! ComfyUI's `extra_model_paths.yaml`: read the way ComfyUI reads it (`utils/extra_config.py`, summarised in
//! `shared/CONTRACTS.md` §1.9), checked, and written back in its format.
//!
//! The file is parsed with a YAML event parser (saphyr-parser) into a small tree, refusing what a model-folder list
//! never needs and what makes YAML dangerous: tags, anchors and aliases (the "billion laughs" bomb), several
//! documents, deep nesting, and files over [`MAX_FILE_BYTES`]. Everything ComfyUI would choke on at start-up (an
//! empty file, a top-level list, a section that is a string, a folder value that is not a string) is an error;
//! what it accepts but probably should not (missing folders, unknown keys, `custom_nodes`) is a warning.
//!
//! Writes are atomic: a temporary file in the same folder, fsync, rename, so a crash leaves the old file or the new
//! one; an existing file is first copied to `extra_model_paths.yaml.bak.YYYYMMDD-HHMMSS`.
//!
//! Locking rule: [`create_default`] and [`restore`] read, back up and replace the file as one step under a lock
//! keyed by the file's path ([`exclusive`]), so two writers in this process (two requests, a request and the CLI's
//! code in a test) run one after the other and each sees the file the other left. Every write has a temporary
//! file of its own (pid and a per-process counter, created with `create_new`), so two writes can never share one.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde::Serialize;

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

// One problem per file read: its size does not matter.
#[allow(clippy::result_large_err)]
fn read_limited(path: &Path) -> Result<String, Problem> {
    let file = std::fs::File::open(path).map_err(|e| {
        problem(
            Severity::Error,
            "file_unreadable",
            format!("cannot read the file: {e}"),
        )
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            problem(
                Severity::Error,
                "file_unreadable",
                format!("cannot read the file: {e}"),
            )
        })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(problem(
            Severity::Error,
            "file_too_large",
            format!(
                "the file is larger than {} KiB; a model-folder list never is",
                MAX_FILE_BYTES / 1024
            ),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| problem(Severity::Error, "not_utf8", "the file is not UTF-8 text"))
}

/// The parsed file: only what a model-folder list is made of.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Scalar {
        text: String,
        plain: bool,
        span: Span,
    },
    Sequence {
        span: Span,
    },
    Mapping {
        entries: Vec<(String, Span, Node)>,
        span: Span,
    },
}

impl Node {
    fn span(&self) -> Span {
        match self {
            Self::Scalar { span, .. } | Self::Sequence { span } | Self::Mapping { span, .. } => {
                *span
            }
        }
    }

    /// A plain scalar YAML 1.1 (PyYAML) reads as null.
    fn is_null(&self) -> bool {
        matches!(self, Self::Scalar { text, plain: true, .. } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }
}

/// The document's root, or why the file is refused. `None` inside `Ok` is an empty document.
#[allow(clippy::result_large_err)]
fn parse(text: &str) -> Result<Option<Node>, Problem> {
    // PyYAML's reader refuses the whole file for one character outside its printable set, even in a comment.
    if let Some((at, c)) = text.char_indices().find(|(_, c)| !printable(*c)) {
        let before = &text[..at];
        let mut refusal = problem(
            Severity::Error,
            "unprintable_character",
            format!(
                "the file holds the character U+{:04X}, which YAML does not allow (ComfyUI fails to start on it)",
                u32::from(c)
            ),
        );
        refusal.line = Some(before.matches('\n').count() + 1);
        refusal.column = Some(before.rsplit('\n').next().unwrap_or("").chars().count() + 1);
        return Err(refusal);
    }
    let mut events = Vec::new();
    for event in Parser::new_from_str(text) {
        match event {
            Ok(event) => events.push(event),
            Err(error) => {
                let mut refusal = problem(
                    Severity::Error,
                    "yaml_syntax",
                    format!(
                        "YAML syntax error: {} (ComfyUI fails to start on it)",
                        error.info()
                    ),
                );
                refusal.line = Some(error.marker().line());
                refusal.column = Some(error.marker().col() + 1);
                return Err(refusal);
            }
        }
    }
    let mut stack: Vec<(Node, Option<(String, Span)>)> = Vec::new();
    let mut root = None;
    let mut documents = 0;
    for (event, span) in events {
        let node = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(at(
                        problem(
                            Severity::Error,
                            "several_documents",
                            "the file holds more than one YAML document",
                        ),
                        span,
                    ));
                }
                continue;
            }
            Event::Alias(_) => {
                return Err(at(
                    problem(
                        Severity::Error,
                        "yaml_alias",
                        "YAML aliases (*name) are not allowed in this file",
                    ),
                    span,
                ));
            }
            Event::Scalar(_, _, anchor, tag)
            | Event::SequenceStart(anchor, tag)
            | Event::MappingStart(anchor, tag)
                if anchor != 0 || tag.is_some() =>
            {
                let (code, what) = if tag.is_some() {
                    ("yaml_tag", "YAML tags (!tag) are not allowed in this file")
                } else {
                    (
                        "yaml_anchor",
                        "YAML anchors (&name) are not allowed in this file",
                    )
                };
                return Err(at(problem(Severity::Error, code, what), span));
            }
            Event::Scalar(text, style, _, _) => Node::Scalar {
                text: text.into_owned(),
                plain: style == ScalarStyle::Plain,
                span,
            },
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(at(
                        problem(
                            Severity::Error,
                            "too_deep",
                            "the file is nested deeper than a model-folder list is",
                        ),
                        span,
                    ));
                }
                let node = if matches!(event, Event::SequenceStart(..)) {
                    Node::Sequence { span }
                } else {
                    Node::Mapping {
                        entries: Vec::new(),
                        span,
                    }
                };
                stack.push((node, None));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some((node, _)) => node,
                None => continue,
            },
        };
        // Place the finished node: a mapping key, a mapping value, a sequence item (dropped: only its shape
        // matters), or the root.
        match stack.last_mut() {
            None => root = Some(node),
            Some((Node::Sequence { .. }, _)) => {}
            Some((Node::Mapping { entries, .. }, pending)) => match pending.take() {
                None => match node {
                    Node::Scalar { text, span, .. } => *pending = Some((text, span)),
                    other => {
                        return Err(at(
                            problem(
                                Severity::Error,
                                "complex_key",
                                "a mapping key must be plain text",
                            ),
                            other.span(),
                        ));
                    }
                },
                Some((key, key_span)) => entries.push((key, key_span, node)),
            },
            Some((Node::Scalar { .. }, _)) => unreachable!("scalars are never pushed"),
        }
    }
    Ok(root)
}

/// A character PyYAML reads (its reader's `NON_PRINTABLE` complement): tab, line breaks, printable ASCII, and
/// the printable rest of Unicode.
fn printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || c >= '\u{10000}'
}

/// ComfyUI's `load_extra_path_config`, as checks.
fn interpret(root: &Option<Node>, base_dir: &Path, report: &mut Report) {
    let sections = match root {
        None => {
            report.problems.push(problem(
                Severity::Error,
                "empty_file",
                "the file is empty: ComfyUI fails to start on it (delete it, or give it a section)",
            ));
            return;
        }
        Some(node) if node.is_null() => {
            report.problems.push(at(
                problem(
                    Severity::Error,
                    "empty_file",
                    "the file holds nothing: ComfyUI fails to start on it",
                ),
                node.span(),
            ));
            return;
        }
        Some(Node::Mapping { entries, .. }) => entries,
        Some(other) => {
            report.problems.push(at(
                problem(
                    Severity::Error,
                    "not_a_mapping",
                    "the top level must be named sections (name: then its folders); ComfyUI fails to start on this",
                ),
                other.span(),
            ));
            return;
        }
    };
    let flat = sections.iter().any(|(key, _, value)| {
        matches!(value, Node::Scalar { .. })
            && !value.is_null()
            && (key == "base_path" || is_folder_key(key))
    });
    if flat {
        report.problems.push(at(
            problem(
                Severity::Error,
                "flat_layout",
                "this is the flat layout (base_path and folders at the top level), which ComfyUI does not read: put \
                 them under a section name, e.g. `orchestrator:` with the lines below it indented",
            ),
            sections[0].1,
        ));
        return;
    }
    for (name, name_span, value) in sections {
        let section_problem = |severity, code, message: String, span| {
            let mut p = at(problem(severity, code, message), span);
            p.section = Some(name.clone());
            p
        };
        let entries = match value {
            node if node.is_null() => {
                report.problems.push(section_problem(
                    Severity::Warning,
                    "empty_section",
                    format!("section {name:?} is empty; ComfyUI skips it"),
                    *name_span,
                ));
                continue;
            }
            Node::Mapping { entries, .. } => entries,
            other => {
                report.problems.push(section_problem(
                    Severity::Error,
                    "section_not_a_mapping",
                    format!("section {name:?} must hold keys (base_path, folders); ComfyUI fails to start on this"),
                    other.span(),
                ));
                continue;
            }
        };
        let mut section = Section {
            name: name.clone(),
            base_path: None,
            is_default: false,
            folders: Default::default(),
        };
        let mut base = None;
        for (key, key_span, value) in entries {
            let key_problem = |severity, code, message: String, span| {
                let mut p = section_problem(severity, code, message, span);
                p.key = Some(key.clone());
                p
            };
            match key.as_str() {
                "base_path" => match value {
                    Node::Scalar { text, .. } if !value.is_null() => {
                        let expanded = PathBuf::from(expand(text));
                        let resolved = normalise(&if expanded.is_absolute() {
                            expanded
                        } else {
                            base_dir.join(expanded)
                        });
                        if !resolved.is_dir() {
                            report.problems.push(key_problem(
                                Severity::Warning,
                                "base_path_missing",
                                format!("base_path {} does not exist", resolved.display()),
                                value.span(),
                            ));
                        }
                        section.base_path = Some(resolved.display().to_string());
                        base = Some(resolved);
                    }
                    _ => report.problems.push(key_problem(
                        Severity::Error,
                        "not_a_string",
                        "base_path must be a path".into(),
                        value.span(),
                    )),
                },
                "is_default" => section.is_default = truthy(value),
                _ => {
                    let text = match value {
                        Node::Scalar { text, plain, .. }
                            if !(value.is_null() || *plain && non_string(text)) =>
                        {
                            text
                        }
                        _ => {
                            report.problems.push(key_problem(
                                Severity::Error,
                                "not_a_string",
                                format!("{key} must be a path, or several paths one a line (a `|` block); ComfyUI fails to start on this"),
                                value.span(),
                            ));
                            continue;
                        }
                    };
                    if let Some((_, new)) = LEGACY_FOLDERS.iter().find(|(old, _)| old == key) {
                        report.problems.push(key_problem(
                            Severity::Warning,
                            "legacy_key",
                            format!("{key} is an old name; ComfyUI reads it as {new}"),
                            *key_span,
                        ));
                    } else if key == "custom_nodes" {
                        report.problems.push(key_problem(
                            Severity::Warning,
                            "custom_nodes",
                            "custom_nodes lists folders of Python code that ComfyUI imports and runs at start-up: \
                             make sure you trust every one"
                                .into(),
                            *key_span,
                        ));
                    } else if !KNOWN_FOLDERS.contains(&key.as_str()) {
                        report.problems.push(key_problem(
                            Severity::Warning,
                            "unknown_key",
                            format!("{key} is not a ComfyUI model folder; ComfyUI makes a new category of it that lists every file (a typo?)"),
                            *key_span,
                        ));
                    }
                    let mut folder = Folder {
                        paths: Vec::new(),
                        exist: Vec::new(),
                        files: 0,
                        truncated: false,
                    };
                    // Lines are not stripped by ComfyUI, so trailing spaces are part of the path.
                    for line in text.split('\n').filter(|l| !l.is_empty()) {
                        if line != line.trim_end() {
                            report.problems.push(key_problem(
                                Severity::Warning,
                                "trailing_space",
                                format!("{line:?} ends in spaces, which ComfyUI keeps as part of the path"),
                                value.span(),
                            ));
                        }
                        let resolved = normalise(&match &base {
                            Some(base) => base.join(line),
                            None => base_dir.join(line),
                        });
                        let exists = resolved.is_dir();
                        if exists {
                            let (count, truncated) = count_files(&resolved, key);
                            folder.files += count;
                            folder.truncated |= truncated;
                        } else {
                            report.problems.push(key_problem(
                                Severity::Warning,
                                "folder_missing",
                                format!("{} does not exist", resolved.display()),
                                value.span(),
                            ));
                        }
                        folder.paths.push(resolved.display().to_string());
                        folder.exist.push(exists);
                    }
                    section.folders.insert(key.clone(), folder);
                }
            }
        }
        if section.folders.is_empty() {
            report.problems.push(section_problem(
                Severity::Warning,
                "empty_section",
                format!("section {name:?} lists no model folder"),
                *name_span,
            ));
        }
        report.sections.push(section);
    }
}

fn is_folder_key(key: &str) -> bool {
    KNOWN_FOLDERS.contains(&key) || LEGACY_FOLDERS.iter().any(|(old, _)| *old == key)
}

/// A plain scalar PyYAML reads as a number or a boolean (no `.split`, so ComfyUI fails).
fn non_string(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off"
    ) || text.parse::<f64>().is_ok()
}

fn truthy(node: &Node) -> bool {
    match node {
        Node::Scalar {
            text, plain: true, ..
        } => {
            !node.is_null()
                && !matches!(
                    text.to_ascii_lowercase().as_str(),
                    "false" | "no" | "off" | "0" | "0.0"
                )
        }
        Node::Scalar { text, .. } => !text.is_empty(),
        Node::Sequence { .. } | Node::Mapping { .. } => true,
    }
}

/// `os.path.expandvars(os.path.expanduser(path))`: `~`, `$NAME`, `${NAME}` (and `%NAME%` on Windows); unknown
/// variables stay as written.
fn expand(path: &str) -> String {
    let mut path = path.to_owned();
    if (path == "~" || path.starts_with("~/") || path.starts_with("~\\"))
        && let Some(home) = std::env::home_dir()
    {
        path = format!("{}{}", home.display(), &path[1..]);
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path.as_str();
    while let Some(at) = rest.find(['$', '%']) {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = if rest[at..].starts_with('%') {
            match after.find('%') {
                Some(end) if cfg!(windows) && end > 0 => (&after[..end], end + 1),
                _ => ("", 0),
            }
        } else if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match std::env::var(name).ok().filter(|_| !name.is_empty()) {
            Some(value) => {
                out.push_str(&value);
                rest = &after[consumed..];
            }
            None => {
                out.push_str(&rest[at..at + 1]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `os.path.normpath`: `.` and `..` resolved lexically.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Model files under `dir`, recursively as ComfyUI lists them; stops at a limit so a huge tree cannot stall a
/// diagnostics page.
fn count_files(dir: &Path, key: &str) -> (u64, bool) {
    const LIMIT: u64 = 50_000;
    if matches!(key, "diffusers" | "custom_nodes") {
        let count = std::fs::read_dir(dir)
            .map(|entries| entries.flatten().filter(|e| e.path().is_dir()).count() as u64)
            .unwrap_or(0);
        return (count, false);
    }
    let wanted = |path: &Path| {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match key {
            "configs" => extension == "yaml",
            _ if is_folder_key(key) => MODEL_EXTENSIONS.contains(&extension.as_str()),
            _ => true,
        }
    };
    let (mut count, mut visited) = (0u64, 0u64);
    let mut pending = vec![(dir.to_path_buf(), 0usize)];
    while let Some((folder, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > LIMIT {
                return (count, true);
            }
            let path = entry.path();
            if path.is_dir() {
                if depth < 16 {
                    pending.push((path, depth + 1));
                }
            } else if wanted(&path) {
                count += 1;
            }
        }
    }
    (count, false)
}

/// The text of a new file: one section in ComfyUI's format, only known model-folder keys.
pub fn default_file(base_path: &Path) -> String {
    own_section(base_path)
}

const SECTION_START: &str =
    "# >>> Orchestrator's section (its next create replaces it; edit the other sections freely)";
const SECTION_END: &str = "# <<< Orchestrator's section";

/// Orchestrator's own section, between markers so a later create finds and replaces exactly it.
fn own_section(base_path: &Path) -> String {
    let base = quoted(&base_path.display().to_string());
    let mut text = format!(
        "{SECTION_START}\n# Each folder is relative to base_path; several paths, one a line, work too:  loras: |\n\
         orchestrator:\n    base_path: {base}\n    is_default: true\n"
    );
    for key in WRITTEN_FOLDERS {
        text.push_str(&format!("    {key}: {key}/\n"));
    }
    text.push_str(SECTION_END);
    text.push('\n');
    text
}

/// `text` as a YAML scalar that PyYAML (and this reader) read back exactly as `text`: single-quoted when every
/// character may stand as itself, else double-quoted with escapes. In single quotes a line break would be folded
/// into a space, and a control character (or U+FFFE) makes PyYAML refuse the whole file, so ComfyUI would not start.
fn quoted(text: &str) -> String {
    // Printable and no line break in YAML 1.1's reading (U+0085, U+2028 and U+2029 are line breaks there).
    let as_itself = |c: char| {
        matches!(c, ' '..='~')
            || (c >= '\u{a0}'
                && !matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ))
    };
    if text.chars().all(as_itself) {
        return format!("'{}'", text.replace('\'', "''"));
    }
    let mut out = String::with_capacity(text.len() + 8);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if as_itself(c) => out.push(c),
            c if u32::from(c) < 0x100 => out.push_str(&format!("\\x{:02X}", u32::from(c))),
            c if u32::from(c) < 0x10000 => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

/// The user's file with Orchestrator's section added, or replaced where it already is (between its markers, or an
/// `orchestrator:` section written by hand); every other line stays as the user wrote it.
pub fn merged_file(existing: &str, base_path: &Path) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut inside_markers = false;
    let mut inside_section = false;
    for line in existing.lines() {
        if line.trim_end() == SECTION_START {
            inside_markers = true;
            continue;
        }
        if inside_markers {
            if line.trim_end() == SECTION_END {
                inside_markers = false;
            }
            continue;
        }
        let top_level = !line.starts_with([' ', '\t', '#']) && !line.trim().is_empty();
        if top_level {
            let key = line.split('#').next().unwrap_or("").trim_end();
            inside_section =
                key == "orchestrator:" || key == "\"orchestrator\":" || key == "'orchestrator':";
        }
        if !inside_section {
            kept.push(line);
        }
    }
    while kept.last().is_some_and(|l| l.trim().is_empty()) {
        kept.pop();
    }
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text.push_str(&own_section(base_path));
    text
}

/// The 1-based line of Orchestrator's start marker when no end marker follows it.
fn unclosed_section(text: &str) -> Option<usize> {
    let mut open = None;
    for (number, line) in text.lines().enumerate() {
        match line.trim_end() {
            SECTION_START if open.is_none() => open = Some(number + 1),
            SECTION_END => open = None,
            _ => {}
        }
    }
    open
}

/// The problems of `text` read as the file in `base_dir` would be.
fn problems_of(text: &str, base_dir: &Path) -> Vec<Problem> {
    let mut report = Report {
        path: String::new(),
        exists: true,
        valid: true,
        sections: Vec::new(),
        problems: Vec::new(),
        counts: Default::default(),
    };
    match parse(text) {
        Ok(root) => interpret(&root, base_dir, &mut report),
        Err(refusal) => report.problems.push(refusal),
    }
    report.problems
}

/// What [`create_default`] did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ModelPathsWritten)]
pub struct Created {
    pub created: bool,
    pub path: String,
    #[serde(rename = "backupPath")]
    pub backup_path: Option<String>,
    /// Folders made because they did not exist.
    #[serde(rename = "createdFolders")]
    pub created_folders: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("base_path must be an absolute path, got {0:?}")]
    RelativeBase(String),
    #[error("cannot back up {path}: {source}")]
    Backup {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{0:?} is not a backup of {FILE_NAME} in ComfyUI's folder")]
    NotABackup(String),
    #[error("the current {FILE_NAME} cannot be read the way ComfyUI reads it, so it is left as it is (give force to replace it after a backup): {}", .0.join("; "))]
    Unparsable(Vec<String>),
}

/// Backs up the current file (if any), then atomically writes the default one for `base_path`.
pub fn create_default(
    file: &Path,
    base_path: &Path,
    create_folders: bool,
    force: bool,
) -> Result<Created, WriteError> {
    if !base_path.is_absolute() {
        return Err(WriteError::RelativeBase(base_path.display().to_string()));
    }
    exclusive(file, || {
        create_default_locked(file, base_path, create_folders, force)
    })
}

fn create_default_locked(
    file: &Path,
    base_path: &Path,
    create_folders: bool,
    force: bool,
) -> Result<Created, WriteError> {
    // The user's sections are kept; a file that cannot be read as ComfyUI reads it is left alone unless forced
    // (and then replaced whole, after the backup), since merging into it could lose what the user meant.
    let errors = |problems: &[Problem]| -> Vec<String> {
        problems
            .iter()
            .filter(|p| p.severity == Severity::Error && p.code != "empty_file")
            .map(|p| match p.line {
                Some(line) => format!("{} (line {line})", p.message),
                None => p.message.clone(),
            })
            .collect()
    };
    let text = if file.exists() {
        let mut broken = errors(&check(file).problems);
        let existing = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(line) = unclosed_section(&existing) {
            // The merge drops everything between the markers: without an end marker that is every line after
            // the start, the user's own sections included.
            broken.push(format!(
                "Orchestrator's section starts on line {line} but its end marker ({SECTION_END:?}) is missing, \
                 so replacing the section would drop every line after it; put the end marker back"
            ));
        }
        let mut merged = String::new();
        if broken.is_empty() {
            merged = merged_file(&existing, base_path);
            // Sections laid out so that a block section cannot follow them (indented, or in flow style) would
            // make the merge a file ComfyUI fails on: that file is refused the same way.
            let dir = file.parent().unwrap_or(Path::new("."));
            broken = errors(&problems_of(&merged, dir))
                .into_iter()
                .map(|e| format!("Orchestrator's section cannot follow the sections as they are laid out: {e}"))
                .collect();
        }
        match (broken.is_empty(), force) {
            (true, _) => merged,
            (false, true) => default_file(base_path),
            (false, false) => return Err(WriteError::Unparsable(broken)),
        }
    } else {
        default_file(base_path)
    };
    let backup_path = backup(file)?;
    write_atomic(file, text.as_bytes())?;
    let mut created_folders = Vec::new();
    if create_folders {
        for key in WRITTEN_FOLDERS {
            let folder = base_path.join(key);
            if !folder.exists() {
                std::fs::create_dir_all(&folder).map_err(|source| WriteError::Write {
                    path: folder.display().to_string(),
                    source,
                })?;
                created_folders.push(folder.display().to_string());
            }
        }
    }
    Ok(Created {
        created: true,
        path: file.display().to_string(),
        backup_path: backup_path.map(|p| p.display().to_string()),
        created_folders,
    })
}

/// Puts a backup back in place (the current file is backed up first). `backup` must be one of the file's backups.
pub fn restore(file: &Path, backup_file: &Path) -> Result<Created, WriteError> {
    let not_a_backup = || WriteError::NotABackup(backup_file.display().to_string());
    let name = backup_file
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with(&format!("{FILE_NAME}.bak.")))
        .ok_or_else(not_a_backup)?;
    if backup_file.parent() != file.parent() {
        return Err(not_a_backup());
    }
    // Links resolved: a backup's name that links out of ComfyUI's folder (to any file on the machine) is no backup.
    let folder = file
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let resolved = crate::fs_safe::resolve_within(folder, name)
        .filter(|path| path.is_file())
        .ok_or_else(not_a_backup)?;
    exclusive(file, || restore_locked(file, &resolved))
}

fn restore_locked(file: &Path, backup_file: &Path) -> Result<Created, WriteError> {
    let bytes = std::fs::read(backup_file).map_err(|source| WriteError::Write {
        path: backup_file.display().to_string(),
        source,
    })?;
    let backup_path = backup(file)?;
    write_atomic(file, &bytes)?;
    Ok(Created {
        created: true,
        path: file.display().to_string(),
        backup_path: backup_path.map(|p| p.display().to_string()),
        created_folders: Vec::new(),
    })
}

/// Copies the file to `<file>.bak.YYYYMMDD-HHMMSS` (with `-N` when that name is taken); `None` when there is no
/// file yet.
fn backup(file: &Path) -> Result<Option<PathBuf>, WriteError> {
    if !file.exists() {
        return Ok(None);
    }
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S").to_string();
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(FILE_NAME);
    let mut target = file.with_file_name(format!("{name}.bak.{stamp}"));
    let mut n = 1;
    while target.exists() {
        target = file.with_file_name(format!("{name}.bak.{stamp}-{n}"));
        n += 1;
    }
    let bytes = std::fs::read(file).map_err(|source| WriteError::Backup {
        path: file.display().to_string(),
        source,
    })?;
    write_atomic(&target, &bytes).map_err(|error| match error {
        WriteError::Write { path, source } => WriteError::Backup { path, source },
        other => other,
    })?;
    Ok(Some(target))
}

/// Runs `work` while no other caller in this process runs work for the same file (see the locking rule above).
/// The locks live in a table keyed by the file's absolute path, each dropped when its last user is done.
fn exclusive<T>(file: &Path, work: impl FnOnce() -> T) -> T {
    static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Weak<Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let key = lock_key(file);
    let lock = {
        let mut locks = LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
        locks.retain(|_, lock| lock.strong_count() > 0);
        match locks.get(&key).and_then(Weak::upgrade) {
            Some(lock) => lock,
            None => {
                let lock = Arc::new(Mutex::new(()));
                locks.insert(key, Arc::downgrade(&lock));
                lock
            }
        }
    };
    // A writer that panicked left the file whole (the rename is atomic): the next one may go on.
    let _held = lock.lock().unwrap_or_else(PoisonError::into_inner);
    work()
}

/// One key per file however it is named: the folder resolved (symbolic links, `..`) when it exists.
fn lock_key(file: &Path) -> PathBuf {
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map_or_else(|_| absolute.clone(), |dir| dir.join(name)),
        _ => absolute,
    }
}

/// A temporary name beside `target` that no other write uses: this process's id and a counter.
fn temporary_for(target: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Temporary file beside the target (a name of its own, never an existing file), fsync, rename, fsync of the
/// folder: a crash at any point leaves the old file or the new one, and concurrent writes each put a whole file in
/// place (the last rename wins).
pub fn write_atomic(target: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let failed = |source| WriteError::Write {
        path: target.display().to_string(),
        source,
    };
    let temporary = temporary_for(target);
    // `create_new`: a name taken (a leftover of a killed process with a reused pid) is an error, never shared.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(failed)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, target)
    })();
    if let Err(error) = result {
        let _ = std::fs::remove_file(&temporary);
        return Err(failed(error));
    }
    // The rename itself is durable only once the folder is synced (Unix; Windows cannot open a folder so).
    #[cfg(unix)]
    {
        let dir = target
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(text: &str) -> (Report, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        std::fs::write(&file, text).unwrap();
        (check(&file), dir)
    }

    fn codes(report: &Report) -> Vec<&'static str> {
        report.problems.iter().map(|p| p.code).collect()
    }

    /// ComfyUI's own `extra_model_paths.yaml.example` (comments shortened).
    const COMFY_EXAMPLE: &str = "\
#config for a1111 ui
#all you have to do is change the base_path to where yours is installed
a111:
    base_path: path/to/stable-diffusion-webui/

    checkpoints: models/Stable-diffusion
    configs: models/Stable-diffusion
    vae: models/VAE
    loras: |
         models/Lora
         models/LyCORIS
    upscale_models: |
                  models/ESRGAN
                  models/RealESRGAN
                  models/SwinIR
    embeddings: embeddings
    hypernetworks: models/hypernetworks
    controlnet: models/ControlNet

#config for comfyui
#your base path should be either an existing comfy install or a central folder where you store all of your models, loras, etc.

#comfyui:
#     base_path: path/to/comfyui/
#     # You can use is_default to mark that these folders should be listed first, and used as the default dirs for eg downloads
#     #is_default: true
#     checkpoints: models/checkpoints/
#     clip: models/clip/

#other_ui:
#    base_path: path/to/ui
#    checkpoints: models/checkpoints
#    gligen: models/gligen
#    custom_nodes: path/custom_nodes
";

    #[test]
    fn comfyuis_example_reads_as_comfyui_reads_it() {
        let (report, dir) = checked(COMFY_EXAMPLE);
        assert!(report.valid, "{:?}", report.problems);
        assert_eq!(report.sections.len(), 1);
        let a111 = &report.sections[0];
        assert_eq!(a111.name, "a111");
        let base = dir.path().join("path/to/stable-diffusion-webui");
        assert_eq!(a111.base_path.as_deref(), Some(base.to_str().unwrap()));
        assert!(!a111.is_default);
        let loras = &a111.folders["loras"];
        assert_eq!(
            loras.paths,
            [
                base.join("models/Lora").display().to_string(),
                base.join("models/LyCORIS").display().to_string()
            ]
        );
        assert_eq!(a111.folders["upscale_models"].paths.len(), 3);
        assert_eq!(a111.folders.len(), 8);
        // Nothing of it exists here: each folder is a warning, not an error.
        assert!(codes(&report).contains(&"folder_missing"));
        assert!(
            report
                .problems
                .iter()
                .all(|p| p.severity == Severity::Warning)
        );
    }

    #[test]
    fn existing_folders_are_counted_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(models.join("checkpoints/sdxl")).unwrap();
        std::fs::write(models.join("checkpoints/a.safetensors"), "x").unwrap();
        std::fs::write(models.join("checkpoints/sdxl/b.ckpt"), "x").unwrap();
        std::fs::write(models.join("checkpoints/readme.txt"), "x").unwrap();
        std::fs::create_dir_all(models.join("unet")).unwrap();
        std::fs::write(models.join("unet/c.gguf.safetensors"), "x").unwrap();
        let file = dir.path().join(FILE_NAME);
        std::fs::write(
            &file,
            format!("mine:\n  base_path: {}\n  is_default: true\n  checkpoints: checkpoints\n  unet: unet\n", models.display()),
        )
        .unwrap();
        let report = check(&file);
        assert!(report.valid);
        assert!(report.sections[0].is_default);
        assert_eq!(report.sections[0].folders["checkpoints"].files, 2);
        assert_eq!(report.counts["diffusion_models"], 1);
        assert_eq!(codes(&report), ["legacy_key"]);
    }

    #[test]
    fn the_flat_layout_is_flagged() {
        let (report, _dir) = checked("base_path: F:/Models\ncheckpoints: F:/Models/checkpoints\n");
        assert!(!report.valid);
        assert_eq!(codes(&report), ["flat_layout"]);
        assert_eq!(report.problems[0].line, Some(1));
    }

    #[test]
    fn what_comfyui_fails_on_is_an_error_with_its_place() {
        for (text, code, line) in [
            ("", "empty_file", None),
            ("- a\n- b\n", "not_a_mapping", Some(1)),
            ("one: just text\n", "section_not_a_mapping", Some(1)),
            (
                "s:\n  base_path: /x\n  loras:\n    - a\n",
                "not_a_string",
                Some(4),
            ),
            ("s:\n  checkpoints: 5\n", "not_a_string", Some(2)),
            ("s:\n  checkpoints: [a\n", "yaml_syntax", Some(3)),
        ] {
            let (report, _dir) = checked(text);
            assert!(!report.valid, "{text:?}");
            let first = report
                .problems
                .iter()
                .find(|p| p.severity == Severity::Error)
                .unwrap();
            assert_eq!(
                (first.code, first.line),
                (code, line),
                "{text:?}: {:?}",
                report.problems
            );
        }
    }

    /// The "billion laughs" shape: nine levels of nine aliases each, 9^9 strings once expanded.
    fn alias_bomb() -> String {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (name, previous) in ('b'..='i').zip('a'..) {
            let items = vec![format!("*{previous}"); 9].join(",");
            text.push_str(&format!("{name}: &{name} [{items}]\n"));
        }
        text
    }

    #[test]
    fn tags_aliases_and_huge_files_are_refused_and_left_as_they_are() {
        let huge = format!(
            "mine:\n  checkpoints: ckpt\n{}",
            "# padding\n".repeat(1_100_000)
        );
        for (text, code) in [
            (
                "s:\n  checkpoints: !!python/object/apply:os.system [\"id\"]\n".to_owned(),
                "yaml_tag",
            ),
            ("s: !custom\n  checkpoints: x\n".into(), "yaml_tag"),
            (alias_bomb(), "yaml_anchor"),
            ("s:\n  checkpoints: *x\n".into(), "yaml_syntax"),
            ("a: 1\n---\nb: 2\n".into(), "several_documents"),
            (huge, "file_too_large"),
        ] {
            let (report, dir) = checked(&text);
            let what = &text[..text.len().min(60)];
            assert_eq!(codes(&report), [code], "{what:?}");
            assert!(!report.valid);
            // Nothing is written over it, backed up, or left beside it (not even the model folders asked for)
            // without force.
            let file = dir.path().join(FILE_NAME);
            let refused = create_default(&file, &dir.path().join("models"), true, false);
            assert!(
                matches!(&refused, Err(WriteError::Unparsable(problems)) if !problems.is_empty()),
                "{what:?}: {refused:?}"
            );
            assert!(
                std::fs::read(&file).unwrap() == text.as_bytes(),
                "{what:?} changed"
            );
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(names, [FILE_NAME], "{what:?}");
        }
        assert_eq!(alias_bomb().matches('*').count(), 8 * 9);
    }

    #[test]
    fn concurrent_creates_and_restores_run_one_after_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        let users =
            "# mine\na111:\n    base_path: /srv/a1111\n    checkpoints: models/Stable-diffusion\n";
        std::fs::write(&file, users).unwrap();
        let first = create_default(&file, Path::new("/models/first"), false, false).unwrap();
        let backup = PathBuf::from(first.backup_path.unwrap());
        let bases: Vec<PathBuf> = (0..12)
            .map(|i| PathBuf::from(format!("/models/{i}")))
            .collect();
        let answers: Vec<Created> = std::thread::scope(|scope| {
            let running: Vec<_> = bases
                .iter()
                .enumerate()
                .map(|(i, base)| {
                    let (file, backup) = (&file, &backup);
                    scope.spawn(move || {
                        if i % 4 == 3 {
                            restore(file, backup)
                        } else {
                            create_default(file, base, false, false)
                        }
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|thread| thread.join().unwrap().unwrap())
                .collect()
        });
        // Each write backed up the whole file the one before it left, under a name of its own.
        let backups: std::collections::HashSet<String> = answers
            .iter()
            .map(|a| a.backup_path.clone().expect("a backup"))
            .collect();
        assert_eq!(backups.len(), answers.len());
        for backup in &backups {
            let report = check(Path::new(backup));
            assert!(report.valid, "{backup}: {:?}", report.problems);
            assert_eq!(report.sections[0].name, "a111", "{backup}");
        }
        let now = std::fs::read_to_string(&file).unwrap();
        assert!(
            now == users || bases.iter().any(|base| now == merged_file(users, base)),
            "not one of the writes:\n{now}"
        );
        let report = check(&file);
        assert!(report.valid, "{:?}", report.problems);
        assert_eq!(report.sections[0].name, "a111");
        assert!(report.sections.len() <= 2);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn unknown_keys_custom_nodes_and_empty_sections_are_warnings() {
        let (report, _dir) =
            checked("s:\n  chekpoints: a\n  custom_nodes: b\nempty:\nbare:\n  base_path: /\n");
        assert!(report.valid);
        let mut found = codes(&report);
        found.sort_unstable();
        found.dedup();
        assert_eq!(
            found,
            [
                "custom_nodes",
                "empty_section",
                "folder_missing",
                "unknown_key"
            ]
        );
    }

    #[test]
    fn the_written_file_reads_back_with_only_known_keys() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("it's models");
        let file = dir.path().join(FILE_NAME);
        let created = create_default(&file, &base, true, false).unwrap();
        assert_eq!(created.backup_path, None);
        assert_eq!(created.created_folders.len(), WRITTEN_FOLDERS.len());
        let report = check(&file);
        assert!(
            report.valid && report.problems.iter().all(|p| p.code == "legacy_key"),
            "{:?}",
            report.problems
        );
        let section = &report.sections[0];
        assert_eq!(section.base_path.as_deref(), Some(base.to_str().unwrap()));
        assert!(section.is_default);
        assert!(section.folders.keys().all(|k| is_folder_key(k)));
        assert_eq!(section.folders.len(), WRITTEN_FOLDERS.len());
    }

    #[test]
    fn backup_and_restore_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        let original = "mine:\n  base_path: /srv/models\n  checkpoints: ckpt\n";
        std::fs::write(&file, original).unwrap();
        let created = create_default(&file, Path::new("/opt/models"), false, false).unwrap();
        let backup = PathBuf::from(created.backup_path.unwrap());
        assert!(
            backup
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("extra_model_paths.yaml.bak.")
        );
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), original);
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .contains("/opt/models")
        );

        let restored = restore(&file, &backup).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
        assert!(
            restored.backup_path.is_some(),
            "the replaced file was kept too"
        );
        assert!(matches!(
            restore(&file, &file),
            Err(WriteError::NotABackup(_))
        ));
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_create_keeps_the_users_sections_and_replaces_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        let users = "# my comfy set-up\na111:\n    base_path: /srv/a1111\n    checkpoints: models/Stable-diffusion\n\norchestrator:\n    base_path: /old\n    loras: loras\n\nother:\n    base_path: /srv/other\n    vae: vae\n";
        std::fs::write(&file, users).unwrap();
        create_default(&file, Path::new("/models/one"), false, false).unwrap();
        create_default(&file, Path::new("/models/two"), false, false).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        for kept in [
            "# my comfy set-up",
            "a111:",
            "models/Stable-diffusion",
            "other:",
            "base_path: /srv/other",
        ] {
            assert!(text.contains(kept), "{kept:?} lost:\n{text}");
        }
        assert!(
            !text.contains("/old") && !text.contains("/models/one"),
            "{text}"
        );
        assert_eq!(text.matches("orchestrator:").count(), 1, "{text}");
        let report = check(&file);
        assert!(report.valid, "{:?}", report.problems);
        let names: Vec<&str> = report.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a111", "other", "orchestrator"]);
    }

    #[test]
    fn an_unreadable_file_is_left_byte_for_byte_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        let broken = b"a111:\n  checkpoints: [unclosed\n\xff";
        std::fs::write(&file, broken).unwrap();
        let refused = create_default(&file, Path::new("/models"), false, false);
        assert!(matches!(refused, Err(WriteError::Unparsable(_))));
        assert_eq!(std::fs::read(&file).unwrap(), broken);
        let backups = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(".bak."))
                .count()
        };
        assert_eq!(backups(), 0);
        let forced = create_default(&file, Path::new("/models"), false, true).unwrap();
        assert_eq!(std::fs::read(forced.backup_path.unwrap()).unwrap(), broken);
        assert!(check(&file).valid);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        // A name the file system takes, but whose temporary name (longer) it refuses: the write fails before the
        // rename.
        let file = dir.path().join(format!("{}.yaml", "x".repeat(240)));
        std::fs::write(&file, "old").unwrap();
        assert!(write_atomic(&file, b"new").is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn every_write_has_a_temporary_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        assert_ne!(temporary_for(&file), temporary_for(&file));
        // Threads writing the same file at once each put a whole file in place; none of them fails.
        let payloads: Vec<Vec<u8>> = (0..16u8)
            .map(|i| vec![b'a' + i; 64 * 1024 + usize::from(i)])
            .collect();
        std::thread::scope(|scope| {
            for payload in &payloads {
                let file = &file;
                scope.spawn(move || write_atomic(file, payload).unwrap());
            }
        });
        let now = std::fs::read(&file).unwrap();
        assert!(
            payloads.contains(&now),
            "a mixed file of {} bytes",
            now.len()
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != FILE_NAME)
            .collect();
        assert!(names.is_empty(), "left behind: {names:?}");
    }
}

#[cfg(test)]
mod properties;
