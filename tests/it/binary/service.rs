//! `orchestrator service`: the plans it prints, ComfyUI's log, and the status it asks the running server for.

use testkit::fake_comfy::FakeComfy;

use crate::support::served::{Served, command};

#[test]
fn service_dry_runs_print_the_exact_plan() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.py"), "").unwrap();
    let comfy = dir.path().to_str().unwrap();
    let run = |backend: &str, args: &[&str]| {
        let output = command(
            dir.path(),
            &[
                ("SERVICE_BACKEND", backend),
                ("COMFY_DIR", comfy),
                ("DATA_DIR", "/srv/orch"),
            ],
        )
        .arg("service")
        .args(args)
        .output()
        .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };

    let unit = run("systemd", &["install", "--dry-run"]);
    assert!(
        unit.contains("[Service]") && unit.contains("Restart=on-failure"),
        "{unit}"
    );
    assert!(
        unit.contains(&format!("WorkingDirectory={comfy}")),
        "{unit}"
    );
    assert!(
        unit.contains("main.py --listen 127.0.0.1 --port 8188"),
        "{unit}"
    );
    assert!(
        unit.contains("StandardOutput=append:/srv/orch/logs/comfyui.log"),
        "{unit}"
    );
    assert!(
        unit.contains("daemon-reload") && unit.contains("enable OrchestratorComfyUI.service"),
        "{unit}"
    );

    let nssm = run("windows", &["install", "--dry-run"]);
    assert!(
        nssm.starts_with("nssm install OrchestratorComfyUI "),
        "{nssm}"
    );
    assert!(
        nssm.contains("nssm set OrchestratorComfyUI AppRotateBytes 10485760"),
        "{nssm}"
    );
    let removal = run("windows", &["uninstall", "--dry-run"]);
    assert_eq!(
        removal.trim(),
        "nssm stop OrchestratorComfyUI\nnssm remove OrchestratorComfyUI confirm"
    );

    assert_eq!(
        run("supervised", &["start", "--dry-run"]).trim(),
        "POST http://127.0.0.1:3000/api/system/comfy/start"
    );
    assert!(run("supervised", &["install", "--dry-run"]).contains("needs no installation"));
}

/// A relative `DATA_DIR` and `COMFY_DIR` are resolved against the folder Orchestrator starts in before they reach
/// another program: NSSM opens `AppStdout` from its own working directory, so a relative log path there is a
/// different file than the one the log viewer reads.
#[test]
fn relative_folders_reach_service_plans_and_config_as_absolute_paths() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    std::fs::create_dir(dir.join("ComfyUI")).unwrap();
    std::fs::write(dir.join("ComfyUI/main.py"), "").unwrap();
    let run = |backend: &str, args: &[&str]| {
        let output = command(
            &dir,
            &[
                ("SERVICE_BACKEND", backend),
                ("COMFY_DIR", "ComfyUI"),
                ("DATA_DIR", "./data"),
            ],
        )
        .args(args)
        .output()
        .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let log = dir.join("data").join("logs").join("comfyui.log");
    let nssm = run("windows", &["service", "install", "--dry-run"]);
    assert!(
        nssm.contains(&format!("AppStdout {}\n", log.display())),
        "{nssm}"
    );
    assert!(
        nssm.contains(&format!("AppStderr {}\n", log.display())),
        "{nssm}"
    );
    assert!(
        nssm.contains(&format!("AppDirectory {}", dir.join("ComfyUI").display())),
        "{nssm}"
    );
    let unit = run("systemd", &["service", "install", "--dry-run"]);
    assert!(
        unit.contains(&format!("StandardOutput=append:{}", log.display())),
        "{unit}"
    );
    assert!(
        unit.contains(&format!(
            "WorkingDirectory={}",
            dir.join("ComfyUI").display()
        )),
        "{unit}"
    );
    let config = run("supervised", &["config"]);
    assert!(
        config.contains(&format!("data_dir: {:?}", dir.join("data"))),
        "{config}"
    );
    assert!(!config.contains("\"./data"), "{config}");
}

#[test]
fn service_logs_prints_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("comfy.log");
    std::fs::write(
        &log,
        (1..=50).map(|i| format!("line {i}\n")).collect::<String>(),
    )
    .unwrap();
    let output = command(dir.path(), &[("COMFY_LOG_FILE", log.to_str().unwrap())])
        .args(["service", "logs", "-n", "2"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "line 49\nline 50\n"
    );
}

#[tokio::test]
async fn service_status_asks_the_running_server() {
    let fake = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &fake.url());
    let output = command(
        dir.path(),
        &[
            ("ORCH_BIND", &served.addr.to_string()),
            ("SERVICE_BACKEND", "external"),
            ("COMFY_URL", &fake.url()),
        ],
    )
    .args(["service", "status"])
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "ComfyUI (supervised backend): not_installed"
    );

    let nobody = crate::support::closed_port().await;
    let output = command(dir.path(), &[("ORCH_BIND", &nobody.to_string())])
        .args(["service", "stop"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is `orchestrator serve` running?"));
}
