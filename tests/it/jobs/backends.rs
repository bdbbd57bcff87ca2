//! Jobs and the ComfyUI backends they run on: chosen by queue, followed over one shared WebSocket or the history,
//! waiting until one comes online, moved when one dies before starting them, lost when it dies under them.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::fake_comfy::{FakeComfy, OUTPUT_PNG};

use super::{job, submit, workflow};
use crate::support::{TestApp, error_code, wait_until};

#[tokio::test]
async fn comfy_dying_mid_job_is_backend_lost_within_10_s() {
    let fake = FakeComfy::start().await;
    fake.set_step_delay(Duration::from_millis(300));
    let app = TestApp::spawn_with(&fake.url(), |s| s.comfy_read_timeout_secs = "2".into()).await;
    let created: Value = submit(&app, json!({ "workflow": workflow(5) }))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let id2 = id.clone();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let now = job(&app, &id2).await;
            if now["status"] == "running" {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if seen.is_err() {
        panic!("never running: {}", job(&app, &id).await);
    }

    // Dead to its clients: every socket closed, nothing answered. (Its port stays taken, so no other test's fake
    // can appear there.)
    fake.set_hang(true);
    fake.close_sockets(1001, "going away");
    let job_path = format!("/api/jobs/{id}");
    wait_until(
        Duration::from_secs(10),
        "the job is noticed lost",
        || async { app.get_json(&job_path).await["status"] == "backend_lost" },
    )
    .await;
    let lost = app.get_json(&job_path).await;
    assert_eq!(lost["error"]["code"], "backend_lost");
    assert!(lost["outputs"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_job_goes_to_the_online_backend_with_the_shortest_queue() {
    let busy = FakeComfy::start().await;
    busy.set_step_delay(Duration::from_millis(200));
    let idle = FakeComfy::start().await;
    // Two prompts straight into the first ComfyUI's queue.
    let client = crate::support::client();
    for colour in [10, 11] {
        let answer = client
            .post(format!("{}/prompt", busy.url()))
            .json(&json!({ "prompt": workflow(colour) }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let app = TestApp::spawn(&format!("{},{}", busy.url(), idle.url())).await;
    let created: Value = submit(&app, json!({ "workflow": workflow(12) }))
        .await
        .json()
        .await
        .unwrap();
    let done = app
        .wait_for_job(created["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(done["backend_url"], idle.url().as_str());

    let down = crate::support::closed_port().await;
    let app = TestApp::spawn(&format!("http://{down},{}", idle.url())).await;
    let created: Value = submit(&app, json!({ "workflow": workflow(13) }))
        .await
        .json()
        .await
        .unwrap();
    let done = app
        .wait_for_job(created["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(
        done["backend_url"],
        idle.url().as_str(),
        "an offline backend is skipped"
    );

    // Input images must go to the ComfyUI that runs the job: with none answering, such a job is refused whole.
    let app = TestApp::spawn(&format!("http://{down}")).await;
    let image = format!(
        "data:image/png;base64,{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, OUTPUT_PNG)
    );
    let params = json!({ "prompt": "x", "image": image });
    let refused = submit(&app, json!({ "template": "sdxl-i2i", "params": params })).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(error_code(&refused.json().await.unwrap()), "comfy_offline");
    let listed: Value = app.get_json("/api/jobs").await;
    assert_eq!(
        listed["jobs"],
        json!([]),
        "nothing recorded when no ComfyUI can take its images"
    );
}

#[tokio::test]
async fn after_a_restart_a_job_comfy_no_longer_knows_is_backend_lost() {
    let fake = FakeComfy::start().await;
    let data = tempfile::tempdir().unwrap();
    // A job an earlier run submitted; this ComfyUI (restarted since) has never heard of its prompt.
    let store = orchestrator::store::Store::open(&crate::support::database_for(data.path()))
        .await
        .unwrap();
    let workflow = workflow(20);
    let new = orchestrator::store::NewJob {
        backend: orchestrator::model::Backend::Comfy,
        template: None,
        params: &json!({}),
        workflow: &workflow,
        backend_url: Some(&fake.url()),
    };
    let id = store.insert_job(new).await.unwrap().id;
    let change = orchestrator::store::JobChange {
        status: Some(orchestrator::model::JobStatus::Running),
        comfy_prompt_id: Some("prompt-from-before-the-restart".into()),
        ..Default::default()
    };
    store.update_job(&id, change).await.unwrap();
    store.close().await;

    let app = TestApp::spawn_with(&fake.url(), |s| {
        s.data_dir = data.path().display().to_string()
    })
    .await;
    let lost = app.wait_for_job(&id, "backend_lost").await;
    assert!(
        lost["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no longer knows"),
        "{lost}"
    );
    assert!(lost["finished_at"].is_string());
}

#[tokio::test]
async fn a_websocket_dropped_mid_run_is_reopened_and_the_job_still_succeeds() {
    let fake = FakeComfy::start().await;
    fake.set_step_delay(Duration::from_millis(200));
    let app = TestApp::spawn(&fake.url()).await;
    let created: Value = submit(&app, json!({ "workflow": workflow(21) }))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    app.wait_for_job(&id, "running").await;
    let dropped = Instant::now();
    // ComfyUI stays up; only its sockets go (a proxy restart, a network blip).
    fake.close_sockets(1001, "going away");
    let done = app.wait_for_job(&id, "succeeded").await;
    assert_eq!(done["outputs"].as_array().unwrap().len(), 1, "{done}");
    eprintln!(
        "socket dropped mid-run: job succeeded {:?} later",
        dropped.elapsed()
    );
}

#[tokio::test]
async fn a_run_whose_messages_never_come_is_found_through_the_history() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn_with(&fake.url(), |s| s.comfy_silence_secs = "1".into()).await;
    // The socket is open and greeted; after that ComfyUI says nothing about the runs, which still finish.
    fake.set_silent(true);
    let mut ids = Vec::new();
    for colour in [22, 23, 24] {
        let created: Value = submit(&app, json!({ "workflow": workflow(colour) }))
            .await
            .json()
            .await
            .unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let done = app.wait_for_job(id, "succeeded").await;
        assert_eq!(done["outputs"].as_array().unwrap().len(), 1, "{done}");
    }
    // A silence costs one look at the queue for the whole link, not one per job; and every history asked for is
    // of a prompt the queue no longer held.
    let requests = fake.requests();
    let queue_looks = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/queue")
        .count();
    let history_looks = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/history/"))
        .count();
    assert!(queue_looks >= 1, "the silence was noticed");
    assert!(
        history_looks <= queue_looks * ids.len() + ids.len(),
        "{history_looks} history reads for {queue_looks} silences"
    );
}

/// Jobs share their backend's one WebSocket: many jobs, one socket at ComfyUI, every job followed to its end.
#[tokio::test]
async fn every_job_on_a_backend_shares_one_websocket() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let mut ids = Vec::new();
    for colour in 40..52 {
        let created: Value = submit(&app, json!({ "workflow": workflow(colour) }))
            .await
            .json()
            .await
            .unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let done = app.wait_for_job(id, "succeeded").await;
        assert_eq!(done["outputs"].as_array().unwrap().len(), 1, "{done}");
        assert_eq!(done["progress"], 100.0, "{done}");
    }
    assert_eq!(
        fake.sockets_opened(),
        1,
        "one socket for {} jobs",
        ids.len()
    );
    // Every prompt was posted under Orchestrator's one client id, with an id Orchestrator chose.
    let prompts = fake.received_prompts();
    let clients: std::collections::HashSet<_> = prompts
        .iter()
        .map(|p| p["client_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert!(prompts.iter().all(|p| p["prompt_id"].is_string()));
}

#[tokio::test]
async fn jobs_wait_in_orchestrators_queue_until_a_comfy_comes_online() {
    // The port is taken but nothing answers yet: ComfyUI is still starting.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = TestApp::spawn(&format!("http://{addr}")).await;
    let mut ids = Vec::new();
    for colour in [31, 32] {
        let response = submit(&app, json!({ "workflow": workflow(colour) })).await;
        assert_eq!(response.status(), 202);
        let created: Value = response.json().await.unwrap();
        assert_eq!(created["status"], "queued");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let online = Instant::now();
    let fake = FakeComfy::start_on(listener);
    for id in &ids {
        let done = app.wait_for_job(id, "succeeded").await;
        assert_eq!(done["backend_url"], fake.url().as_str());
    }
    let prompts = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/prompt")
        .count();
    assert_eq!(prompts, 2, "each waiting job was sent once");
    eprintln!(
        "queue: 2 waiting jobs done {:?} after ComfyUI came online",
        online.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_a_dead_backend_never_started_go_to_another_once_and_the_running_one_is_lost() {
    let first = FakeComfy::start().await;
    first.set_step_delay(Duration::from_millis(3000));
    let second = FakeComfy::start().await;
    let app = TestApp::spawn_with(&format!("{},{}", first.url(), second.url()), |s| {
        s.comfy_read_timeout_secs = "2".into();
    })
    .await;
    // The second is busy answering nothing while the jobs are handed out, so all four go to the first.
    second.set_hang(true);
    let mut ids = Vec::new();
    for colour in 41..45 {
        let created: Value = submit(&app, json!({ "workflow": workflow(colour) }))
            .await
            .json()
            .await
            .unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    second.set_hang(false);
    app.wait_for_job(&ids[0], "running").await;
    for id in &ids[1..] {
        assert_eq!(
            job(&app, id).await["status"],
            "submitted",
            "waiting in the first ComfyUI's queue"
        );
    }
    let died = Instant::now();
    // Dead to its clients: its sockets closed, nothing answered any more.
    first.set_hang(true);
    first.close_sockets(1001, "going away");

    let lost = app.wait_for_job(&ids[0], "backend_lost").await;
    // It had started: it may have done work, so it is not sent again; the reason is kept.
    assert!(
        lost["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{lost}"
    );
    assert_eq!(lost["backend_url"], first.url().as_str());
    assert!(lost["outputs"].as_array().unwrap().is_empty());
    for id in &ids[1..] {
        let done = app.wait_for_job(id, "succeeded").await;
        assert_eq!(done["backend_url"], second.url().as_str());
    }
    eprintln!(
        "failover: 3 waiting jobs finished on the second ComfyUI {:?} after the first died",
        died.elapsed()
    );
    let prompts: Vec<_> = second
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/prompt")
        .collect();
    assert_eq!(prompts.len(), 3, "the second received each job once");
    // The move is in each job's history of events.
    let history = app
        .http
        .get(app.url(&format!("/api/jobs/{}/events", ids[1])))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        history.matches("event: resubmitted").count(),
        1,
        "{history}"
    );
}
