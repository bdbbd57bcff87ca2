//! `orchestrator serve` as a process: its first run, its memory while streaming, and stops by SIGKILL and SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::fake_bfl::{FakeBfl, SubmitMode};
use testkit::fake_comfy::FakeComfy;

use super::{BFL_KEY, flux_env};
use crate::support::served::{Served, exit_of};
use crate::support::wait_until;

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
