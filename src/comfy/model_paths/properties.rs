//! Property tests of the `extra_model_paths.yaml` reader and writer: the reader never panics, whatever the bytes;
//! the writer only ever writes Orchestrator's section with known model-folder keys, whatever the base path.

use super::rules::is_folder_key;
use super::writer::{SECTION_END, SECTION_START, problems_of};
use super::yaml::{Node, parse};
use super::*;
use proptest::prelude::*;

/// YAML-ish text: the pieces model-folder files are made of, and the ones an attacker would reach for.
fn yamlish() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        6 => prop::sample::select(vec![
            "a:", "comfyui:", "orchestrator:", "base_path:", "is_default:", "checkpoints:", "custom_nodes:",
            "unet:", "clip:", " ", "  ", "    ", "\t", "\n", "\r\n", "  - ", "- ", "&x ", "*x", "!!python/object:os.system ",
            "!!str ", "!tag ", "|", "|-", ">", "'", "\"", "''", "\\", "#", "---", "...", "%YAML 1.1\n", "%TAG ! x\n",
            "? ", ": ", "{", "}", "[", "]", ",", "~", "null", "true", "1e3", "0x10", "/models", "C:\\models",
            "$HOME", "~/models", "${X}", "%X%", "\u{feff}", "\u{85}", "\u{2028}", "\0", "\u{7f}", "é",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_/ ]{1,8}",
        1 => any::<String>(),
    ];
    prop::collection::vec(fragment, 0..40).prop_map(|parts| parts.concat())
}

/// Nesting a model-folder file never has: flow and block, past the depth limit.
fn deep() -> impl Strategy<Value = String> {
    (
        1usize..40,
        prop::sample::select(vec!["[", "{", "- ", "a:\n "]),
    )
        .prop_map(|(depth, open)| match open {
            "a:\n " => (0..depth)
                .map(|d| format!("{}k{d}:\n", " ".repeat(d)))
                .collect(),
            other => other.repeat(depth),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any text: a report, never a panic; a refusal points inside the text.
    #[test]
    fn any_text_is_read_without_panicking(text in prop_oneof![4 => yamlish(), 1 => deep()]) {
        let dir = tempfile::tempdir().unwrap();
        for problem in &problems_of(&text, dir.path()) {
            if let Some(line) = problem.line {
                prop_assert!(line <= text.lines().count() + 1, "{problem:?} in {text:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any bytes in the file (not UTF-8, NUL, huge, nested): `check` answers a report.
    #[test]
    fn any_file_is_checked_without_panicking(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            yamlish().prop_map(String::into_bytes),
            deep().prop_map(String::into_bytes),
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        std::fs::write(&file, &bytes).unwrap();
        let report = check(&file);
        prop_assert!(report.exists);
        prop_assert_eq!(
            report.valid,
            !report.problems.iter().any(|p| p.severity == Severity::Error)
        );
    }
}

/// A file a user could have written: sections (Orchestrator's among them, by hand or between its markers) of
/// folder keys, comments and blank lines, now and then indented or quoted.
fn user_file() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "base_path",
        "is_default",
        "checkpoints",
        "loras",
        "custom_nodes",
        "unet",
        "clip",
        "my_stuff",
    ]);
    let value = prop::sample::select(vec![
        "/models",
        "models/",
        "'/a b'",
        "\"/x\"",
        "|\n      a/\n      b/",
        "true",
        "C:\\m",
        "~/m",
    ]);
    let section = (
        prop::sample::select(vec![
            "orchestrator",
            "comfyui",
            "a",
            "'orchestrator'",
            "\"orchestrator\"",
            "orchestrator ",
            "x y",
        ]),
        prop::sample::select(vec!["", "", "", " "]),
        prop::collection::vec((key, value), 0..5),
        prop::sample::select(vec!["", "# a comment\n", "\n", SECTION_START, SECTION_END]),
    )
        .prop_map(|(name, indent, entries, extra)| {
            let mut text = format!("{extra}\n{indent}{name}:\n");
            for (key, value) in entries {
                text.push_str(&format!("{indent}    {key}: {value}\n"));
            }
            text
        });
    prop::collection::vec(section, 0..4).prop_map(|sections| sections.concat())
}

/// The keys Orchestrator may write into its section.
fn allowed_key(key: &str) -> bool {
    key == "base_path" || key == "is_default" || (is_folder_key(key) && key != "custom_nodes")
}

/// Orchestrator's section as the reader sees it: its keys, and `base_path` as written.
fn own_section_of(text: &str) -> Result<(Vec<String>, String), TestCaseError> {
    let root = parse(text).map_err(|p| TestCaseError::fail(format!("{p:?} in {text:?}")))?;
    let Some(Node::Mapping { entries, .. }) = root else {
        return Err(TestCaseError::fail(format!("not a mapping: {text:?}")));
    };
    // PyYAML keeps the last of duplicate keys: that is the section ComfyUI reads.
    let Some((_, _, Node::Mapping { entries, .. })) = entries
        .iter()
        .rev()
        .find(|(name, _, _)| name == "orchestrator")
    else {
        return Err(TestCaseError::fail(format!(
            "no orchestrator section: {text:?}"
        )));
    };
    let keys = entries.iter().map(|(key, _, _)| key.clone()).collect();
    let base = entries
        .iter()
        .find_map(|(key, _, value)| match (key.as_str(), value) {
            ("base_path", Node::Scalar { text, .. }) => Some(text.clone()),
            _ => None,
        })
        .unwrap_or_default();
    Ok((keys, base))
}

/// Characters PyYAML's reader accepts anywhere in a file (its `NON_PRINTABLE` complement): one outside it and
/// ComfyUI fails to start.
fn pyyaml_printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || c >= '\u{10000}'
}

/// A base path as a user could type it: absolute, with anything after the root.
fn base_path() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        4 => prop::sample::select(vec![
            "models", "/", "\\", " ", "'", "''", "\"", ":", ": ", " #", "#", "\n", "\r", "\t", "\n  custom_nodes: /x",
            "\ncustom_nodes: /evil\n", "\n---\n", "\n...\n", "{", "[", "&a", "*a", "!!python/object", "|", ">", "%",
            "\u{85}", "\u{2028}", "\u{feff}", "\0", "\u{7f}", "\u{1b}", "é", "模型", "\u{fffe}",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    (
        prop::sample::select(vec!["/", "C:\\", "\\\\server\\share\\"]),
        prop::collection::vec(fragment, 0..8),
    )
        .prop_map(|(root, parts)| format!("{root}{}", parts.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the base path, the new file is one `orchestrator` section of known folder keys, its base_path
    /// reads back exactly as given, and every character is one ComfyUI's YAML reader accepts.
    #[test]
    fn a_new_file_holds_only_known_folders(base in base_path()) {
        let text = default_file(Path::new(&base));
        prop_assert!(text.chars().all(pyyaml_printable), "{base:?} -> {text:?}");
        let root = parse(&text).map_err(|p| TestCaseError::fail(format!("{p:?} in {text:?}")))?;
        let Some(Node::Mapping { entries, .. }) = &root else {
            return Err(TestCaseError::fail(format!("not a mapping: {text:?}")));
        };
        prop_assert_eq!(entries.len(), 1, "{:?}", text);
        let (keys, read_base) = own_section_of(&text)?;
        prop_assert!(keys.iter().all(|k| allowed_key(k)), "{keys:?}");
        let mut want = vec!["base_path".to_owned(), "is_default".to_owned()];
        want.extend(WRITTEN_FOLDERS.iter().map(|k| k.to_string()));
        prop_assert_eq!(keys, want);
        prop_assert_eq!(read_base, Path::new(&base).display().to_string(), "{:?}", text);
    }

    /// Merged into any file the reader accepts, Orchestrator's section (the one ComfyUI reads) still holds only
    /// known folder keys and the base path as given, whenever the merge reads at all (when it does not,
    /// `create_default` refuses it: see the next property).
    #[test]
    fn a_merged_file_holds_only_known_folders_in_its_own_section(
        existing in prop_oneof![3 => user_file(), 1 => yamlish()],
        base in base_path(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        if problems_of(&existing, dir.path()).iter().any(|p| p.severity == Severity::Error) {
            // `create_default` never merges into a file the reader refuses.
            return Ok(());
        }
        let text = merged_file(&existing, Path::new(&base));
        if parse(&text).is_ok() {
            let (keys, read_base) = own_section_of(&text)?;
            prop_assert!(keys.iter().all(|k| allowed_key(k)), "{keys:?} in {text:?}");
            prop_assert_eq!(read_base, Path::new(&base).display().to_string(), "{:?}", text);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// What `create_default` leaves: a file ComfyUI reads without an error, whose Orchestrator section holds only
    /// known folder keys and the base path as given; or, refused, the old file byte for byte.
    #[test]
    fn create_writes_a_readable_file_of_known_folders_or_nothing(
        existing in prop::option::of(yamlish()),
        base in base_path(),
        force in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        if let Some(existing) = &existing {
            std::fs::write(&file, existing).unwrap();
        }
        match create_default(&file, Path::new(&base), false, force) {
            Ok(_) => {
                let report = check(&file);
                let errors: Vec<_> = report
                    .problems
                    .iter()
                    .filter(|p| p.severity == Severity::Error)
                    .collect();
                prop_assert!(errors.is_empty(), "{errors:?} after {existing:?}");
                let text = std::fs::read_to_string(&file).unwrap();
                prop_assert!(text.chars().all(pyyaml_printable), "{text:?}");
                let (keys, read_base) = own_section_of(&text)?;
                prop_assert!(keys.iter().all(|k| allowed_key(k)), "{keys:?} in {text:?}");
                prop_assert_eq!(read_base, Path::new(&base).display().to_string());
            }
            Err(_) => match &existing {
                Some(existing) => prop_assert_eq!(&std::fs::read_to_string(&file).unwrap(), existing),
                None => prop_assert!(!file.exists()),
            },
        }
    }
}

/// A backup's name that is a link out of ComfyUI's folder is refused; one to a backup inside it is restored.
#[cfg(unix)]
#[test]
fn a_backup_that_links_out_of_the_folder_is_not_restored() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.py");
    std::fs::write(&secret, "import os\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(FILE_NAME);
    std::fs::write(&file, "a:\n  base_path: /x\n").unwrap();
    let link = dir.path().join(format!("{FILE_NAME}.bak.20250101-000000"));
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    assert!(matches!(
        restore(&file, &link),
        Err(WriteError::NotABackup(_))
    ));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "a:\n  base_path: /x\n"
    );

    let real = dir.path().join(format!("{FILE_NAME}.bak.20250102-000000"));
    std::fs::write(&real, "b:\n  base_path: /y\n").unwrap();

    // A link to a real backup beside the file is followed.
    let alias = dir.path().join(format!("{FILE_NAME}.bak.latest"));
    std::os::unix::fs::symlink(&real, &alias).unwrap();
    restore(&file, &alias).unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "b:\n  base_path: /y\n"
    );
}

/// Nesting far past the limit, in one long line, is refused quickly and without a stack overflow.
#[test]
fn very_deep_nesting_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for text in [
        "[".repeat(200_000),
        "{a: ".repeat(100_000),
        "- ".repeat(100_000),
    ] {
        let problems = problems_of(&text, dir.path());
        assert!(
            problems.iter().any(|p| p.severity == Severity::Error),
            "{problems:?}"
        );
    }
}

/// Found by `a_new_file_holds_only_known_folders`: the base path `/\n` was written inside single quotes, which
/// YAML folds across lines and which this reader (and PyYAML, at a smaller indent) refuse; a control character
/// made PyYAML refuse the whole file. Such a path is now written double-quoted with escapes and reads back as given.
#[test]
fn a_base_path_with_line_breaks_or_control_characters_reads_back_exactly() {
    for base in [
        "/\n",
        "/models\ncustom_nodes: /evil",
        "/a\r\n---\nb",
        "/x\u{1b}[31m",
        "/\u{85}\u{2028}",
        "/\0",
        "/a\"b\\c\t",
        "/\u{fffe}",
    ] {
        let text = default_file(Path::new(base));
        assert!(text.chars().all(pyyaml_printable), "{text:?}");
        let (keys, read_base) = own_section_of(&text).unwrap();
        assert!(keys.iter().all(|k| allowed_key(k)), "{keys:?}");
        assert_eq!(read_base, base, "{text:?}");
    }
    // An everyday path is written as before, single-quoted.
    assert!(default_file(Path::new("/srv/models")).contains("base_path: '/srv/models'\n"));
    assert!(default_file(Path::new("C:\\AI\\it's")).contains("base_path: 'C:\\AI\\it''s'\n"));
}

/// Found by `a_merged_file_holds_only_known_folders_in_its_own_section`: a file whose sections are indented
/// (` a:`), valid on its own, became a file ComfyUI fails on once Orchestrator's section was added after it. It is
/// now refused like an unreadable file (left byte for byte), and replaced whole, after a backup, when forced.
#[test]
fn a_file_a_section_cannot_follow_is_left_alone_unless_forced() {
    for existing in [" a:\n   base_path: /x\n", "{a: {base_path: /x}}\n"] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        std::fs::write(&file, existing).unwrap();
        assert!(
            !problems_of(existing, dir.path())
                .iter()
                .any(|p| p.severity == Severity::Error),
            "{existing:?} reads on its own"
        );
        let refused = create_default(&file, Path::new("/models"), false, false).unwrap_err();
        assert!(matches!(refused, WriteError::Unparsable(_)), "{refused}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), existing);
        let created = create_default(&file, Path::new("/models"), false, true).unwrap();
        assert!(created.backup_path.is_some());
        assert!(check(&file).valid, "{:?}", check(&file).problems);
    }
}

/// Found by `create_writes_a_readable_file_of_known_folders_or_nothing`: a file with a control character in a
/// comment (`#\u{7f}`) read as valid here, but PyYAML refuses such a file whole, so ComfyUI failed to start on it
/// (and a create kept it). It is now an error with its place, and a create leaves it alone unless forced.
#[test]
fn a_character_pyyaml_refuses_is_an_error_even_in_a_comment() {
    let dir = tempfile::tempdir().unwrap();
    for (text, line, column) in [
        ("#\u{7f}", 1, 2),
        ("a:\n  base_path: /x\u{0}\n", 2, 16),
        ("a:\n  # \u{1b}[31m\n", 2, 5),
        ("\u{fffe}", 1, 1),
    ] {
        let problems = problems_of(text, dir.path());
        let refusal = problems
            .iter()
            .find(|p| p.code == "unprintable_character")
            .unwrap_or_else(|| panic!("{text:?}: {problems:?}"));
        assert_eq!(refusal.severity, Severity::Error);
        assert_eq!(
            (refusal.line, refusal.column),
            (Some(line), Some(column)),
            "{text:?}"
        );
        let file = dir.path().join(FILE_NAME);
        std::fs::write(&file, text).unwrap();
        assert!(!check(&file).valid);
        assert!(matches!(
            create_default(&file, Path::new("/models"), false, false),
            Err(WriteError::Unparsable(_))
        ));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    }
    // Tabs, line breaks and printable Unicode are fine.
    assert!(
        !problems_of("a:\r\n\tbase_path: /модели\n", dir.path())
            .iter()
            .any(|p| p.code == "unprintable_character")
    );
}
