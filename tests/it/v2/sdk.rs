//! Comfy-Org's official Python SDK (`comfy-sdk` from PyPI, pinned in scripts/test.sh) drives the real server:
//! `tests/sdk/drive.py` uploads an image asset, runs a workflow that loads it, streams its events, reads and
//! downloads its outputs (with a range), resubmits under one key, cancels a long job and lists jobs, checking every
//! answer against the contract's schemas. No double stands in for the SDK.

use std::time::Duration;

use crate::support::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the comfy-sdk venv; scripts/test.sh installs it and runs this"]
async fn the_official_sdk_runs_jobs_with_assets_through_orchestrator() {
    let python =
        std::env::var("COMFY_SDK_PYTHON").expect("COMFY_SDK_PYTHON names the venv's python");
    let comfy = super::jobs::sampler_comfy().await;
    // The long job: a sampler of 400 steps, 50 ms each.
    comfy.set_progress_steps(400);
    comfy.set_step_delay(Duration::from_millis(50));
    let app = TestApp::spawn(&comfy.url()).await;
    let long = app.data_dir.join("long-workflow.json");
    std::fs::write(&long, testkit::fake_comfy::ksampler_workflow().to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/drive.py");
    let run = tokio::process::Command::new(python)
        .arg(script)
        .env("COMFY_BASE_URL", app.origin())
        .env("LONG_WORKFLOW", &long)
        .env_remove("COMFY_API_KEY")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the SDK's run ends within 3 min")
        .expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{text}");
    assert!(output.status.success(), "the SDK's run failed:\n{text}");
    assert!(text.contains("every step passed"), "{text}");
    // The SDK's uploads reached ComfyUI as the inputs of the job that loads them.
    assert!(!comfy.uploads().is_empty(), "no upload reached ComfyUI");
}
