//! ComfyUI's extra_model_paths.yaml through the API and the CLI.

use std::path::Path;
use std::process::{Command, Stdio};

use orchestrator::comfy::model_paths;
use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;

use crate::support::{TestApp, error_code};

async fn app_for(comfy: &FakeComfy, comfy_dir: &Path, models_dir: Option<&Path>) -> TestApp {
    let comfy_dir = comfy_dir.display().to_string();
    let models_dir = models_dir.map(|d| d.display().to_string());
    TestApp::spawn_with(&comfy.url(), move |s| {
        s.comfy_dir = Some(comfy_dir);
        s.models_dir = models_dir;
    })
    .await
}

#[tokio::test]
async fn create_check_back_up_and_restore_through_the_api() {
    let comfy = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let comfy_dir = dir.path().join("ComfyUI");
    std::fs::create_dir(&comfy_dir).unwrap();
    let models = dir.path().join("Models");
    let app = app_for(&comfy, &comfy_dir, None).await;

    let report = app.get_json("/api/comfy/validate-paths").await;
    assert_eq!(
        (report["exists"].as_bool(), report["valid"].as_bool()),
        (Some(false), Some(true))
    );

    // Without a base path or MODELS_DIR there is nothing to write; a relative one is refused.
    let (status, answer) = app
        .post_json("/api/comfy/create-default-paths", &json!({}))
        .await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (422, "validation_failed")
    );
    let (status, _) = app
        .post_json(
            "/api/comfy/create-default-paths",
            &json!({ "base_path": "models" }),
        )
        .await;
    assert_eq!(status, 422);
    assert!(!comfy_dir.join(model_paths::FILE_NAME).exists());

    let (status, created) = app
        .post_json(
            "/api/comfy/create-default-paths",
            &json!({ "base_path": models, "createFolders": true }),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["created"], true);
    assert_eq!(created["backupPath"], Value::Null);
    assert!(models.join("checkpoints").is_dir() && models.join("text_encoders").is_dir());
    std::fs::write(models.join("checkpoints/sdxl.safetensors"), b"weights").unwrap();
    std::fs::write(models.join("loras/a.safetensors"), b"weights").unwrap();
    std::fs::write(models.join("loras/notes.txt"), b"not a model").unwrap();

    let report = app.get_json("/api/comfy/validate-paths").await;
    assert_eq!(report["valid"], true, "{report}");
    let section = &report["sections"][0];
    assert_eq!(section["base_path"], models.display().to_string());
    assert_eq!(section["is_default"], true);
    let folders = section["folders"].as_object().unwrap();
    assert_eq!(folders.len(), model_paths::WRITTEN_FOLDERS.len());
    assert_eq!(folders["checkpoints"]["exist"], json!([true]));
    assert_eq!(
        (
            report["counts"]["checkpoints"].as_u64(),
            report["counts"]["loras"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let first = std::fs::read_to_string(comfy_dir.join(model_paths::FILE_NAME)).unwrap();

    // A second write keeps the first file as a timestamped backup; restoring it brings it back.
    let other = dir.path().join("Other");
    let (status, again) = app
        .post_json(
            "/api/comfy/create-default-paths",
            &json!({ "base_path": other }),
        )
        .await;
    assert_eq!(status, 200);
    let backup = again["backupPath"].as_str().unwrap().to_owned();
    assert!(backup.contains("extra_model_paths.yaml.bak."), "{backup}");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), first);
    let (status, restored) = app
        .post_json("/api/comfy/restore-paths", &json!({ "backupPath": backup }))
        .await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(
        std::fs::read_to_string(comfy_dir.join(model_paths::FILE_NAME)).unwrap(),
        first
    );
    // Only a backup of the file can be restored.
    let (status, _) = app
        .post_json(
            "/api/comfy/restore-paths",
            &json!({ "backupPath": "/etc/passwd" }),
        )
        .await;
    assert_eq!(status, 422);

    // These routes are Orchestrator's own: none of them reached ComfyUI.
    assert!(
        comfy.requests().iter().all(|r| !r.path.contains("paths")),
        "{:?}",
        comfy.requests()
    );
}

#[tokio::test]
async fn a_refused_file_is_reported_and_left_as_it_is() {
    let comfy = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(model_paths::FILE_NAME);
    let hostile = "a:\n  checkpoints: !!python/object/apply:os.system [\"touch pwned\"]\n";
    std::fs::write(&file, hostile).unwrap();
    let app = app_for(&comfy, dir.path(), Some(dir.path())).await;
    let report = app.get_json("/api/comfy/validate-paths").await;
    assert_eq!(report["valid"], false);
    assert_eq!(report["problems"][0]["code"], "yaml_tag");
    assert_eq!(report["problems"][0]["line"], 2);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), hostile);
    assert!(!dir.path().join("pwned").exists());

    // Creating the default section would have to drop what cannot be read: refused, file untouched.
    let (status, answer) = app
        .post_json(
            "/api/comfy/create-default-paths",
            &json!({ "base_path": "/models" }),
        )
        .await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (409, "model_paths_unparsable")
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), hostile);
    // A foreign page cannot rewrite the file.
    let response = app
        .http
        .post(app.url("/api/comfy/create-default-paths"))
        .header("Origin", "http://evil.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), hostile);
}

/// A file where Orchestrator's start marker lost its end marker (a hand edit, a paste): merging would drop every
/// line after the marker, the user's own sections with it, so the write is refused and nothing changes.
#[tokio::test]
async fn a_start_marker_without_its_end_is_refused_and_nothing_written() {
    let comfy = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(model_paths::FILE_NAME);
    let created = model_paths::create_default(&file, Path::new("/models"), false, false).unwrap();
    assert!(created.created);
    let whole = std::fs::read_to_string(&file).unwrap();
    let end = whole.lines().last().unwrap().to_owned();
    assert!(end.starts_with("# <<<"), "{whole}");
    let half = format!(
        "{}\nmine:\n    base_path: /srv/mine\n    loras: loras/\n",
        whole.replace(&format!("{end}\n"), "")
    );
    std::fs::write(&file, &half).unwrap();
    let app = app_for(&comfy, dir.path(), Some(dir.path())).await;
    let (status, answer) = app
        .post_json(
            "/api/comfy/create-default-paths",
            &json!({ "base_path": "/models/new" }),
        )
        .await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (409, "model_paths_unparsable"),
        "{answer}"
    );
    assert!(
        answer["error"]["details"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("end marker"),
        "{answer}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), half);
    assert_eq!(
        names_in(dir.path()),
        vec![model_paths::FILE_NAME.to_owned()],
        "no backup either"
    );
    // With the end marker back the same write keeps the user's section.
    std::fs::write(
        &file,
        format!("{whole}mine:\n    base_path: /srv/mine\n    loras: loras/\n"),
    )
    .unwrap();
    let (status, _) = app
        .post_json(
            "/api/comfy/create-default-paths",
            &json!({ "base_path": "/models/new" }),
        )
        .await;
    assert_eq!(status, 200);
    let now = std::fs::read_to_string(&file).unwrap();
    assert!(
        now.contains("/srv/mine") && now.contains("/models/new"),
        "{now}"
    );
}

#[tokio::test]
async fn without_comfy_dir_the_file_has_no_place() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let response = app
        .http
        .get(app.url("/api/comfy/validate-paths"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        error_code(&response.json().await.unwrap()),
        "comfy_dir_not_configured"
    );
}

const BINARY: &str = env!("CARGO_BIN_EXE_orchestrator");

fn paths_command(comfy_dir: &Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("COMFY_DIR", comfy_dir)
        .arg("paths")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[test]
fn the_cli_checks_writes_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(model_paths::FILE_NAME);
    std::fs::write(
        &file,
        "base_path: /srv/models\ncheckpoints: /srv/models/checkpoints\n",
    )
    .unwrap();
    let flat = paths_command(dir.path()).arg("check").output().unwrap();
    assert_eq!(flat.status.code(), Some(1));
    let text = String::from_utf8_lossy(&flat.stderr);
    assert!(
        text.contains("flat layout") && text.contains("line 1"),
        "{text}"
    );

    let models = dir.path().join("models");
    // A file ComfyUI cannot read is never overwritten without --force.
    let flat_text = std::fs::read(&file).unwrap();
    let refused = paths_command(dir.path())
        .args(["init", "--base-path", models.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("force"));
    assert_eq!(std::fs::read(&file).unwrap(), flat_text);
    let init = paths_command(dir.path())
        .args([
            "init",
            "--base-path",
            models.to_str().unwrap(),
            "--create-folders",
            "--force",
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let said = String::from_utf8_lossy(&init.stdout).into_owned();
    let backup = said
        .lines()
        .find_map(|l| l.strip_prefix("the previous file is kept as "))
        .expect("a backup is named")
        .to_owned();
    let check = paths_command(dir.path())
        .args(["check", "--json"])
        .output()
        .unwrap();
    assert!(check.status.success());
    let report: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(report["sections"][0]["name"], "orchestrator");

    let restore = paths_command(dir.path())
        .args(["restore", &backup])
        .output()
        .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .starts_with("base_path: /srv/models")
    );
}

/// A real process killed at a different moment each time: the file is always the old one or a new one.
#[test]
fn a_write_killed_midway_leaves_the_old_or_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(model_paths::FILE_NAME);
    let original = "mine:\n  base_path: /srv/models\n  checkpoints: checkpoints\n";
    std::fs::write(&file, original).unwrap();
    let kills = 40;
    // How long a whole run takes here, so the kills spread over it whatever the machine's speed.
    let started = std::time::Instant::now();
    let whole_run = paths_command(dir.path())
        .args(["init", "--base-path", "/tmp/timing-run"])
        .output()
        .unwrap();
    assert!(whole_run.status.success());
    let run = started.elapsed();
    std::fs::write(&file, original).unwrap();
    let mut outcomes = std::collections::HashSet::new();
    for i in 0..kills {
        let before = std::fs::read_to_string(&file).unwrap();
        let base = dir.path().join(format!("models-{i}"));
        let mut child = paths_command(dir.path())
            .args(["init", "--base-path", base.to_str().unwrap()])
            .spawn()
            .unwrap();
        std::thread::sleep(run.mul_f64(1.2 * i as f64 / kills as f64));
        let _ = child.kill();
        let _ = child.wait();
        let now = std::fs::read_to_string(&file).unwrap();
        // The new file keeps the user's section and adds Orchestrator's.
        let candidate = model_paths::merged_file(&before, &base);
        assert!(
            now == before || now == candidate,
            "a broken file after kill {i}:\n{now}"
        );
        assert!(model_paths::check(&file).valid);
        outcomes.insert(now == before);
    }
    // Some kills came before the rename and some after, or the test proves nothing.
    assert_eq!(
        outcomes.len(),
        2,
        "every kill landed on the same side of the write"
    );
}

/// Files `create-default-paths` and `paths init` must refuse without `force`, with the code validate-paths gives.
fn refused_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    // The "billion laughs" shape: nine levels of nine aliases, 9^9 strings once expanded.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (name, previous) in ('b'..='i').zip('a'..) {
        let items = vec![format!("*{previous}"); 9].join(",");
        bomb.push_str(&format!("{name}: &{name} [{items}]\n"));
    }
    bomb.push_str("mine:\n  checkpoints: *i\n");
    let tag = "mine:\n  base_path: /srv/models\n  checkpoints: !!python/object/apply:os.system [\"touch pwned\"]\n";
    // A real section first, then about 11 MB of comments.
    let mut huge = b"mine:\n  base_path: /srv/models\n  checkpoints: checkpoints\n".to_vec();
    while huge.len() < 11 * 1024 * 1024 {
        huge.extend_from_slice(b"# a comment line to pad the file out to eleven megabytes......\n");
    }
    vec![
        ("an alias bomb", bomb.into_bytes(), "yaml_anchor"),
        ("a YAML tag", tag.as_bytes().to_vec(), "yaml_tag"),
        ("an 11 MB file", huge, "file_too_large"),
    ]
}

/// The names in `dir`: a refused write leaves no backup and no temporary file.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn alias_bombs_tags_and_huge_files_are_refused_through_the_api_and_left_as_they_are() {
    let comfy = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let comfy_dir = dir.path().join("ComfyUI");
    std::fs::create_dir(&comfy_dir).unwrap();
    let models = dir.path().join("Models");
    let file = comfy_dir.join(model_paths::FILE_NAME);
    let app = app_for(&comfy, &comfy_dir, Some(&models)).await;
    for (what, bytes, code) in refused_files() {
        std::fs::write(&file, &bytes).unwrap();
        let report = app.get_json("/api/comfy/validate-paths").await;
        assert_eq!(report["valid"], false, "{what}: {report}");
        assert_eq!(report["problems"][0]["code"], code, "{what}: {report}");
        assert_eq!(report["problems"][0]["severity"], "error", "{what}");

        // Without force, with MODELS_DIR as the base and with a base path of its own, folders asked for or not.
        for body in [
            json!({}),
            json!({ "base_path": dir.path().join("Elsewhere"), "createFolders": true }),
            json!({ "force": false }),
        ] {
            let (status, answer) = app
                .post_json("/api/comfy/create-default-paths", &body)
                .await;
            assert_eq!(
                (status, error_code(&answer).as_str()),
                (409, "model_paths_unparsable"),
                "{what} {body}: {answer}"
            );
            assert!(
                answer["error"]["details"]["problems"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty()),
                "{what}: {answer}"
            );
            assert!(
                std::fs::read(&file).unwrap() == bytes,
                "{what}: the file changed after {body}"
            );
            assert_eq!(names_in(&comfy_dir), [model_paths::FILE_NAME], "{what}");
            assert_eq!(names_in(dir.path()), ["ComfyUI"], "{what}: folders made");
        }
    }
    assert!(!comfy_dir.join("pwned").exists());
}

#[test]
fn alias_bombs_tags_and_huge_files_are_refused_by_paths_init_and_left_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let comfy_dir = dir.path().join("ComfyUI");
    std::fs::create_dir(&comfy_dir).unwrap();
    let file = comfy_dir.join(model_paths::FILE_NAME);
    let models = dir.path().join("Models");
    for (what, bytes, code) in refused_files() {
        std::fs::write(&file, &bytes).unwrap();
        let check = paths_command(&comfy_dir)
            .args(["check", "--json"])
            .output()
            .unwrap();
        assert_eq!(check.status.code(), Some(1), "{what}");
        let report: Value = serde_json::from_slice(&check.stdout)
            .or_else(|_| serde_json::from_slice(&check.stderr))
            .unwrap();
        assert_eq!(report["problems"][0]["code"], code, "{what}");

        for extra in [&[][..], &["--create-folders"][..]] {
            let init = paths_command(&comfy_dir)
                .args(["init", "--base-path", models.to_str().unwrap()])
                .args(extra)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&init.stderr);
            assert_eq!(init.status.code(), Some(1), "{what}: {said}");
            assert!(said.contains("force"), "{what}: {said}");
            assert!(init.stdout.is_empty(), "{what}");
            assert!(
                std::fs::read(&file).unwrap() == bytes,
                "{what}: the file changed"
            );
            assert_eq!(names_in(&comfy_dir), [model_paths::FILE_NAME], "{what}");
            assert_eq!(names_in(dir.path()), ["ComfyUI"], "{what}: folders made");
        }
    }
}

#[tokio::test]
async fn a_syntax_error_is_reported_with_its_line_and_column() {
    let comfy = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(model_paths::FILE_NAME);
    // A second `key:` inside a value, on line 3 at column 17 (where PyYAML, and so ComfyUI, stops too).
    let text = "mine:\n  base_path: /srv/models\n  checkpoints: a: b\n";
    std::fs::write(&file, text).unwrap();
    let app = app_for(&comfy, dir.path(), Some(dir.path())).await;
    let report = app.get_json("/api/comfy/validate-paths").await;
    assert_eq!(report["valid"], false);
    let problem = &report["problems"][0];
    assert_eq!(problem["code"], "yaml_syntax", "{report}");
    assert_eq!(
        (problem["line"].as_u64(), problem["column"].as_u64()),
        (Some(3), Some(17)),
        "{report}"
    );
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("ComfyUI fails to start"),
        "{report}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

#[tokio::test]
async fn concurrent_creates_and_restores_each_leave_a_whole_file() {
    let comfy = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(model_paths::FILE_NAME);
    let users = "# my set-up\na111:\n    base_path: /srv/a1111\n    checkpoints: models/Stable-diffusion\n\nother:\n    base_path: /srv/other\n    vae: vae\n";
    std::fs::write(&file, users).unwrap();
    let app = app_for(&comfy, dir.path(), None).await;
    let (status, first) = app
        .post_json(
            "/api/comfy/create-default-paths",
            &json!({ "base_path": "/models/first" }),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let users_backup = first["backupPath"].as_str().unwrap().to_owned();

    // Ten at once: eight creates, each for another base path, and two restores of the user's own file.
    let calls = (0..10).map(|i| {
        let (path, body) = if i % 5 == 4 {
            (
                "/api/comfy/restore-paths",
                json!({ "backupPath": users_backup }),
            )
        } else {
            (
                "/api/comfy/create-default-paths",
                json!({ "base_path": format!("/models/{i}") }),
            )
        };
        let request = app.http.post(app.url(path)).json(&body).send();
        async move {
            let response = request.await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let mut backups = std::collections::HashSet::new();
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["created"], true, "{answer}");
        backups.insert(answer["backupPath"].as_str().unwrap().to_owned());
    }
    // Each one backed up the whole file the one before it left, under a name of its own.
    assert_eq!(backups.len(), answers.len(), "{answers:?}");
    for backup in &backups {
        let report = model_paths::check(Path::new(backup));
        assert!(report.valid, "{backup}: {:?}", report.problems);
        let names: Vec<&str> = report.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(&names[..2], ["a111", "other"], "{backup}");
    }

    let now = std::fs::read_to_string(&file).unwrap();
    assert!(
        now == users
            || (0..10).any(|i| now == model_paths::merged_file(users, Path::new(&format!("/models/{i}")))),
        "the file is none of the writes:\n{now}"
    );
    let report = app.get_json("/api/comfy/validate-paths").await;
    assert_eq!(report["valid"], true, "{report}");
    let names: Vec<&str> = report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        names == ["a111", "other"] || names == ["a111", "other", "orchestrator"],
        "{names:?}"
    );
    let leftovers: Vec<String> = names_in(dir.path())
        .into_iter()
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
