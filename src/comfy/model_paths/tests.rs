use super::rules::is_folder_key;
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
