//! The map's invariants, checked on the source tree: each kind of outside effect has one home, no file grows past
//! what a newcomer can read, and the crate's own layout names every module.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path, text));
            }
        }
    }
    files.sort();
    files
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code of a file: comments (`//`, `//!`, `///`) left out, so prose may name anything.
fn code(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The files outside `homes` (folders or files under `src/`) whose code mentions any of `needles`.
fn offenders(needles: &[&str], homes: &[&str]) -> Vec<String> {
    let root = src();
    sources(&root)
        .into_iter()
        .filter(|(path, _)| {
            let relative = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            !homes.iter().any(|home| relative.starts_with(home))
        })
        .filter(|(_, text)| {
            let code = code(text);
            needles.iter().any(|needle| code.contains(needle))
        })
        .map(|(path, _)| path.strip_prefix(&root).unwrap().display().to_string())
        .collect()
}

#[test]
fn only_the_store_runs_sql() {
    assert_eq!(
        offenders(&["sqlx", "query!(", "query_as("], &["store/"]),
        Vec::<String>::new()
    );
}

#[test]
fn only_http_and_ui_know_axum() {
    assert_eq!(
        offenders(&["axum"], &["http/", "ui/"]),
        Vec::<String>::new()
    );
}

#[test]
fn only_http_and_ui_answer_with_api_errors() {
    // The domains return their own error enums; which HTTP status each gets is decided in `error.rs`.
    assert_eq!(
        offenders(&["ApiError", "ApiResult"], &["http/", "ui/", "error.rs"]),
        Vec::<String>::new()
    );
}

#[test]
fn every_error_code_is_a_code() {
    // A code typed as a string literal next to `"code"` would bypass the table in `codes.rs` (and its docs).
    assert_eq!(
        offenders(&[r#""code": ""#, r#"code: ""#], &["codes.rs"]),
        Vec::<String>::new()
    );
}

#[test]
fn only_service_starts_processes() {
    // Started through std's or tokio's `process::Command` or process-wrap, however imported.
    let starts = [
        "process::Command",
        "process::{",
        "process_wrap",
        "CommandWrap",
    ];
    assert_eq!(offenders(&starts, &["service/"]), Vec::<String>::new());
}

#[test]
fn no_source_file_is_over_700_lines_in_the_crate_or_its_test_doubles() {
    let testkit = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/testkit/src");
    let long: Vec<(String, usize)> = sources(&src())
        .into_iter()
        .chain(sources(&testkit))
        .map(|(path, text)| (path.display().to_string(), text.lines().count()))
        .filter(|(_, lines)| *lines > 700)
        .collect();
    assert_eq!(long, Vec::<(String, usize)>::new());
}

#[test]
fn the_crate_layout_names_every_module() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let layout: String = lib
        .lines()
        .take_while(|line| line.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<&str> = lib
        .lines()
        .filter_map(|line| {
            line.strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))
        })
        .map(|name| name.trim_end_matches(';'))
        .filter(|name| !layout.contains(&format!("[`{name}`]")))
        .collect();
    assert_eq!(missing, Vec::<&str>::new());
}
