//! The `orchestrator` binary as a user runs it: a real child process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::fake_bfl::{FakeBfl, SubmitMode};
use testkit::fake_comfy::FakeComfy;
use testkit::fake_v0::FakeV0;

use crate::support::wait_until;

use crate::support::served::{BINARY, Served, command, exit_of};

#[test]
fn every_configuration_problem_is_listed_and_exit_code_is_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(
        dir.path(),
        &[
            ("ORCH_BIND", "0.0.0.0:99999"),
            ("COMFY_URL", "ftp://comfy:8188"),
            ("MAX_BODY_MB", "many"),
            ("LOG_FORMAT", "xml"),
            ("COMFY_READ_TIMEOUT_SECS", "-1"),
            ("DATABASE_URL", "mysql://user:hunter2@db/orch"),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for name in [
        "ORCH_BIND",
        "COMFY_URL",
        "MAX_BODY_MB",
        "LOG_FORMAT",
        "COMFY_READ_TIMEOUT_SECS",
        "DATABASE_URL",
    ] {
        assert!(stderr.contains(name), "{name} not listed in:\n{stderr}");
    }
    assert!(
        !stderr.contains("hunter2"),
        "a secret was printed:\n{stderr}"
    );

    // The documented example, copied as it is, is a valid configuration.
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example"),
        dir.path().join(".env"),
    )
    .unwrap();
    let output = command(
        dir.path(),
        &[("ORCHESTRATOR_TOKEN", "a-token-that-must-not-print")],
    )
    .arg("config")
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("127.0.0.1:3000") && printed.contains("8188"),
        "{printed}"
    );
    assert!(
        !printed.contains("a-token-that-must-not-print"),
        "{printed}"
    );

    // A token is required off loopback, and a .env file is read.
    std::fs::write(dir.path().join(".env"), "ORCH_BIND=0.0.0.0:3000\n").unwrap();
    let output = command(dir.path(), &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ORCHESTRATOR_TOKEN"));
}

#[tokio::test]
async fn first_run_creates_the_store_logs_requests_and_stops_on_sigterm() {
    let fake = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The embedded store, on every run: this is what a first run without DATABASE_URL makes.
    let mut served = Served::start_with(dir.path(), &fake.url(), &[("DATABASE_URL", "")]);
    assert!(
        dir.path().join("data/orchestrator.db").exists(),
        "SQLite file created on first run"
    );

    let client = crate::support::client();
    let response = client
        .get(served.url("/api/comfy/system_stats?secret=s3cr3t"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    wait_until(Duration::from_secs(5), "the request is logged", || {
        let lines = served.lines();
        let id = request_id.clone();
        async move { lines.iter().any(|l| l.contains(&id)) }
    })
    .await;
    let line = served
        .lines()
        .into_iter()
        .find(|l| l.contains(&request_id))
        .unwrap();
    let event: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(event["method"], "GET");
    assert_eq!(event["path"], "/api/comfy/system_stats");
    assert_eq!(event["status"], 200);
    assert!(event["duration_ms"].as_f64().is_some());
    assert!(event["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(!line.contains("s3cr3t"), "the query string is not logged");

    let killed = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = exit_of(&mut served.child, Duration::from_secs(10)).await;
    assert!(status.success(), "a clean stop: {status:?}");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_gibibyte_streams_through_with_flat_memory() {
    let fake = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &fake.url());
    let client = crate::support::client();

    // Warm up: pools, buffers and allocator arenas exist before the baseline is taken.
    let warm = client
        .get(served.url("/api/comfy/view?filename=large.bin&size=16777216"))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.bytes().await.unwrap().len(), 16 * 1024 * 1024);
    let (_, baseline_peak) = served.memory_kib();

    const GIB: u64 = 1 << 30;
    let response = client
        .get(served.url(&format!("/api/comfy/view?filename=large.bin&size={GIB}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut total = 0u64;
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        total += chunk.unwrap().len() as u64;
    }
    assert_eq!(total, GIB);
    let (_, peak) = served.memory_kib();
    let growth_mib = peak.saturating_sub(baseline_peak) / 1024;
    assert!(
        growth_mib < 64,
        "peak RSS grew by {growth_mib} MiB while 1 GiB streamed"
    );
}

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

#[tokio::test]
async fn sigkill_during_50_jobs_loses_none() {
    let fake = FakeComfy::start().await;
    // Long enough that most of the 50 are still queued or running in ComfyUI when Orchestrator is killed.
    fake.set_step_delay(Duration::from_millis(8));
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(dir.path(), &fake.url());
    let client = crate::support::client();

    let submissions = (0..50u32).map(|i| {
        let client = client.clone();
        let url = served.url("/api/jobs");
        async move {
            let mut workflow = testkit::fake_comfy::no_model_workflow();
            workflow["1"]["inputs"]["color"] = serde_json::json!(i);
            let response = client
                .post(url)
                .json(&serde_json::json!({ "workflow": workflow }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    });
    let accepted: Vec<String> = futures_util::future::join_all(submissions).await;
    Command::new("kill")
        .args(["-KILL", &served.child.id().to_string()])
        .status()
        .unwrap();
    let _ = served.child.wait();
    let finished_before_restart: Value = client
        .get(format!("{}/history", fake.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let finished_before_restart = finished_before_restart.as_object().unwrap().len();
    assert!(
        finished_before_restart < 40,
        "the kill must land while most jobs are unfinished ({finished_before_restart} done)"
    );

    let restarted = Served::start(dir.path(), &fake.url());
    let jobs_url = restarted.url("/api/jobs?limit=500");
    let all_succeeded = || {
        let (client, url) = (client.clone(), jobs_url.clone());
        async move {
            let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            let jobs = page["jobs"].as_array().unwrap().clone();
            jobs.len() == 50 && jobs.iter().all(|j| j["status"] == "succeeded")
        }
    };
    wait_until(
        Duration::from_secs(60),
        "every job accepted before the kill succeeds",
        all_succeeded,
    )
    .await;

    let page: Value = client
        .get(&jobs_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for id in &accepted {
        let job = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id.as_str())
            .expect("no job lost");
        let name = job["outputs"][0]["name"].as_str().expect("an output");
        assert!(
            dir.path().join("data/outputs").join(id).join(name).exists(),
            "the output file of {id} exists"
        );
    }
    let store =
        orchestrator::store::Store::open(&crate::support::database_for(&dir.path().join("data")))
            .await
            .unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
}

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

fn flux_env(bfl: &FakeBfl) -> Vec<(&'static str, String)> {
    vec![
        ("ALLOW_GENERATION", "true".into()),
        ("BFL_API_KEY", BFL_KEY.into()),
        ("BFL_BASE_URL", bfl.url()),
        ("FLUX_POLL_INTERVAL_MS", "20".into()),
    ]
}

const BFL_KEY: &str = "bfl-secret-key-never-shown-1234";
const V0_KEY: &str = "v0-secret-key-never-shown-5678";

/// SIGTERM while a paid FLUX submit waits for BFL's answer: the server stops accepting, lets the submit finish and
/// records what BFL answered, then exits; the next start polls the task to its image. Nothing is left
/// `needs_reconcile`, nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_paid_submit_records_its_outcome() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    bfl.set_submit_mode(SubmitMode::Slow(Duration::from_secs(2)));
    let dir = tempfile::tempdir().unwrap();
    let env = flux_env(&bfl);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut served = Served::start_with(dir.path(), "http://127.0.0.1:9", &env);
    let client = crate::support::client();
    let dry: Value = client
        .post(served.url("/api/flux/generate"))
        .json(&serde_json::json!({ "prompt": "a slow fox" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paid = serde_json::json!({ "prompt": "a slow fox", "dryRun": false, "confirmToken": dry["confirmToken"] });
    let url = served.url("/api/flux/generate");
    // The client gives up at once, as a closed browser tab does: the submit must not depend on its connection,
    // nor on the serving thread that took it (which has nothing left to drain when the stop comes).
    let pay = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .post(url)
                .timeout(Duration::from_millis(300))
                .json(&paid)
                .send()
                .await
        }
    });
    wait_until(Duration::from_secs(10), "BFL has the submit", || async {
        bfl.submits() == 1
    })
    .await;
    wait_until(Duration::from_secs(5), "the client has hung up", || async {
        pay.is_finished()
    })
    .await;
    let stopped_at = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &served.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = exit_of(&mut served.child, Duration::from_secs(30)).await;
    assert!(status.success(), "a clean stop: {status:?}");
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(1500),
        "it waited for BFL's answer"
    );
    assert!(
        pay.await.unwrap().is_err(),
        "the client hung up before BFL answered"
    );
    drop(served);

    let served = Served::start_with(dir.path(), "http://127.0.0.1:9", &env);
    let listed: Value = client
        .get(served.url("/api/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = listed["jobs"][0]["id"]
        .as_str()
        .expect("the job")
        .to_owned();
    assert_ne!(listed["jobs"][0]["status"], "needs_reconcile", "{listed}");
    let job_url = served.url(&format!("/api/jobs/{id}"));
    wait_until(
        Duration::from_secs(15),
        "the FLUX job succeeds after the restart",
        || {
            let client = client.clone();
            let url = job_url.clone();
            async move {
                let job: Value = client.get(url).send().await.unwrap().json().await.unwrap();
                assert_ne!(job["status"], "needs_reconcile", "{job}");
                job["status"] == "succeeded"
            }
        },
    )
    .await;
    assert_eq!(bfl.submits(), 1, "sent once");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_appear_in_answers_headers_or_logs() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    let v0 = FakeV0::start(V0_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = flux_env(&bfl);
    env.extend([
        ("V0_API_KEY", V0_KEY.to_owned()),
        ("V0_BASE_URL", v0.url()),
        ("RUST_LOG", "trace".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let served = Served::start_with(dir.path(), "http://127.0.0.1:9", &env);
    let client = crate::support::client();
    let mut seen = String::new();
    let record = |response: reqwest::Response| {
        let headers = format!("{:?}", response.headers());
        async move { format!("{headers}\n{}\n", response.text().await.unwrap()) }
    };

    let dry: Value = client
        .post(served.url("/api/flux/generate"))
        .json(&serde_json::json!({ "prompt": "secret-free" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    seen.push_str(&dry.to_string());
    let mut paid = serde_json::json!({ "prompt": "secret-free", "dryRun": false });
    paid["confirmToken"] = dry["confirmToken"].clone();
    let answer = client
        .post(served.url("/api/flux/generate"))
        .json(&paid)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let answer: Value = answer.json().await.unwrap();
    let job = format!("/api/jobs/{}", answer["id"].as_str().unwrap());
    wait_until(Duration::from_secs(15), "the FLUX job succeeds", || {
        let client = client.clone();
        let url = served.url(&job);
        async move {
            let job: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            job["status"] == "succeeded"
        }
    })
    .await;
    bfl.set_submit_mode(SubmitMode::Refuse(403));
    let dry: Value = client
        .post(served.url("/api/flux/generate"))
        .json(&serde_json::json!({ "prompt": "secret-free" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    paid["confirmToken"] = dry["confirmToken"].clone();
    for request in [
        client.post(served.url("/api/flux/generate")).json(&paid),
        client.get(served.url(&job)),
        client.get(served.url("/api/jobs")),
        client.get(served.url("/api/flux/budget")),
        client.get(served.url("/api/v0/validate")),
        client.get(served.url("/api/v0/chats")),
        client
            .post(served.url("/api/v0/chats"))
            .header("Authorization", "Bearer client")
            .json(&serde_json::json!({ "message": "hi" })),
    ] {
        let response = request.send().await.unwrap();
        seen.push_str(&record(response).await);
    }
    assert!(
        seen.contains("bfl_unauthorized") && seen.contains("\"status\":\"valid\""),
        "{seen}"
    );
    let config = command(dir.path(), &env).arg("config").output().unwrap();
    seen.push_str(&String::from_utf8_lossy(&config.stdout));
    seen.push_str(&String::from_utf8_lossy(&config.stderr));
    // The server did log the requests (so the check below reads real log lines).
    let lines = served.lines().join("\n");
    assert!(
        lines.contains("/api/v0/chats") && lines.contains("/api/flux/generate"),
        "{lines}"
    );
    for key in [BFL_KEY, V0_KEY] {
        assert!(
            !seen.contains(key),
            "a key leaked into an answer or `config`"
        );
        assert!(!lines.contains(key), "a key leaked into the log");
    }
    // The upstreams did get them.
    assert!(v0.requests().iter().all(|r| {
        r.headers
            .contains(&("authorization".into(), format!("Bearer {V0_KEY}")))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_prints_the_report_with_or_without_a_running_server() {
    let fake = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &fake.url());
    let data = dir.path().join("data");
    let env = [
        ("ORCH_BIND", served.addr.to_string()),
        ("DATA_DIR", data.display().to_string()),
        ("COMFY_URL", fake.url()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let healthy = command(dir.path(), &env).arg("doctor").output().unwrap();
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    let text = String::from_utf8_lossy(&healthy.stdout);
    assert!(
        text.contains("overall      healthy") && text.contains("version 0.3.64"),
        "{text}"
    );
    drop(served);

    // Nothing serves, ComfyUI is gone: the command makes the report itself and says ComfyUI is down.
    let gone = crate::support::closed_port().await;
    let env = [
        ("ORCH_BIND", gone.to_string()),
        ("DATA_DIR", data.display().to_string()),
        ("COMFY_URL", format!("http://{gone}")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let down = command(dir.path(), &env).args(["doctor"]).output().unwrap();
    assert_eq!(down.status.code(), Some(1));
    let text = String::from_utf8_lossy(&down.stderr);
    assert!(
        text.contains("not running") && text.contains("overall      down"),
        "{text}"
    );
    let json = command(dir.path(), &env)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&json.stderr).unwrap();
    assert_eq!(report["comfy"]["status"], "offline");
}

const COMFY_ORG_KEY: &str = "comfy-org-secret-never-shown-9012";
const EDITOR_KEY: &str = "editor-signed-in-key-never-used-3456";

/// `generate --workflow` with a paid API node: the price is shown and nothing is sent without a yes; `--yes` pays
/// once with the server's key. The real binary logs at trace level meanwhile, and neither key shows up in a log
/// line, an answer or `config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_workflow_from_the_cli_asks_first_and_no_comfy_org_key_is_ever_shown() {
    use testkit::fake_comfy_org::FakeComfyOrg;
    let fake = FakeComfy::start().await;
    let org = FakeComfyOrg::start().await;
    fake.set_comfy_api_base(&org.url());
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("ALLOW_GENERATION", "true"),
        ("COMFY_ORG_API_KEY", COMFY_ORG_KEY),
        ("RUST_LOG", "trace"),
    ];
    let served = Served::start_with(dir.path(), &fake.url(), &env);
    let workflow = serde_json::json!({
        "1": {"class_type": "FluxProUltraImageNode", "inputs": {"prompt": "from the terminal", "aspect_ratio": "4:3",
              "prompt_upsampling": false, "raw": false, "seed": 11}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "cli", "images": ["1", 0]}},
    });
    let file = dir.path().join("paid.json");
    std::fs::write(&file, workflow.to_string()).unwrap();
    let client_env = [
        ("ORCH_BIND", served.addr.to_string()),
        ("DATA_DIR", dir.path().join("data").display().to_string()),
    ];
    let client_env: Vec<(&str, &str)> = client_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = ["generate", "--workflow", file.to_str().unwrap()];

    let refused = command(dir.path(), &client_env)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let shown = String::from_utf8_lossy(&refused.stdout);
    assert!(
        shown.contains("node 1 FluxProUltraImageNode (api node/image/BFL): ~$0.060"),
        "{shown}"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(org.call_count(), 0);

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
    assert_eq!(org.call_count(), 1);
    assert_eq!(org.calls()[0].api_key.as_deref(), Some(COMFY_ORG_KEY));

    // The editor's own key in a prompt through the gateway, and every answer that could echo one.
    let client = crate::support::client();
    let prompt = serde_json::json!({ "prompt": testkit::fake_comfy::no_model_workflow(),
        "extra_data": { "api_key_comfy_org": EDITOR_KEY } });
    let mut seen = String::new();
    for request in [
        client.post(served.url("/api/comfy/prompt")).json(&prompt),
        client.get(served.url("/api/comfy/queue")),
        client.get(served.url("/api/comfy/history")),
        client.get(served.url("/api/jobs")),
    ] {
        let response = request.send().await.unwrap();
        seen.push_str(&response.text().await.unwrap());
    }
    let config = command(dir.path(), &env).arg("config").output().unwrap();
    seen.push_str(&String::from_utf8_lossy(&config.stdout));
    assert!(seen.contains("COMFY_ORG_API_KEY"), "{seen}");
    let lines = served.lines().join("\n");
    assert!(lines.contains("/api/comfy/prompt"), "{lines}");
    for key in [COMFY_ORG_KEY, EDITOR_KEY] {
        assert!(
            !seen.contains(key),
            "a Comfy.org key leaked into an answer or `config`"
        );
        assert!(!lines.contains(key), "a Comfy.org key leaked into the log");
    }
    assert!(
        fake.received_prompts()
            .iter()
            .all(|p| !p.to_string().contains(EDITOR_KEY))
    );
}

/// The supervised ComfyUI (here a `COMFY_COMMAND` that writes its environment out) runs without Orchestrator's
/// secrets and without anything Orchestrator's `.env` set, yet with the rest of the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervised_comfy_gets_no_secret_and_nothing_from_dotenv() {
    let dir = tempfile::tempdir().unwrap();
    let dumped = dir.path().join("child-env.txt");
    std::fs::write(
        dir.path().join(".env"),
        "MODELS_DIR=/from/the/dotenv/file\n",
    )
    .unwrap();
    let command_json = serde_json::json!([
        "sh",
        "-c",
        format!("env > '{}'; exec sleep 60", dumped.display())
    ])
    .to_string();
    let token = "a-token-of-orchestrator-0123456789";
    let database = crate::support::database_for(&dir.path().join("data"));
    let env = [
        ("SERVICE_BACKEND", "supervised"),
        ("COMFY_COMMAND", command_json.as_str()),
        ("BFL_API_KEY", BFL_KEY),
        ("V0_API_KEY", V0_KEY),
        ("COMFY_ORG_API_KEY", COMFY_ORG_KEY),
        ("ORCHESTRATOR_TOKEN", token),
        ("DATABASE_URL", database.as_str()),
        ("KEPT_FOR_COMFY", "yes"),
    ];
    let served = Served::start_with(dir.path(), "http://127.0.0.1:9", &env);
    let started = crate::support::client()
        .post(served.url("/api/system/comfy/start"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(
        started.status().is_success(),
        "{}",
        started.text().await.unwrap()
    );
    wait_until(Duration::from_secs(15), "the child wrote its environment", || {
        let dumped = dumped.clone();
        async move { std::fs::read_to_string(&dumped).is_ok_and(|t| t.contains("KEPT_FOR_COMFY")) }
    })
    .await;
    let child_env = std::fs::read_to_string(&dumped).unwrap();
    for (name, value) in [
        ("BFL_API_KEY", BFL_KEY),
        ("V0_API_KEY", V0_KEY),
        ("COMFY_ORG_API_KEY", COMFY_ORG_KEY),
        ("ORCHESTRATOR_TOKEN", token),
        ("DATABASE_URL", database.as_str()),
        ("MODELS_DIR", "/from/the/dotenv/file"),
    ] {
        assert!(
            !child_env.contains(value),
            "{name} reached the child:\n{child_env}"
        );
    }
    assert!(child_env.contains("KEPT_FOR_COMFY=yes") && child_env.contains("PYTHONUNBUFFERED=1"));
    let stopped = crate::support::client()
        .post(served.url("/api/system/comfy/stop"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(stopped.status().is_success());
}

/// With no server to ask, the doctor looks at the store as it is: one it cannot reach is reported (without the
/// password in its URL), and one behind on migrations is reported and left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_a_store_it_cannot_reach_or_one_behind_on_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let gone = crate::support::closed_port().await;
    let unreachable = format!("postgres://studio:hunter2@{gone}/orchestrator");
    let env = [
        ("ORCH_BIND", gone.to_string()),
        ("COMFY_URL", format!("http://{gone}")),
        ("DATABASE_URL", unreachable),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let down = command(dir.path(), &env).arg("doctor").output().unwrap();
    assert_eq!(down.status.code(), Some(1));
    let text = String::from_utf8_lossy(&down.stderr);
    assert!(text.contains("UNREACHABLE postgres://studio@"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    // A store one migration behind (as a newer Orchestrator would find one an older one made).
    let url = format!("sqlite://{}", dir.path().join("behind.db").display());
    orchestrator::store::Store::open(&url)
        .await
        .unwrap()
        .close()
        .await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let (last,): (i64,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(last)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let env = [
        ("ORCH_BIND", gone.to_string()),
        ("COMFY_URL", format!("http://{gone}")),
        ("DATABASE_URL", url.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let behind = command(dir.path(), &env).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&behind.stderr).into_owned()
        + &String::from_utf8_lossy(&behind.stdout);
    assert!(text.contains("BEHIND"), "{text}");
    assert!(text.contains("migrations applied"), "{text}");
    // Looking changed nothing: the store is still behind.
    let store = orchestrator::store::Store::open_unmigrated(&url)
        .await
        .unwrap();
    let (applied, expected) = store.migrations().await.unwrap();
    assert_eq!(applied + 1, expected);
}
