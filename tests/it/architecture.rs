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
fn no_source_file_is_over_700_lines_in_the_crate_its_tests_or_its_test_doubles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let long: Vec<(String, usize)> = sources(&src())
        .into_iter()
        .chain(sources(&root.join("crates/testkit/src")))
        .chain(sources(&root.join("tests")))
        .chain(sources(&root.join("benches")))
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

/// The top-level module (`src/<name>.rs` or `src/<name>/`) a file of `src/` belongs to; `None` for the crate root.
fn top_module(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).unwrap();
    let first = relative.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// The top-level modules a file's code names through `crate::<module>` or `crate::{<module>, …}`.
fn named_modules(code: &str) -> std::collections::BTreeSet<String> {
    let word = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = std::collections::BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            names.insert(word(rest));
            continue;
        };
        // The group's first-level items: `a`, `b::c`, `d::{e, f}` name `a`, `b` and `d`.
        let mut depth = 0;
        let mut item_start = true;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                _ if item_start && !c.is_whitespace() => {
                    names.insert(word(&group[i..]));
                    item_start = false;
                }
                _ => {}
            }
        }
    }
    names.retain(|name| name.starts_with(|c: char| c.is_ascii_lowercase()));
    names
}

#[test]
fn imports_are_read_in_groups_too() {
    let code = "use crate::{app::AppState, http, jobs::{a, b}};\nlet x = crate::money::usd(1);";
    let names: Vec<String> = named_modules(code).into_iter().collect();
    assert_eq!(names, ["app", "http", "jobs", "money"]);
}

/// Which top-level modules each one imports, with a file that does.
fn imports() -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
    let root = src();
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
        Default::default();
    for (path, text) in sources(&root) {
        let Some(from) = top_module(&root, &path) else {
            continue;
        };
        let file = path.strip_prefix(&root).unwrap().display().to_string();
        let edges = graph.entry(from.clone()).or_default();
        for to in named_modules(&code(&text)) {
            if to != from {
                edges.entry(to).or_insert_with(|| file.clone());
            }
        }
    }
    graph
}

/// A cycle through `start`, as the files that close it, if there is one.
fn cycle_through(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    start: &str,
) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), Vec::<String>::new())];
    let mut seen = std::collections::BTreeSet::new();
    while let Some((module, path)) = stack.pop() {
        for (next, file) in graph.get(&module).into_iter().flatten() {
            let mut path = path.clone();
            path.push(format!("{module} → {next} ({file})"));
            if next == start {
                return Some(path);
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), path));
            }
        }
    }
    None
}

#[test]
fn the_top_level_modules_import_one_another_without_a_cycle() {
    let graph = imports();
    assert!(graph.len() > 20, "the graph was read: {graph:?}");
    let cycles: Vec<Vec<String>> = graph
        .keys()
        .filter_map(|module| cycle_through(&graph, module))
        .collect();
    assert_eq!(cycles, Vec::<Vec<String>>::new());
}

#[test]
fn the_lower_floors_do_not_import_the_upper_ones() {
    let graph = imports();
    let forbidden = [
        ("jobs", "flux"),
        ("store", "jobs"),
        ("assets", "jobs"),
        ("config", "service"),
        ("config", "store"),
        ("model", "jobs"),
        ("money", "jobs"),
        ("money", "flux"),
    ];
    let found: Vec<String> = forbidden
        .iter()
        .filter_map(|(from, to)| {
            let file = graph.get(*from)?.get(*to)?;
            Some(format!("{from} imports {to} in {file}"))
        })
        .collect();
    assert_eq!(found, Vec::<String>::new());
}

/// The files under `folder` (of `src/`) whose code mentions any of `needles`.
fn mentions_in(folder: &str, needles: &[&str]) -> Vec<String> {
    let root = src();
    sources(&root.join(folder))
        .into_iter()
        .filter(|(_, text)| needles.iter().any(|needle| code(text).contains(needle)))
        .map(|(path, _)| path.strip_prefix(&root).unwrap().display().to_string())
        .collect()
}

#[test]
fn the_job_pipeline_points_one_way() {
    // The ledger records for every driver and knows none; FLUX's driver records through the ledger, not
    // ComfyUI's runner; the runner's send path never calls back into the submit that called it.
    let runner = ["jobs::runner", "super::runner", "crate::flux"];
    assert_eq!(mentions_in("jobs/ledger", &runner), Vec::<String>::new());
    assert_eq!(mentions_in("flux", &["jobs::runner"]), Vec::<String>::new());
    let callers = ["jobs::paid", "super::paid", "jobs::submit", "super::submit"];
    assert_eq!(mentions_in("jobs/runner", &callers), Vec::<String>::new());
}

#[test]
fn only_comfy_names_comfyuis_routes_or_reads_its_queue() {
    // Orchestrator's calls to ComfyUI are `comfy::api`'s typed methods; the gateway classifies a relayed path with
    // `comfy::routes`.
    let routes = [
        r#""/queue"#,
        r#""/history"#,
        r#""/prompt"#,
        r#""/interrupt"#,
        r#""/view"#,
        r#""/object_info"#,
        r#""/system_stats"#,
        r#""/upload/image"#,
        "queue_running",
        "queue_pending",
        "orchestrator_job",
    ];
    assert_eq!(offenders(&routes, &["comfy/"]), Vec::<String>::new());
}

#[test]
fn one_recovery_loop_takes_jobs_over() {
    // Restart and takeover, for every backend, are `jobs::recovery`'s: one loop over the drivers.
    let callers: Vec<String> = sources(&src())
        .into_iter()
        .filter(|(path, text)| {
            !path.ends_with("store/fleet.rs")
                && (code(text).contains(".expired_claims(") || code(text).contains(".take_over("))
        })
        .map(|(path, _)| path.strip_prefix(src()).unwrap().display().to_string())
        .collect();
    assert_eq!(callers, ["jobs/recovery.rs"]);
}

/// Every function with a body in `text` (free, method, a trait's default, nested), as its name, the line of its
/// `fn` and its length in lines to its closing brace; macro bodies are not read.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    use syn::visit::Visit;

    #[derive(Default)]
    struct Found(Vec<(String, usize, usize)>);

    impl Found {
        fn add(&mut self, sig: &syn::Signature, block: &syn::Block) {
            let first = sig.fn_token.span.start().line;
            let last = block.brace_token.span.close().end().line;
            self.0
                .push((sig.ident.to_string(), first, last - first + 1));
        }
    }

    impl<'ast> Visit<'ast> for Found {
        fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
            self.add(&f.sig, &f.block);
            syn::visit::visit_item_fn(self, f);
        }
        fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
            self.add(&f.sig, &f.block);
            syn::visit::visit_impl_item_fn(self, f);
        }
        fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
            if let Some(block) = &f.default {
                self.add(&f.sig, block);
            }
            syn::visit::visit_trait_item_fn(self, f);
        }
    }

    let file = syn::parse_file(text).expect("the crate's source parses");
    let mut found = Found::default();
    found.visit_file(&file);
    found.0
}

#[test]
fn functions_are_read_with_their_lines() {
    let text = "fn a() -> [u8; 2] {\n    let _ = ('{', \"}\");\n    [0, 1]\n}\ntrait T {\n    fn b(&self);\n    \
                fn c(&self) {}\n}\nimpl S {\n    fn d() {\n        fn e() {}\n    }\n}\n";
    let names: Vec<(String, usize, usize)> = functions(text);
    let expected = [("a", 1, 4), ("c", 7, 1), ("d", 10, 3), ("e", 11, 1)];
    assert_eq!(
        names,
        expected.map(|(n, line, lines)| (n.to_owned(), line, lines))
    );
}

#[test]
fn no_function_is_over_100_lines() {
    let root = src();
    let files = sources(&root);
    let read: usize = files.iter().map(|(_, text)| functions(text).len()).sum();
    assert!(read > 1000, "the functions were read: {read}");
    let long: Vec<String> = files
        .into_iter()
        .flat_map(|(path, text)| {
            let file = path.strip_prefix(&root).unwrap().display().to_string();
            functions(&text)
                .into_iter()
                .filter(|(_, _, lines)| *lines > 100)
                .map(move |(name, line, lines)| format!("{file}:{line} {name} ({lines} lines)"))
        })
        .collect();
    assert_eq!(long, Vec::<String>::new());
}

#[test]
fn no_file_of_the_crate_is_over_600_lines() {
    let long: Vec<(String, usize)> = sources(&src())
        .into_iter()
        .map(|(path, text)| (path.display().to_string(), text.lines().count()))
        .filter(|(_, lines)| *lines > 600)
        .collect();
    assert_eq!(long, Vec::<(String, usize)>::new());
}
