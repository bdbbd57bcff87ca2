//! `orchestrator generate` and `jobs`: a job followed to its file, and a paid FLUX image asked for before it is paid.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::fake_bfl::FakeBfl;
use testkit::fake_comfy::FakeComfy;

use super::{BFL_KEY, flux_env};
use crate::support::served::{BINARY, Served, command};

// Multi-threaded: the fake ComfyUI must keep answering while this test blocks on the CLI process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_follows_the_job_and_prints_the_output_paths() {
    let fake = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &fake.url());
    let workflow = dir.path().join("workflow.json");
    std::fs::write(
        &workflow,
        testkit::fake_comfy::no_model_workflow().to_string(),
    )
    .unwrap();
    let data = dir.path().join("data");
    let env = [
        ("ORCH_BIND", served.addr.to_string()),
        ("DATA_DIR", data.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let output = command(dir.path(), &env)
        .args(["generate", "--workflow", workflow.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(
        path.starts_with(data.join("outputs").to_str().unwrap()),
        "{path}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        testkit::fake_comfy::OUTPUT_PNG
    );

    let refused = command(dir.path(), &env)
        .args(["generate", "--template", "sdxl-t2i"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("params.prompt: required"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let listed = command(dir.path(), &env)
        .args(["jobs", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    let id = listed
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("one job listed")
        .to_owned();
    assert!(listed.contains("succeeded"), "{listed}");
    let shown = command(dir.path(), &env)
        .args(["jobs", "show", &id])
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "succeeded");
    let cancel = command(dir.path(), &env)
        .args(["jobs", "cancel", &id])
        .output()
        .unwrap();
    assert!(!cancel.status.success());
    assert!(String::from_utf8_lossy(&cancel.stderr).contains("already succeeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_flux_shows_the_price_and_asks_before_paying() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let env = flux_env(&bfl);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let served = Served::start_with(dir.path(), "http://127.0.0.1:9", &env);
    let data = dir.path().join("data");
    let client_env = [
        ("ORCH_BIND", served.addr.to_string()),
        ("DATA_DIR", data.display().to_string()),
    ];
    let client_env: Vec<(&str, &str)> = client_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = ["generate", "--backend", "flux", "--prompt", "a paper boat"];

    // Not on a terminal and no --yes: the dry run is shown and nothing is paid.
    let refused = command(dir.path(), &client_env)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let shown = String::from_utf8_lossy(&refused.stdout);
    assert!(shown.contains("flux-pro-1.1 would cost $0.040"), "{shown}");
    assert!(shown.contains("\"prompt\": \"a paper boat\""), "{shown}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(bfl.submits(), 0);

    // On a terminal it asks; "n" pays nothing, "y" pays once.
    let line = std::iter::once(BINARY)
        .chain(args)
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let script = |answer: &'static str| {
        let mut command = Command::new("script");
        command.current_dir(dir.path()).env_clear();
        command.env("PATH", std::env::var("PATH").unwrap_or_default());
        for (key, value) in &client_env {
            command.env(key, value);
        }
        command
            .args(["--quiet", "--return", "--command", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        {
            use std::io::Write;
            stdin.write_all(answer.as_bytes()).unwrap();
        }
        // Closing script's input early would end the session before the question is asked.
        let output = {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(_status) = child.try_wait().unwrap() {
                    break;
                }
                assert!(Instant::now() < deadline, "the command finishes");
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(stdin);
            child.wait_with_output().unwrap()
        };
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let declined = script("n\n");
    assert!(
        declined.contains("Pay $0.040 for this image? [y/N]"),
        "{declined}"
    );
    assert!(declined.contains("not confirmed"), "{declined}");
    assert_eq!(bfl.submits(), 0);
    let accepted = script("y\n");
    assert!(
        accepted.contains(data.join("outputs").to_str().unwrap()),
        "{accepted}"
    );
    assert_eq!(bfl.submits(), 1);

    // --yes pays without asking, and prints where the image is.
    let paid = command(dir.path(), &client_env)
        .args(args)
        .arg("--yes")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        paid.status.success(),
        "{}",
        String::from_utf8_lossy(&paid.stderr)
    );
    let stdout = String::from_utf8(paid.stdout).unwrap();
    let path = stdout.lines().last().unwrap().trim();
    assert_eq!(std::fs::read(path).unwrap(), bfl.image());
    assert_eq!(bfl.submits(), 2);
}
