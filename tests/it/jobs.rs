//! Generation jobs against the fake ComfyUI: submitted, followed, outputs fetched, cancelled, lost.

use std::time::{Duration, Instant};

use orchestrator::client::Events;
use serde_json::{Value, json};
use testkit::fake_comfy::{FakeComfy, OUTPUT_PNG, no_model_workflow};

use crate::support::{TestApp, error_code, wait_until};

async fn submit(app: &TestApp, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/api/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn job(app: &TestApp, id: &str) -> Value {
    app.get_json(&format!("/api/jobs/{id}")).await
}

/// A variant of the recorded no-model workflow (a new colour defeats ComfyUI's cache).
pub(crate) fn workflow(colour: u32) -> Value {
    let mut workflow = no_model_workflow();
    workflow["1"]["inputs"]["color"] = json!(colour);
    workflow
}

#[tokio::test]
async fn a_workflow_runs_to_success_with_its_output_on_disk() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;

    let response = submit(&app, json!({ "backend": "comfy", "workflow": workflow(1) })).await;
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // Accepted by ComfyUI; the follower may already have seen it start.
    assert!(
        matches!(created["status"].as_str(), Some("submitted" | "running")),
        "{created}"
    );

    // Follow it live: the event stream ends when the job does.
    let events = app
        .http
        .get(app.url(&format!("/api/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let events = tokio::time::timeout(Duration::from_secs(10), Events::of(events).collect())
        .await
        .expect("the stream ends");
    let states: Vec<String> = events
        .iter()
        .map(|event| event.json().unwrap()["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("succeeded"),
        "{states:?}"
    );

    let done = job(&app, &id).await;
    assert_eq!(done["progress"], 100.0);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    let outputs = done["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    let output = &outputs[0];
    assert!(output["name"].as_str().unwrap().starts_with("fixture_"));
    assert_eq!(output["content_type"], "image/png");
    assert_eq!(output["size"], OUTPUT_PNG.len());

    let on_disk = std::fs::read(
        app.data_dir
            .join("outputs")
            .join(&id)
            .join(output["name"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(
        on_disk, OUTPUT_PNG,
        "the file on disk is the bytes ComfyUI served"
    );
    let served = app
        .http
        .get(app.url(output["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(served.bytes().await.unwrap().as_ref(), OUTPUT_PNG);

    let listed: Value = app.get_json("/api/jobs?status=succeeded").await;
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    let missing = app
        .http
        .get(app.url(&format!("/api/jobs/{id}/outputs/..%2F..%2Forchestrator.db")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// Two SaveImage nodes with prefixes `a/x` and `b/x` each write `x_00001_.png`, in different subfolders (ComfyUI
/// counts per folder): the job keeps both files, each with its own bytes' name.
#[tokio::test]
async fn outputs_with_one_name_in_two_subfolders_are_both_kept() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let mut graph = workflow(7);
    graph["3"]["inputs"]["filename_prefix"] = json!("a/x");
    graph["4"] = json!({ "class_type": "SaveImage",
                         "inputs": { "filename_prefix": "b/x", "images": ["2", 0] } });
    let response = submit(&app, json!({ "workflow": graph })).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = app.wait_for_job(&id, "succeeded").await;
    let mut names: Vec<&str> = done["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b-x_00001_.png", "x_00001_.png"], "{done}");
    let dir = app.data_dir.join("outputs").join(&id);
    for output in done["outputs"].as_array().unwrap() {
        let served = app
            .http
            .get(app.url(output["url"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), 200);
        assert_eq!(served.bytes().await.unwrap().as_ref(), OUTPUT_PNG);
        assert!(dir.join(output["name"].as_str().unwrap()).is_file());
    }
    // Both were fetched from their own subfolder.
    let views: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/view")
        .filter_map(|r| r.query)
        .collect();
    assert!(views.iter().any(|q| q.contains("subfolder=a")), "{views:?}");
    assert!(views.iter().any(|q| q.contains("subfolder=b")), "{views:?}");
}

#[tokio::test]
async fn bad_requests_are_422_naming_each_field() {
    let fake = FakeComfy::start_with_models(&[("checkpoints", "mine.safetensors")]).await;
    let app = TestApp::spawn(&fake.url()).await;

    let cases = [
        (json!({ "template": "nope" }), "template"),
        (
            json!({ "template": "sdxl-t2i", "params": { "steps": 0 } }),
            "params.prompt",
        ),
        (
            json!({ "template": "sdxl-t2i", "params": { "prompt": "x", "steps": 100000 } }),
            "params.steps",
        ),
        (
            json!({ "template": "sdxl-t2i", "params": { "prompt": "x" } }),
            "params.checkpoint",
        ),
        (
            json!({ "template": "sdxl-t2i", "params": { "prompt": "x", "checkpoint": "mine.safetensors", "hue": 1 } }),
            "params.hue",
        ),
        (json!({ "workflow": [] }), "workflow"),
        (
            json!({ "workflow": { "1": { "inputs": {} } } }),
            "workflow.1.class_type",
        ),
        (
            json!({ "backend": "dall-e", "workflow": workflow(2) }),
            "backend",
        ),
        (json!({}), "template"),
    ];
    for (body, field) in cases {
        let response = submit(&app, body.clone()).await;
        assert_eq!(response.status(), 422, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(error_code(&answer), "validation_failed");
        assert!(
            answer["error"]["details"]["fields"][field].is_string(),
            "{field} not named for {body}: {answer}"
        );
    }
    assert!(
        fake.requests().iter().all(|r| r.path != "/prompt"),
        "nothing invalid reached ComfyUI"
    );
    let listed: Value = app.get_json("/api/jobs").await;
    assert_eq!(
        listed["jobs"],
        json!([]),
        "no job recorded for a request that was refused"
    );
}

#[tokio::test]
async fn comfy_validation_errors_reach_the_job_and_the_answer() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    // A class ComfyUI does not list is refused before anything is sent: it might be a paid node of a custom
    // package, and is not assumed free.
    let unknown = json!({ "1": { "class_type": "NoSuchNode", "inputs": {} } });
    let response = submit(&app, json!({ "workflow": unknown })).await;
    assert_eq!(response.status(), 422);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(error_code(&answer), "validation_failed");
    assert!(
        answer["error"]["details"]["fields"]["workflow.1.class_type"]
            .as_str()
            .is_some_and(|m| m.contains("NoSuchNode")),
        "{answer}"
    );
    assert!(
        fake.received_prompts().is_empty(),
        "nothing was sent to ComfyUI"
    );

    // ComfyUI's own refusal of a workflow reaches the job and the answer.
    let mut bad_link = testkit::fake_comfy::no_model_workflow();
    bad_link["3"]["inputs"]
        .as_object_mut()
        .unwrap()
        .remove("images");
    let response = submit(&app, json!({ "workflow": bad_link })).await;
    assert_eq!(response.status(), 422);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(error_code(&answer), "comfy_rejected", "{answer}");
    let id = answer["error"]["details"]["job_id"].as_str().unwrap();
    let failed = job(&app, id).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "comfy_rejected");

    let mut missing_model = testkit::fake_comfy::ksampler_workflow();
    missing_model["4"]["inputs"]["ckpt_name"] = json!("absent.safetensors");
    let answer: Value = submit(&app, json!({ "workflow": missing_model }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["error"]["details"]["node_errors"]["4"]["errors"][0]["type"], "value_not_in_list",
        "{answer}"
    );
}

#[tokio::test]
async fn a_template_job_runs_the_sampler_graph() {
    let fake = FakeComfy::start_with_models(&[("checkpoints", "sd_xl_base_1.0.safetensors")]).await;
    let app = TestApp::spawn(&fake.url()).await;
    let listed: Value = app.get_json("/api/templates").await;
    let names: Vec<&str> = listed["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sd35-t2i", "sdxl-i2i", "sdxl-t2i", "svd-v2v"]);
    let response = submit(&app, json!({ "template": "sdxl-t2i", "params": { "prompt": "a lighthouse at dusk", "seed": 42 } })).await;
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    let done = app
        .wait_for_job(created["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(done["template"], "sdxl-t2i");
    assert_eq!(done["params"]["prompt"], "a lighthouse at dusk");
    assert_eq!(done["outputs"].as_array().unwrap().len(), 1, "{done}");

    // What ComfyUI received is the template with the parameters in place.
    let posted = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/prompt" && r.method == "POST")
        .count();
    assert_eq!(posted, 1);
}

/// A cancel that arrives while the dispatcher is posting the job to ComfyUI: the job ends `cancelled` and stays so
/// (no `submitted` afterwards), and ComfyUI's copy is deleted from its queue or interrupted, never run to its end.
#[tokio::test]
async fn a_cancel_during_the_submit_stays_cancelled_and_comfy_drops_its_copy() {
    let fake = FakeComfy::start().await;
    fake.set_step_delay(Duration::from_millis(100));
    let upstream: std::net::SocketAddr = fake.url().trim_start_matches("http://").parse().unwrap();
    let relay =
        crate::support::delaying_relay(upstream, b"POST /prompt", Duration::from_millis(1500))
            .await;
    let app = TestApp::spawn(&format!("http://{relay}")).await;

    let submitting = tokio::spawn({
        let http = app.http.clone();
        let url = app.url("/api/jobs");
        async move {
            http.post(url)
                .json(&json!({ "workflow": workflow(11) }))
                .send()
                .await
                .unwrap()
        }
    });
    wait_until(Duration::from_secs(10), "the job is recorded", || async {
        app.get_json("/api/jobs").await["jobs"][0]["id"].is_string()
    })
    .await;
    let id = app.get_json("/api/jobs").await["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancelled: Value = app
        .http
        .post(app.url(&format!("/api/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(
        fake.received_prompts().is_empty(),
        "cancelled before ComfyUI had it"
    );

    // The submit comes back from ComfyUI with a prompt id: it does not bring the job back.
    let answer = tokio::time::timeout(Duration::from_secs(15), submitting)
        .await
        .expect("the submit ends")
        .unwrap();
    assert_ne!(answer.status(), 202, "the job was not submitted after all");
    assert_eq!(fake.received_prompts().len(), 1, "the POST was on its way");
    let deleted = fake
        .requests()
        .iter()
        .any(|r| r.path == "/queue" && r.method == "POST");
    assert!(deleted, "ComfyUI was told to delete its copy");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.path == "/interrupt" && r.method == "POST"),
        "and to interrupt it if it had started"
    );
    let history: Value = crate::support::client()
        .get(format!("{}/history", fake.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        history
            .as_object()
            .unwrap()
            .values()
            .all(|entry| entry["status"]["status_str"] != "success"),
        "ComfyUI did not run it to its end: {history}"
    );
    let job = job(&app, &id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let states: Vec<String> = app
        .events(&format!("/api/jobs/{id}/events"), Some("0"))
        .await
        .iter()
        .filter_map(|event| event.json())
        .map(|job| job["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("cancelled"),
        "{states:?}"
    );
    assert!(!states.iter().any(|s| s == "submitted"), "{states:?}");
}

#[tokio::test]
async fn cancel_removes_a_queued_job_and_interrupts_a_running_one() {
    let fake = FakeComfy::start().await;
    fake.set_step_delay(Duration::from_millis(150));
    let app = TestApp::spawn(&fake.url()).await;
    let running: Value = submit(&app, json!({ "workflow": workflow(3) }))
        .await
        .json()
        .await
        .unwrap();
    let queued: Value = submit(&app, json!({ "workflow": workflow(4) }))
        .await
        .json()
        .await
        .unwrap();
    let (running, queued) = (
        running["id"].as_str().unwrap().to_owned(),
        queued["id"].as_str().unwrap().to_owned(),
    );
    app.wait_for_job(&running, "running").await;

    let cancelled: Value = app
        .http
        .post(app.url(&format!("/api/jobs/{queued}/cancel")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let queue: Value = crate::support::client()
        .get(format!("{}/queue", fake.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        queue["queue_pending"],
        json!([]),
        "removed from ComfyUI's queue"
    );

    let response = app
        .http
        .post(app.url(&format!("/api/jobs/{running}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.wait_for_job(&running, "cancelled").await;
    assert!(fake.requests().iter().any(|r| r.path == "/interrupt"));

    let again = app
        .http
        .post(app.url(&format!("/api/jobs/{running}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(error_code(&again.json().await.unwrap()), "job_finished");
}

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
async fn an_input_image_is_uploaded_to_comfy_for_img2img() {
    use base64::Engine;
    let fake = FakeComfy::start_with_models(&[("checkpoints", "sd_xl_base_1.0.safetensors")]).await;
    let app = TestApp::spawn(&fake.url()).await;
    let image = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(OUTPUT_PNG)
    );
    let params = json!({ "prompt": "the same scene at night", "image": image });
    let response = submit(&app, json!({ "template": "sdxl-i2i", "params": params })).await;
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    let done = app
        .wait_for_job(created["id"].as_str().unwrap(), "succeeded")
        .await;

    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    let (name, size) = uploads.iter().next().unwrap();
    assert_eq!(*size, OUTPUT_PNG.len() as u64, "the image arrived whole");
    assert_eq!(
        done["params"]["image"],
        format!("upload:{name}"),
        "the store keeps a note, not the data"
    );

    for bad in [
        "data:text/plain;base64,aGk=",
        "data:image/png;base64,***",
        "data:image/png,raw",
        // A header smuggled in the type would reach the multipart part sent to ComfyUI.
        "data:image/png\r\nX-Injected: yes;base64,aGk=",
        "data:image/;base64,aGk=",
    ] {
        let params = json!({ "prompt": "x", "image": bad });
        let response = submit(&app, json!({ "template": "sdxl-i2i", "params": params })).await;
        assert_eq!(response.status(), 422, "{bad}");
        let answer: Value = response.json().await.unwrap();
        assert!(
            answer["error"]["details"]["fields"]["params.image"].is_string(),
            "{answer}"
        );
    }
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

/// An output that became a link out of the outputs folder (`outputs/<job>/x.png -> secret`) is not served: the
/// name the job recorded is resolved, links included, and must stay inside the folder. A link to another file of
/// the folder still is.
#[cfg(unix)]
#[tokio::test]
async fn an_output_replaced_by_a_link_out_of_the_folder_is_not_served() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let response = submit(&app, json!({ "workflow": workflow(7) })).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = app.wait_for_job(&id, "succeeded").await;
    let output = &done["outputs"][0];
    let url = output["url"].as_str().unwrap().to_owned();
    let file = app
        .data_dir
        .join("outputs")
        .join(&id)
        .join(output["name"].as_str().unwrap());

    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "password").unwrap();
    std::fs::rename(&file, file.with_extension("kept")).unwrap();
    std::os::unix::fs::symlink(&secret, &file).unwrap();
    let served = app.http.get(app.url(&url)).send().await.unwrap();
    assert_eq!(served.status(), 404);
    assert_eq!(
        error_code(&served.json::<Value>().await.unwrap()),
        "output_not_found"
    );

    // The job's folder itself a link out (to a folder with a file of that name): refused as well.
    let folder = app.data_dir.join("outputs").join(&id);
    std::fs::remove_file(&file).unwrap();
    std::fs::copy(file.with_extension("kept"), &file).unwrap();
    std::fs::rename(&folder, outside.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("moved"), &folder).unwrap();
    assert_eq!(
        app.http.get(app.url(&url)).send().await.unwrap().status(),
        404
    );

    // A link inside the outputs folder is followed.
    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(outside.path().join("moved"), &folder).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(file.with_extension("kept").file_name().unwrap(), &file).unwrap();
    let served = app.http.get(app.url(&url)).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await.unwrap().as_ref(), OUTPUT_PNG);
}
