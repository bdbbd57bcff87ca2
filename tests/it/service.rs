//! ComfyUI as a supervised service, for real: the child is the `fake-comfyui` program, a separate process that
//! answers like ComfyUI after a start-up delay and can crash on request.

use std::time::{Duration, Instant};

use orchestrator::client::Events;
use serde_json::{Value, json};

use crate::support::{TestApp, error_code, fake_comfyui, reserved_port, wait_until};

/// Orchestrator supervising a fake ComfyUI that will listen on a free port; `extra` are its arguments.
async fn supervised(
    extra: &[&str],
    adjust: impl FnOnce(&mut orchestrator::config::Settings),
) -> TestApp {
    let port = reserved_port();
    supervised_on(port.addr, extra, adjust).await.holding(port)
}

async fn supervised_on(
    port: std::net::SocketAddr,
    extra: &[&str],
    adjust: impl FnOnce(&mut orchestrator::config::Settings),
) -> TestApp {
    let mut command = vec![fake_comfyui().to_owned(), port.to_string()];
    command.extend(extra.iter().map(|s| (*s).to_owned()));
    TestApp::spawn_with(&format!("http://{port}"), |s| {
        s.comfy_command = Some(serde_json::to_string(&command).unwrap());
        s.comfy_restart_delay_ms = "100".into();
        s.ignite_timeout_secs = "20".into();
        adjust(s);
    })
    .await
}

/// What the supervised tests rely on: a reserved port is handed to no other bind, and its child binds it.
#[tokio::test]
async fn a_reserved_port_is_given_to_nobody_else_but_its_child_listens_there() {
    let reserved = reserved_port();
    let others: Vec<_> = (0..300)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    assert!(
        others
            .iter()
            .all(|l| l.local_addr().unwrap() != reserved.addr)
    );
    let child = tokio::net::TcpListener::bind(reserved.addr).await.unwrap();
    let (connected, accepted) = tokio::join!(
        tokio::net::TcpStream::connect(reserved.addr),
        child.accept()
    );
    assert!(connected.is_ok() && accepted.is_ok());
}

async fn status(app: &TestApp) -> Value {
    app.get_json("/api/system/comfy/status").await
}

fn pid_of(status: &Value) -> Option<u32> {
    status["pid"].as_u64().map(|p| p as u32)
}

async fn wait_for_status(
    app: &TestApp,
    deadline: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let check = &check;
    wait_until(deadline, what, || async move { check(&status(app).await) }).await;
    status(app).await
}

#[tokio::test]
async fn ignite_starts_comfy_and_waits_until_it_answers() {
    let app = supervised(&["--startup-delay-ms", "700"], |_| {}).await;
    assert_eq!(status(&app).await["status"], "stopped");

    let started = Instant::now();
    let outcome: Value = app.post("/api/system/ignite", None, None).await.body;
    assert_eq!(outcome["comfy"], "online", "{outcome}");
    assert_eq!(outcome["started"], true);
    assert_eq!(outcome["worker"], "n/a");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "online before ComfyUI could answer"
    );
    let now = status(&app).await;
    assert_eq!(now["status"], "running");
    assert!(pid_of(&now).is_some());

    // Ignite again: ComfyUI answers, so nothing new is started.
    let again: Value = app.post("/api/system/ignite", None, None).await.body;
    assert_eq!(
        (again["comfy"].as_str(), again["started"].as_bool()),
        (Some("online"), Some(false))
    );
    assert_eq!(pid_of(&status(&app).await), pid_of(&now));
    app.post("/api/system/comfy/stop", None, None).await;
}

#[tokio::test]
async fn ignite_streams_its_phases() {
    let app = supervised(&["--startup-delay-ms", "300"], |_| {}).await;
    let response = app
        .http
        .post(app.url("/api/system/ignite"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut phases = Vec::new();
    let mut done = None;
    for event in Events::of(response).collect().await {
        let data = event.json().unwrap();
        match event.kind.as_deref().unwrap_or("") {
            "progress" => phases.push((
                data["phase"].as_str().unwrap().to_owned(),
                data["percent"].as_u64().unwrap(),
            )),
            "done" => done = Some(data),
            _ => {}
        }
    }
    let names: Vec<&str> = phases.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names.first(), Some(&"checking"));
    assert!(
        names.windows(2).all(|w| w[0] == w[1]
            || matches!(
                (w[0], w[1]),
                ("checking", "starting") | ("starting", "waiting") | ("waiting", "online")
            )),
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"online"));
    assert!(
        phases.windows(2).all(|w| w[0].1 <= w[1].1),
        "the bar never goes back: {phases:?}"
    );
    assert_eq!(phases.last().unwrap().1, 100);
    assert_eq!(done.expect("a final event")["comfy"], "online");
    app.post("/api/system/comfy/stop", None, None).await;
}

/// A restart waits out its back-off; the status says when it comes, and a stop calls it off.
#[tokio::test]
async fn a_scheduled_restart_is_reported_until_a_stop_calls_it_off() {
    let app = supervised(&[], |s| s.comfy_restart_delay_ms = "60000".into()).await;
    assert_eq!(app.post("/api/system/ignite", None, None).await.status, 200);
    assert_eq!(status(&app).await["next_start"], Value::Null);
    let pid = pid_of(&status(&app).await).expect("a pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let waiting = wait_for_status(
        &app,
        Duration::from_secs(10),
        "a restart is scheduled",
        |s| s["status"] == "starting" && s["next_start"].is_string(),
    )
    .await;
    let next =
        chrono::DateTime::parse_from_rfc3339(waiting["next_start"].as_str().unwrap()).unwrap();
    let ahead = next.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        ahead > chrono::TimeDelta::seconds(10) && ahead <= chrono::TimeDelta::seconds(60),
        "the restart waits out its back-off (a minute, at most the 30 s cap): {waiting}"
    );
    app.post("/api/system/comfy/stop", None, None).await;
    let stopped = status(&app).await;
    assert_eq!(
        (stopped["status"].as_str(), &stopped["next_start"]),
        (Some("stopped"), &Value::Null)
    );
}

#[tokio::test]
async fn a_killed_child_is_restarted() {
    let app = supervised(&[], |_| {}).await;
    assert_eq!(app.post("/api/system/ignite", None, None).await.status, 200);
    let first = status(&app).await;
    let pid = pid_of(&first).expect("a pid");

    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let after = wait_for_status(
        &app,
        Duration::from_secs(10),
        "ComfyUI runs again under a new pid",
        |s| s["status"] == "running" && pid_of(s).is_some_and(|p| p != pid),
    )
    .await;
    assert_eq!(after["restarts"], 1);
    assert_eq!(
        after["last_exit"]["signal"], 9,
        "the exit is recorded: {after}"
    );
    let outcome: Value = app.post("/api/system/ignite", None, None).await.body;
    assert_eq!(outcome["comfy"], "online", "the restarted ComfyUI answers");
    app.post("/api/system/comfy/stop", None, None).await;
}

#[tokio::test]
async fn a_child_that_crashes_at_once_ends_crash_looping_without_spinning() {
    let app = supervised(&["--exit-immediately", "3"], |_| {}).await;
    assert_eq!(
        app.post("/api/system/comfy/start", None, None).await.status,
        200
    );
    let looping = wait_for_status(&app, Duration::from_secs(15), "crash_looping", |s| {
        s["status"] == "crash_looping"
    })
    .await;
    assert_eq!(looping["last_exit"]["code"], 3);
    // The exit carries the log's last lines: why it died, without opening the log.
    assert!(
        looping["last_exit"]["log_tail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l
                .as_str()
                .unwrap()
                .contains("crashing at start-up with code 3")),
        "{looping}"
    );
    let restarts = looping["restarts"].as_u64().unwrap();
    assert_eq!(
        restarts, 4,
        "five quick exits: the first start and four restarts"
    );
    // Given up means given up: the supervisor schedules no further start.
    assert_eq!(looping["next_start"], Value::Null, "{looping}");

    // Its last words are in the log.
    let log: Value = app.get_json("/api/logs/comfy?lines=3").await;
    assert!(
        log["lines"].as_array().unwrap().iter().any(|l| l
            .as_str()
            .unwrap()
            .contains("crashing at start-up with code 3")),
        "{log}"
    );
}

#[tokio::test]
async fn stop_asks_first_and_forces_after_the_grace_period() {
    let app = supervised(&[], |_| {}).await;
    app.post("/api/system/ignite", None, None).await;
    let stopped: Value = app.post("/api/system/comfy/stop", None, None).await.body;
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(
        stopped["last_exit"]["code"], 0,
        "it exited by itself after SIGTERM: {stopped}"
    );

    let stubborn = supervised(&["--ignore-sigterm"], |s| {
        s.comfy_stop_grace_secs = "1".into()
    })
    .await;
    stubborn.post("/api/system/ignite", None, None).await;
    let started = Instant::now();
    let stopped: Value = stubborn
        .post("/api/system/comfy/stop", None, None)
        .await
        .body;
    let took = started.elapsed();
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(stopped["last_exit"]["signal"], 9, "forced: {stopped}");
    assert!(
        took >= Duration::from_secs(1),
        "forced only after the grace: {took:?}"
    );
}

#[tokio::test]
async fn start_and_stop_are_idempotent_and_concurrent_starts_start_once() {
    let app = supervised(&[], |_| {}).await;
    assert_eq!(
        app.post("/api/system/comfy/stop", None, None).await.status,
        200,
        "stop when stopped is a no-op"
    );
    let starts = (0..10).map(|_| app.post("/api/system/comfy/start", None, None));
    let answers = futures_util::future::join_all(starts).await;
    let mut pids = Vec::new();
    for answer in answers {
        assert_eq!(answer.status, 200);
        let body: Value = answer.body;
        pids.push(pid_of(&body));
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "one process for ten starts: {pids:?}");
    let again: Value = app.post("/api/system/comfy/start", None, None).await.body;
    assert_eq!(pid_of(&again), pids[0], "start when running is a no-op");
    assert_eq!(again["restarts"], 0);
    app.post("/api/system/comfy/stop", None, None).await;
}

/// ComfyUI's log shows what its nodes print, a prompt's `extra_data` (with the Comfy.org key) among it: the viewer,
/// and through it MCP's `tail_comfy_logs`, never shows a secret of Orchestrator's.
#[tokio::test]
async fn the_log_viewer_masks_every_secret() {
    let fake = testkit::fake_comfy::FakeComfy::start().await;
    let app = TestApp::spawn_with(&fake.url(), |s| {
        s.comfy_org_api_key = Some("comfy-org-secret-key-1".into());
        s.bfl_api_key = Some("bfl-secret-key-2".into());
        s.v0_api_key = Some("v0-secret-key-3".into());
    })
    .await;
    let log = app.data_dir.join("logs/comfyui.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(
        &log,
        "got prompt\n{'api_key_comfy_org': 'comfy-org-secret-key-1'} bfl-secret-key-2 v0-secret-key-3\nPrompt executed\n",
    )
    .unwrap();
    let tail: Value = app.get_json("/api/logs/comfy?lines=10").await;
    let text = tail["lines"].to_string();
    for secret in [
        "comfy-org-secret-key-1",
        "bfl-secret-key-2",
        "v0-secret-key-3",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(
        text.contains("{'api_key_comfy_org': '***'} *** ***"),
        "{text}"
    );
}

#[tokio::test]
async fn logs_are_tailed_and_a_missing_log_is_a_json_404() {
    let app = supervised(&[], |_| {}).await;
    let missing = app
        .http
        .get(app.url("/api/logs/comfy"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(error_code(&body), "log_not_found");
    // The panel asks for an empty answer instead.
    let quiet = app.get_json("/api/logs/comfy?missing=empty").await;
    assert_eq!(
        (
            quiet["exists"].as_bool(),
            quiet["lines"].as_array().map(Vec::len)
        ),
        (Some(false), Some(0))
    );
    assert!(
        body["error"]["details"]["path"]
            .as_str()
            .unwrap()
            .ends_with("comfyui.log")
    );

    app.post("/api/system/ignite", None, None).await;
    wait_until(
        Duration::from_secs(5),
        "ComfyUI's greeting is in the log (lines=0 reads as 1)",
        || async {
            let log: Value = app.get_json("/api/logs/comfy?lines=0").await;
            log["lines"]
                .as_array()
                .is_some_and(|l| l.len() == 1 && l[0].as_str().unwrap().contains("To see the GUI"))
        },
    )
    .await;
    let log: Value = app.get_json("/api/logs/comfy?lines=999999").await;
    assert!(
        log["lines"][0]
            .as_str()
            .unwrap()
            .starts_with("Starting server"),
        "{log}"
    );
    app.post("/api/system/comfy/stop", None, None).await;
}

#[tokio::test]
async fn without_a_command_or_with_an_external_comfy_start_is_refused() {
    let fake = testkit::fake_comfy::FakeComfy::start().await;
    // Nothing answers where ComfyUI should be (an answering one would be adopted instead).
    let nowhere = crate::support::closed_port().await;
    let app = TestApp::spawn(&format!("http://{nowhere}")).await;
    let refused = app.post("/api/system/comfy/start", None, None).await;
    assert_eq!(refused.status, 409);
    assert_eq!(error_code(&refused.body), "service_not_configured");

    let external =
        TestApp::spawn_with(&fake.url(), |s| s.service_backend = Some("external".into())).await;
    let refused = external.post("/api/system/comfy/start", None, None).await;
    assert_eq!(refused.status, 409);
    assert_eq!(error_code(&refused.body), "service_external");
    assert_eq!(
        status(&external).await["status"],
        "running",
        "an external ComfyUI's health is its status"
    );
    let outcome: Value = external.post("/api/system/ignite", None, None).await.body;
    assert_eq!(
        outcome,
        json!({"comfy": "online", "panel": "dev", "worker": "n/a", "elapsed_ms": outcome["elapsed_ms"], "started": false, "error": null})
    );
}

#[tokio::test]
async fn a_comfy_already_answering_is_adopted_and_nothing_else_is_started() {
    // Someone started ComfyUI by hand on the address the supervised backend would use.
    let running = testkit::fake_comfy::FakeComfy::start().await;
    let url = running.url();
    let command = vec![fake_comfyui().to_owned(), running.addr().to_string()];
    let app = TestApp::spawn_with(&url, |s| {
        s.comfy_command = Some(serde_json::to_string(&command).unwrap());
    })
    .await;
    let before = status(&app).await;
    assert_eq!(
        (before["status"].as_str(), before["adopted"].as_bool()),
        (Some("running"), Some(true)),
        "{before}"
    );
    let started = app.post("/api/system/comfy/start", None, None).await;
    assert_eq!(started.status, 200);
    let after: Value = started.body;
    assert_eq!(
        (after["adopted"].as_bool(), pid_of(&after)),
        (Some(true), None),
        "no child was started: {after}"
    );
    let ignite: Value = app.post("/api/system/ignite", None, None).await.body;
    assert_eq!(
        (ignite["comfy"].as_str(), ignite["started"].as_bool()),
        (Some("online"), Some(false))
    );
    let report = app.get_json("/api/status").await;
    assert_eq!(report["services"]["comfy"]["adopted"], true);
}

#[cfg(unix)]
/// The pid of the helper process `fake-comfyui --spawn-child` started, read from ComfyUI's log.
async fn helper_pid(app: &TestApp, not: Option<u32>) -> u32 {
    let found = std::cell::Cell::new(None);
    let found = &found;
    wait_until(
        Duration::from_secs(10),
        "the helper's pid in the log",
        || async move {
            let log = app
                .get_json("/api/logs/comfy?lines=500&missing=empty")
                .await;
            let pid = log["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .rev()
                .filter_map(|line| {
                    line.as_str()?
                        .split("helper process pid ")
                        .nth(1)?
                        .trim()
                        .parse()
                        .ok()
                })
                .find(|pid| Some(*pid) != not);
            found.set(pid);
            pid.is_some()
        },
    )
    .await;
    found.get().unwrap()
}

/// Gone, or a zombie nobody reaps (inside a container, PID 1 may not).
fn process_is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[tokio::test]
async fn a_hung_child_is_reported_killed_with_its_tree_and_restarted() {
    let app = supervised(&["--spawn-child"], |s| s.comfy_hung_secs = "2".into()).await;
    assert_eq!(app.post("/api/system/ignite", None, None).await.status, 200);
    let pid = pid_of(&status(&app).await).expect("a pid");
    let helper = helper_pid(&app, None).await;
    assert!(!process_is_dead(helper), "the helper runs beside ComfyUI");
    // Alive but frozen: it accepts connections (the kernel does) and never answers.
    let frozen = std::time::Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let after = wait_for_status(&app, Duration::from_secs(20), "a new ComfyUI runs", |s| {
        s["status"] == "running" && pid_of(s).is_some_and(|p| p != pid)
    })
    .await;
    let replaced = frozen.elapsed();
    assert_eq!(
        after["last_exit"]["cause"], "unresponsive",
        "the exit says it was ended for hanging: {after}"
    );
    assert_eq!(
        after["last_exit"]["signal"], 9,
        "the hung one was killed: {after}"
    );
    assert!(
        after["last_exit"]["log_tail"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
    );
    wait_until(
        Duration::from_secs(5),
        "the hung ComfyUI's helper process ended with it",
        || async { process_is_dead(helper) },
    )
    .await;
    let outcome: Value = app.post("/api/system/ignite", None, None).await.body;
    assert_eq!(outcome["comfy"], "online", "the restarted ComfyUI answers");
    eprintln!(
        "hung: frozen ComfyUI replaced by a healthy one after {replaced:?} (COMFY_HUNG_SECS=2); its helper process ended too"
    );
    app.post("/api/system/comfy/stop", None, None).await;
}

#[tokio::test]
async fn a_job_comfy_dies_under_carries_the_exit_in_its_error() {
    let reserved = reserved_port();
    let port = reserved.addr;
    let app = supervised_on(port, &[], |_| {}).await.holding(reserved);
    assert_eq!(app.post("/api/system/ignite", None, None).await.status, 200);
    let pid = pid_of(&status(&app).await).expect("a pid");
    let control = app
        .http
        .post(format!("http://{port}/__fake/control"))
        .json(&json!({ "step_delay_ms": 500 }))
        .send()
        .await
        .unwrap();
    assert!(control.status().is_success());
    let mut workflow = testkit::fake_comfy::no_model_workflow();
    workflow["1"]["inputs"]["color"] = json!(7);
    let created: Value = app
        .http
        .post(app.url("/api/jobs"))
        .json(&json!({ "workflow": workflow }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("a job id").to_owned();
    let job_path = format!("/api/jobs/{id}");
    wait_until(Duration::from_secs(10), "the job runs", || async {
        app.get_json(&job_path).await["status"] == "running"
    })
    .await;

    let killed = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_until(
        Duration::from_secs(15),
        "the job is backend_lost",
        || async { app.get_json(&job_path).await["status"] == "backend_lost" },
    )
    .await;
    let lost = app.get_json(&job_path).await;
    let noticed = killed.elapsed();
    let error = &lost["error"];
    assert_eq!(error["code"], "backend_lost", "{lost}");
    assert_eq!(
        error["exit"]["signal"], 9,
        "the crash is in the job's error: {lost}"
    );
    assert_eq!(error["exit"]["cause"], "exited", "{lost}");
    assert!(
        error["exit"]["log_tail"]
            .as_array()
            .is_some_and(|lines| !lines.is_empty()),
        "with ComfyUI's last log lines: {lost}"
    );
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("killed by signal 9")),
        "the message says how it died: {lost}"
    );
    eprintln!("crash forensics: job backend_lost with the exit record {noticed:?} after kill -9");
    app.post("/api/system/comfy/stop", None, None).await;
}
