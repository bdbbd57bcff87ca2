//! The writer: Orchestrator's own section merged into the file in its format, backups, restore, and the lock that
//! makes a read-back-up-replace one step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use serde::Serialize;

use super::rules::interpret;
use super::yaml::parse;
use super::{FILE_NAME, Problem, Report, Severity, WRITTEN_FOLDERS, check};

/// The text of a new file: one section in ComfyUI's format, only known model-folder keys.
pub fn default_file(base_path: &Path) -> String {
    own_section(base_path)
}

pub(super) const SECTION_START: &str =
    "# >>> Orchestrator's section (its next create replaces it; edit the other sections freely)";
pub(super) const SECTION_END: &str = "# <<< Orchestrator's section";

/// Orchestrator's own section, between markers so a later create finds and replaces exactly it.
pub(super) fn own_section(base_path: &Path) -> String {
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
pub(super) fn quoted(text: &str) -> String {
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
pub(super) fn unclosed_section(text: &str) -> Option<usize> {
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
pub(super) fn problems_of(text: &str, base_dir: &Path) -> Vec<Problem> {
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

pub(super) fn create_default_locked(
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

pub(super) fn restore_locked(file: &Path, backup_file: &Path) -> Result<Created, WriteError> {
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
pub(super) fn backup(file: &Path) -> Result<Option<PathBuf>, WriteError> {
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
pub(super) fn exclusive<T>(file: &Path, work: impl FnOnce() -> T) -> T {
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
pub(super) fn lock_key(file: &Path) -> PathBuf {
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map_or_else(|_| absolute.clone(), |dir| dir.join(name)),
        _ => absolute,
    }
}

/// [`crate::fs_safe::write_atomic`], its error naming the file.
pub fn write_atomic(target: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    crate::fs_safe::write_atomic(target, bytes).map_err(|source| WriteError::Write {
        path: target.display().to_string(),
        source,
    })
}
