//! ComfyUI's extra_model_paths.yaml through the API and the CLI.

use std::path::Path;
use std::process::{Command, Stdio};

use orchestrator::comfy::model_paths;
use orchestrator::testkit::fake_comfy::FakeComfy;
use serde_json::{Value, json};

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

async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    let response = app
        .http
        .post(app.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
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
    let (status, answer) = post(&app, "/api/comfy/create-default-paths", &json!({})).await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (422, "validation_failed")
    );
    let (status, _) = post(
        &app,
        "/api/comfy/create-default-paths",
        &json!({ "base_path": "models" }),
    )
    .await;
    assert_eq!(status, 422);
    assert!(!comfy_dir.join(model_paths::FILE_NAME).exists());

    let (status, created) = post(
        &app,
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
    let (status, again) = post(
        &app,
        "/api/comfy/create-default-paths",
        &json!({ "base_path": other }),
    )
    .await;
    assert_eq!(status, 200);
    let backup = again["backupPath"].as_str().unwrap().to_owned();
    assert!(backup.contains("extra_model_paths.yaml.bak."), "{backup}");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), first);
    let (status, restored) = post(
        &app,
        "/api/comfy/restore-paths",
        &json!({ "backupPath": backup }),
    )
    .await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(
        std::fs::read_to_string(comfy_dir.join(model_paths::FILE_NAME)).unwrap(),
        first
    );
    // Only a backup of the file can be restored.
    let (status, _) = post(
        &app,
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
    let (status, answer) = post(
        &app,
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
