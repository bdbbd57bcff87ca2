//! ComfyUI's reading rules (`utils/extra_config.py`): what each section and key of the tree means, what ComfyUI
//! would fail on at start-up (errors) and what it accepts but probably should not (warnings).

use std::path::{Component, Path, PathBuf};

use saphyr_parser::Span;

use super::yaml::Node;
use super::{
    Folder, KNOWN_FOLDERS, LEGACY_FOLDERS, MODEL_EXTENSIONS, Problem, Report, Section, Severity,
    at, problem,
};

/// ComfyUI's `load_extra_path_config`, as checks.
pub(super) fn interpret(root: &Option<Node>, base_dir: &Path, report: &mut Report) {
    let Some(sections) = top_sections(root, report) else {
        return;
    };
    for (name, name_span, value) in sections {
        if let Some(section) = read_section(name, *name_span, value, base_dir, report) {
            report.sections.push(section);
        }
    }
}

/// The file's sections; `None` when ComfyUI fails on the file as a whole (its problem reported).
fn top_sections<'a>(
    root: &'a Option<Node>,
    report: &mut Report,
) -> Option<&'a [(String, Span, Node)]> {
    let sections = match root {
        None => {
            report.problems.push(problem(
                Severity::Error,
                "empty_file",
                "the file is empty: ComfyUI fails to start on it (delete it, or give it a section)",
            ));
            return None;
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
            return None;
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
            return None;
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
        return None;
    }
    Some(sections.as_slice())
}

/// A problem in section `name`.
fn section_problem(
    name: &str,
    severity: Severity,
    code: &'static str,
    message: String,
    span: Span,
) -> Problem {
    let mut p = at(problem(severity, code, message), span);
    p.section = Some(name.to_owned());
    p
}

/// A problem at `key` in section `name`.
fn key_problem(
    name: &str,
    key: &str,
    severity: Severity,
    code: &'static str,
    message: String,
    span: Span,
) -> Problem {
    let mut p = section_problem(name, severity, code, message, span);
    p.key = Some(key.to_owned());
    p
}

/// One section and its keys; `None` for a section ComfyUI skips or fails on (its problem reported).
fn read_section(
    name: &str,
    name_span: Span,
    value: &Node,
    base_dir: &Path,
    report: &mut Report,
) -> Option<Section> {
    let entries = match value {
        node if node.is_null() => {
            report.problems.push(section_problem(
                name,
                Severity::Warning,
                "empty_section",
                format!("section {name:?} is empty; ComfyUI skips it"),
                name_span,
            ));
            return None;
        }
        Node::Mapping { entries, .. } => entries,
        other => {
            report.problems.push(section_problem(
                name,
                Severity::Error,
                "section_not_a_mapping",
                format!("section {name:?} must hold keys (base_path, folders); ComfyUI fails to start on this"),
                other.span(),
            ));
            return None;
        }
    };
    let mut section = Section {
        name: name.to_owned(),
        base_path: None,
        is_default: false,
        folders: Default::default(),
    };
    let mut base = None;
    for (key, key_span, value) in entries {
        match key.as_str() {
            "base_path" => {
                if let Some(resolved) = base_path(name, value, base_dir, report) {
                    section.base_path = Some(resolved.display().to_string());
                    base = Some(resolved);
                }
            }
            "is_default" => section.is_default = truthy(value),
            _ => {
                let found = folder(
                    name,
                    key,
                    *key_span,
                    value,
                    base.as_deref(),
                    base_dir,
                    report,
                );
                if let Some(found) = found {
                    section.folders.insert(key.clone(), found);
                }
            }
        }
    }
    if section.folders.is_empty() {
        report.problems.push(section_problem(
            name,
            Severity::Warning,
            "empty_section",
            format!("section {name:?} lists no model folder"),
            name_span,
        ));
    }
    Some(section)
}

/// `base_path` resolved against the file's folder; `None` when it is not a path (its problem reported).
fn base_path(name: &str, value: &Node, base_dir: &Path, report: &mut Report) -> Option<PathBuf> {
    match value {
        Node::Scalar { text, .. } if !value.is_null() => {
            let expanded = PathBuf::from(expand(text));
            let resolved = normalise(&if expanded.is_absolute() {
                expanded
            } else {
                base_dir.join(expanded)
            });
            if !resolved.is_dir() {
                report.problems.push(key_problem(
                    name,
                    "base_path",
                    Severity::Warning,
                    "base_path_missing",
                    format!("base_path {} does not exist", resolved.display()),
                    value.span(),
                ));
            }
            Some(resolved)
        }
        _ => {
            report.problems.push(key_problem(
                name,
                "base_path",
                Severity::Error,
                "not_a_string",
                "base_path must be a path".into(),
                value.span(),
            ));
            None
        }
    }
}

/// A folder key's paths, each resolved against `base` (else the file's folder) and its files counted; `None` when
/// its value is not text (its problem reported).
fn folder(
    name: &str,
    key: &str,
    key_span: Span,
    value: &Node,
    base: Option<&Path>,
    base_dir: &Path,
    report: &mut Report,
) -> Option<Folder> {
    let text = match value {
        Node::Scalar { text, plain, .. } if !(value.is_null() || *plain && non_string(text)) => {
            text
        }
        _ => {
            report.problems.push(key_problem(
                name,
                key,
                Severity::Error,
                "not_a_string",
                format!("{key} must be a path, or several paths one a line (a `|` block); ComfyUI fails to start on this"),
                value.span(),
            ));
            return None;
        }
    };
    warn_key_name(name, key, key_span, report);
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
                name,
                key,
                Severity::Warning,
                "trailing_space",
                format!("{line:?} ends in spaces, which ComfyUI keeps as part of the path"),
                value.span(),
            ));
        }
        let resolved = normalise(&match base {
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
                name,
                key,
                Severity::Warning,
                "folder_missing",
                format!("{} does not exist", resolved.display()),
                value.span(),
            ));
        }
        folder.paths.push(resolved.display().to_string());
        folder.exist.push(exists);
    }
    Some(folder)
}

/// A warning for a key ComfyUI reads otherwise than written: an old name, `custom_nodes` (code it runs), or one
/// that is no model folder.
fn warn_key_name(name: &str, key: &str, key_span: Span, report: &mut Report) {
    if let Some((_, new)) = LEGACY_FOLDERS.iter().find(|(old, _)| *old == key) {
        report.problems.push(key_problem(
            name,
            key,
            Severity::Warning,
            "legacy_key",
            format!("{key} is an old name; ComfyUI reads it as {new}"),
            key_span,
        ));
    } else if key == "custom_nodes" {
        report.problems.push(key_problem(
            name,
            key,
            Severity::Warning,
            "custom_nodes",
            "custom_nodes lists folders of Python code that ComfyUI imports and runs at start-up: \
             make sure you trust every one"
                .into(),
            key_span,
        ));
    } else if !KNOWN_FOLDERS.contains(&key) {
        report.problems.push(key_problem(
            name,
            key,
            Severity::Warning,
            "unknown_key",
            format!("{key} is not a ComfyUI model folder; ComfyUI makes a new category of it that lists every file (a typo?)"),
            key_span,
        ));
    }
}

pub(super) fn is_folder_key(key: &str) -> bool {
    KNOWN_FOLDERS.contains(&key) || LEGACY_FOLDERS.iter().any(|(old, _)| *old == key)
}

/// A plain scalar PyYAML reads as a number or a boolean (no `.split`, so ComfyUI fails).
pub(super) fn non_string(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off"
    ) || text.parse::<f64>().is_ok()
}

pub(super) fn truthy(node: &Node) -> bool {
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
pub(super) fn expand(path: &str) -> String {
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
pub(super) fn normalise(path: &Path) -> PathBuf {
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
pub(super) fn count_files(dir: &Path, key: &str) -> (u64, bool) {
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
