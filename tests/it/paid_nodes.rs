//! ComfyUI's paid API nodes behind the money rules: every path, counted at a fake Comfy.org API that the fake
//! ComfyUI calls with the key it finds in the prompt's `extra_data`, as the real one does.

use std::time::Duration;

use orchestrator::config::Settings;
use serde_json::{Value, json};
use testkit::fake_bfl::FakeBfl;
use testkit::fake_comfy::FakeComfy;
use testkit::fake_comfy_org::FakeComfyOrg;

use crate::support::{TestApp, error_code, wait_until};

/// Orchestrator's own Comfy.org key.
const SERVER_KEY: &str = "comfyui-server-key-0123456789abcdef";
/// A key a client (ComfyUI's editor, signed in) puts into `extra_data`.
const CLIENT_KEY: &str = "comfyui-client-key-should-never-be-used";
const CLIENT_TOKEN: &str = "client-auth-token-should-never-be-used";

struct Rig {
    comfy: FakeComfy,
    org: FakeComfyOrg,
    app: TestApp,
}

async fn rig(allow: bool, adjust: impl FnOnce(&mut Settings)) -> Rig {
    let comfy = FakeComfy::start().await;
    let org = FakeComfyOrg::start().await;
    comfy.set_comfy_api_base(&org.url());
    let app = TestApp::spawn_with(&comfy.url(), |s| {
        s.allow_generation = allow.to_string();
        s.comfy_org_api_key = Some(SERVER_KEY.into());
        s.paid_rate_limit_per_min = "100000".into();
        s.paid_rate_limit_burst = "1000".into();
        adjust(s);
    })
    .await;
    Rig { comfy, org, app }
}

/// FLUX 1.1 [pro] Ultra through ComfyUI's API node, saved by SaveImage (ids as the recorded run's).
fn paid_workflow(prompt: &str) -> Value {
    json!({
        "1": {"class_type": "FluxProUltraImageNode", "inputs": {"prompt": prompt, "aspect_ratio": "16:9",
              "prompt_upsampling": false, "raw": false, "seed": 7}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "paid", "images": ["1", 0]}},
    })
}

fn free_workflow() -> Value {
    testkit::fake_comfy::no_model_workflow()
}

async fn post(app: &TestApp, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut request = app.http.post(app.url(path)).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A dry run of `workflow`, and the body that runs it with the dry run's token.
async fn confirmed(app: &TestApp, workflow: &Value) -> Value {
    let (status, dry) = post(
        app,
        "/api/jobs",
        &json!({ "workflow": workflow, "dryRun": true }),
        None,
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    json!({ "workflow": workflow, "confirmToken": dry["confirmToken"] })
}

/// The prompt ComfyUI's editor posts: the graph, its client id and the signed-in user's credentials.
fn editor_prompt(workflow: &Value) -> Value {
    json!({ "prompt": workflow, "client_id": "editor-1",
            "extra_data": { "api_key_comfy_org": CLIENT_KEY, "auth_token_comfy_org": CLIENT_TOKEN,
                            "extra_pnginfo": { "workflow": {} } } })
}

/// Every POST /prompt ComfyUI queued.
fn queued(comfy: &FakeComfy) -> usize {
    comfy.received_prompts().len()
}

#[tokio::test]
async fn with_generation_off_no_path_sends_a_paid_workflow() {
    let Rig { comfy, org, app } = rig(false, |_| {}).await;
    let workflow = paid_workflow("a lighthouse");

    let (status, body) = post(&app, "/api/jobs", &json!({ "workflow": workflow }), None).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (403, "generation_disabled"),
        "{body}"
    );
    let named = &body["error"]["details"]["paidNodes"][0];
    assert_eq!(
        (
            named["id"].as_str(),
            named["class_type"].as_str(),
            named["category"].as_str()
        ),
        (
            Some("1"),
            Some("FluxProUltraImageNode"),
            Some("api node/image/BFL")
        )
    );

    // The gateway, under every spelling of ComfyUI's prompt route.
    for path in [
        "/api/comfy/prompt",
        "/api/comfy/api/prompt",
        "/api/comfy/%70rompt",
        "/api/comfy//prompt/",
    ] {
        let (status, body) = post(&app, path, &editor_prompt(&workflow), None).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["type"], "generation_disabled", "{path}");
        assert_eq!(
            body["node_errors"]["1"]["class_type"], "FluxProUltraImageNode",
            "{path}"
        );
    }
    // ComfyUI's editor on its own origin posts to ComfyUI's own paths: the same money gate.
    for path in ["/prompt", "/api/prompt", "/%70rompt"] {
        let response = app
            .http
            .post(app.editor_url(path))
            .header("Origin", format!("http://{}", app.editor_addr))
            .json(&editor_prompt(&workflow))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "editor {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["type"], "generation_disabled",
            "editor {path}"
        );
    }
    // A token from a dry run changes nothing while generation is off.
    let (status, dry) = post(
        &app,
        "/api/jobs",
        &json!({ "workflow": workflow, "dryRun": true }),
        None,
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["paid"].as_bool(), dry["estimatedCost"]["usd"].as_f64()),
        (Some(true), Some(0.06))
    );
    let token = dry["confirmToken"].as_str().unwrap();
    let (status, _) = post(
        &app,
        "/api/jobs",
        &json!({ "workflow": workflow, "confirmToken": token }),
        None,
    )
    .await;
    assert_eq!(status, 403);

    assert_eq!(queued(&comfy), 0, "ComfyUI never got the workflow");
    assert_eq!(org.call_count(), 0, "Comfy.org was never called");
}

#[tokio::test]
async fn a_paid_job_runs_once_per_confirmation_with_the_servers_key() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    org.set_price(0.055);
    let workflow = paid_workflow("a harbour at dawn");

    let (status, refused) = post(&app, "/api/jobs", &json!({ "workflow": workflow }), None).await;
    assert_eq!(
        (status, error_code(&refused).as_str()),
        (402, "confirmation_required"),
        "{refused}"
    );
    let dry = &refused["error"]["details"];
    assert_eq!(dry["estimatedCost"]["usd"], 0.06);
    assert_eq!(dry["paidNodes"][0]["priceSource"], "price_table");
    let token = dry["confirmToken"]
        .as_str()
        .expect("the 402 carries a token")
        .to_owned();
    // A token for another workflow does not confirm this one.
    let other = paid_workflow("something else");
    let (status, body) = post(
        &app,
        "/api/jobs",
        &json!({ "workflow": other, "confirmToken": token }),
        None,
    )
    .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (402, "confirmation_mismatch")
    );
    assert_eq!(queued(&comfy), 0);

    let (status, created) = post(
        &app,
        "/api/jobs",
        &json!({ "workflow": workflow, "confirmToken": token }),
        None,
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap();
    let done = app.wait_for_job(id, "succeeded").await;
    assert_eq!(done["cost_usd"], 0.06, "{done}");
    assert_eq!(
        done["approval"]["paidNodes"][0]["class_type"],
        "FluxProUltraImageNode"
    );
    wait_until(
        Duration::from_secs(5),
        "the reported price is recorded",
        || async { app.get_json(&format!("/api/jobs/{id}")).await["actual_cost_usd"] == 0.055 },
    )
    .await;
    wait_until(
        Duration::from_secs(5),
        "the charge is settled at the price reported",
        || async { app.get_json("/api/flux/budget").await["spent"] == 0.055 },
    )
    .await;

    let calls = org.calls();
    assert_eq!(calls.len(), 1, "one call for one confirmation");
    assert_eq!(calls[0].path, "/proxy/bfl/flux-pro-1.1-ultra/generate");
    assert_eq!(calls[0].api_key.as_deref(), Some(SERVER_KEY));

    // The token paid once.
    let (status, body) = post(
        &app,
        "/api/jobs",
        &json!({ "workflow": workflow, "confirmToken": token }),
        None,
    )
    .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (402, "confirmation_used"),
        "{body}"
    );
    assert_eq!(org.call_count(), 1);
    assert_eq!(queued(&comfy), 1);
}

#[tokio::test]
async fn a_paid_prompt_at_the_gateway_waits_for_confirmation_and_never_carries_the_clients_key() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    let workflow = paid_workflow("a prompt from the editor");

    let (status, refused) = post(&app, "/api/comfy/prompt", &editor_prompt(&workflow), None).await;
    assert_eq!(status, 402, "{refused}");
    // As ComfyUI's editor shows a rejected prompt, and with Orchestrator's code.
    assert_eq!(refused["error"]["type"], "confirmation_required");
    assert_eq!(error_code(&refused), "confirmation_required");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$0.060")
    );
    assert_eq!(
        refused["node_errors"]["1"]["class_type"],
        "FluxProUltraImageNode"
    );
    let id = refused["error"]["details"]["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    let waiting = app.get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(waiting["status"], "awaiting_confirmation");
    assert_eq!(waiting["approval"]["estimatedCost"]["usd"], 0.06);
    let listed = app.get_json("/api/jobs?status=awaiting_confirmation").await;
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    assert_eq!(queued(&comfy), 0);

    // Confirm asks for the token first, then takes it once.
    let confirm = format!("/api/jobs/{id}/confirm");
    let (status, asked) = post(&app, &confirm, &json!({}), None).await;
    assert_eq!(
        (status, error_code(&asked).as_str()),
        (402, "confirmation_required")
    );
    let token = asked["error"]["details"]["confirmToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, sent) = post(&app, &confirm, &json!({ "confirmToken": token }), None).await;
    assert_eq!(
        (status, sent["id"].as_str()),
        (202, Some(id.as_str())),
        "{sent}"
    );
    app.wait_for_job(&id, "succeeded").await;
    let (status, again) = post(&app, &confirm, &json!({ "confirmToken": token }), None).await;
    assert_eq!(
        (status, error_code(&again).as_str()),
        (409, "not_awaiting_confirmation")
    );

    let calls = org.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].api_key.as_deref(), Some(SERVER_KEY));
    assert_eq!(
        calls[0].bearer, None,
        "the client's token never reaches Comfy.org"
    );

    // A free prompt from the editor goes through, without the client's credentials.
    let (status, accepted) = post(
        &app,
        "/api/comfy/prompt",
        &editor_prompt(&free_workflow()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{accepted}");
    let prompts = comfy.received_prompts();
    assert_eq!(prompts.len(), 2);
    assert_eq!(prompts[0]["extra_data"]["api_key_comfy_org"], SERVER_KEY);
    assert!(
        prompts[1]["extra_data"].get("api_key_comfy_org").is_none(),
        "{}",
        prompts[1]
    );
    assert!(
        prompts[1]["extra_data"]
            .get("auth_token_comfy_org")
            .is_none()
    );
    assert_eq!(prompts[1]["client_id"], "editor-1");
    assert!(
        prompts[1]["extra_data"]["extra_pnginfo"].is_object(),
        "the rest of extra_data is kept"
    );
    let text = serde_json::to_string(&prompts).unwrap();
    assert!(!text.contains(CLIENT_KEY) && !text.contains(CLIENT_TOKEN));
}

#[tokio::test]
async fn the_keys_appear_in_no_queue_history_or_websocket_answer() {
    let Rig {
        comfy,
        org: _org,
        app,
    } = rig(true, |_| {}).await;
    comfy.set_step_delay(Duration::from_millis(150));
    // A socket through the gateway, watching everything ComfyUI broadcasts.
    let ws_url = format!("ws://{}/api/comfy/ws?clientId=watcher", app.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();

    let workflow = paid_workflow("keys stay home");
    let (status, created) = post(&app, "/api/jobs", &confirmed(&app, &workflow).await, None).await;
    assert_eq!(status, 202);
    let id = created["id"].as_str().unwrap().to_owned();
    // ComfyUI 0.3.64 shows the running prompt's extra_data, the server's key included, in /queue.
    let direct: Value = reqwest::get(format!("{}/queue", comfy.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        direct.to_string().contains(SERVER_KEY),
        "the fake behaves as ComfyUI: {direct}"
    );
    for path in [
        "/api/comfy/queue",
        "/api/comfy/api/queue",
        "/api/comfy//queue",
    ] {
        let text = app
            .http
            .get(app.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("queue_running"), "{path}: {text}");
        assert!(
            !text.contains(SERVER_KEY) && !text.contains("api_key_comfy_org"),
            "{path}: {text}"
        );
    }
    let done = app.wait_for_job(&id, "succeeded").await;
    let prompt_id = done["comfy_prompt_id"].as_str().unwrap();
    for path in [
        "/api/comfy/history".to_owned(),
        format!("/api/comfy/history/{prompt_id}"),
    ] {
        let text = app
            .http
            .get(app.url(&path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains(prompt_id), "{path}");
        assert!(!text.contains(SERVER_KEY), "{path}");
    }
    // Every frame the watcher got.
    use futures_util::StreamExt;
    let mut frames = 0;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(300), socket.next()).await
    {
        frames += 1;
        assert!(!message.to_string().contains(SERVER_KEY));
    }
    assert!(frames > 0);
    // Nor the job row, its events or the page.
    for path in [
        format!("/api/jobs/{id}"),
        "/api/jobs".to_owned(),
        format!("/jobs/{id}"),
        "/".to_owned(),
    ] {
        let text = app
            .http
            .get(app.url(&path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains(SERVER_KEY), "{path}");
    }
    let events = app
        .http
        .get(app.url(&format!("/api/jobs/{id}/events")))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    let mut body = events.bytes_stream();
    let mut seen = String::new();
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_millis(500), body.next()).await
    {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains("succeeded") {
            break;
        }
    }
    assert!(seen.contains("succeeded") && !seen.contains(SERVER_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_confirms_under_one_idempotency_key_make_one_call() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    let workflow = paid_workflow("double click");
    let body = confirmed(&app, &workflow).await;
    let answers = futures_util::future::join_all(
        (0..20).map(|_| post(&app, "/api/jobs", &body, Some("click-7"))),
    )
    .await;
    let ids: std::collections::HashSet<_> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 202, "{body}");
            body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    let id = ids.into_iter().next().unwrap();
    app.wait_for_job(&id, "succeeded").await;
    assert_eq!(org.call_count(), 1);
    assert_eq!(queued(&comfy), 1);

    // The same for a job confirmed from the panel.
    let (_, refused) = post(
        &app,
        "/api/comfy/prompt",
        &editor_prompt(&paid_workflow("from the editor")),
        None,
    )
    .await;
    let waiting = refused["error"]["details"]["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = refused["error"]["details"]["confirmToken"].clone();
    let confirm = format!("/api/jobs/{waiting}/confirm");
    let body = json!({ "confirmToken": token });
    let answers = futures_util::future::join_all(
        (0..20).map(|_| post(&app, &confirm, &body, Some("click-8"))),
    )
    .await;
    assert!(
        answers
            .iter()
            .all(|(status, body)| *status == 202 && body["id"] == waiting.as_str()),
        "{answers:?}"
    );
    app.wait_for_job(&waiting, "succeeded").await;
    assert_eq!(org.call_count(), 2);
    assert_eq!(queued(&comfy), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_paid_requests_of_flux_and_paid_nodes_never_overshoot_one_budget() {
    const BFL_KEY: &str = "bfl-test-key-0123456789";
    let bfl = FakeBfl::start(BFL_KEY).await;
    bfl.set_pending_polls(1000);
    let bfl_url = bfl.url();
    // $0.30 covers five $0.06 calls, whichever kind.
    let Rig { comfy, org, app } = rig(true, |s| {
        s.flux_daily_budget_usd = "0.30".into();
        s.bfl_api_key = Some(BFL_KEY.into());
        s.bfl_base_url = bfl_url;
        s.flux_poll_interval_ms = "20".into();
    })
    .await;
    let mut requests = Vec::new();
    for n in 0..25 {
        let flux = json!({ "model": "flux-pro-1.1-ultra", "prompt": format!("flux {n}") });
        let (_, dry) = post(&app, "/api/flux/generate", &flux, None).await;
        let mut paid = flux;
        paid["dryRun"] = json!(false);
        paid["confirmToken"] = dry["confirmToken"].clone();
        requests.push(("/api/flux/generate", paid));
        let workflow = paid_workflow(&format!("node {n}"));
        requests.push(("/api/jobs", confirmed(&app, &workflow).await));
    }
    let answers = futures_util::future::join_all(
        requests
            .iter()
            .map(|(path, body)| post(&app, path, body, None)),
    )
    .await;
    let accepted: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == 202)
        .collect();
    let over = answers
        .iter()
        .filter(|(status, body)| *status == 402 && error_code(body) == "budget_exceeded")
        .count();
    assert_eq!(
        (accepted.len(), over),
        (5, 45),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    // The accepted ComfyUI jobs run to their end; then every call is counted.
    for (_, body) in &accepted {
        let id = body["id"].as_str().unwrap();
        let job = app.get_json(&format!("/api/jobs/{id}")).await;
        if job["backend"] == "comfy" {
            app.wait_for_job(id, "succeeded").await;
        }
    }
    assert_eq!(
        bfl.submits() + org.call_count(),
        5,
        "bfl {} + comfy.org {}",
        bfl.submits(),
        org.call_count()
    );
    assert_eq!(org.call_count(), queued(&comfy));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_job_is_never_moved_to_another_comfyui() {
    let first = FakeComfy::start().await;
    first.set_step_delay(Duration::from_millis(3000));
    let second = FakeComfy::start().await;
    let org = FakeComfyOrg::start().await;
    first.set_comfy_api_base(&org.url());
    second.set_comfy_api_base(&org.url());
    let app = TestApp::spawn_with(&format!("{},{}", first.url(), second.url()), |s| {
        s.allow_generation = "true".into();
        s.comfy_org_api_key = Some(SERVER_KEY.into());
        s.comfy_read_timeout_secs = "2".into();
    })
    .await;
    second.set_hang(true);
    // A free job keeps the first ComfyUI busy; the paid one waits behind it.
    let (_, busy) = post(
        &app,
        "/api/jobs",
        &json!({ "workflow": free_workflow() }),
        None,
    )
    .await;
    let workflow = paid_workflow("must not move");
    let (status, paid) = post(&app, "/api/jobs", &confirmed(&app, &workflow).await, None).await;
    assert_eq!(status, 202, "{paid}");
    let paid_id = paid["id"].as_str().unwrap();
    // A free one behind it, which may move.
    let (_, free) = post(
        &app,
        "/api/jobs",
        &json!({ "workflow": free_workflow() }),
        None,
    )
    .await;
    second.set_hang(false);
    app.wait_for_job(busy["id"].as_str().unwrap(), "running")
        .await;
    assert_eq!(
        app.get_json(&format!("/api/jobs/{paid_id}")).await["backend_url"],
        first.url().as_str()
    );

    first.set_hang(true);
    first.close_sockets(1001, "going away");
    let lost = app.wait_for_job(paid_id, "backend_lost").await;
    assert_eq!(lost["backend_url"], first.url().as_str());
    app.wait_for_job(free["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(
        second.received_prompts().len(),
        1,
        "only the free job moved"
    );
    assert_eq!(org.call_count(), 0);
}

#[tokio::test]
async fn a_class_comfyui_does_not_list_is_refused_not_assumed_free() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    let workflow = json!({"1": {"class_type": "SomeoneElsesPaidNode", "inputs": {}}});
    let (status, body) = post(&app, "/api/jobs", &json!({ "workflow": workflow }), None).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (422, "validation_failed"),
        "{body}"
    );
    assert!(body["error"]["details"]["fields"]["workflow.1.class_type"].is_string());
    let (status, body) = post(
        &app,
        "/api/comfy/prompt",
        &json!({ "prompt": workflow }),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (400, Some("invalid_prompt")),
        "{body}"
    );
    assert_eq!(queued(&comfy), 0);
    assert_eq!(org.call_count(), 0);
}

#[tokio::test]
async fn a_dry_run_of_a_free_workflow_costs_nothing_and_sends_nothing() {
    let Rig { comfy, app, .. } = rig(true, |_| {}).await;
    let (status, dry) = post(
        &app,
        "/api/jobs",
        &json!({ "workflow": free_workflow(), "dryRun": true }),
        None,
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["paid"].as_bool(), dry["estimatedCost"]["usd"].as_f64()),
        (Some(false), Some(0.0))
    );
    assert!(dry["confirmToken"].is_null());
    assert_eq!(queued(&comfy), 0);
}

/// A job recorded while no ComfyUI had ever answered (so nobody could tell what its nodes cost) waits in
/// Orchestrator's queue; when a ComfyUI comes online the gate looks at it before sending, and a paid one waits for
/// a confirmation instead of going out. A free one beside it runs.
#[tokio::test]
async fn a_queued_job_found_paid_when_comfy_comes_online_waits_for_confirmation() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let org = FakeComfyOrg::start().await;
    let app = TestApp::spawn_with(&format!("http://{addr}"), |s| {
        s.allow_generation = "true".into();
        s.comfy_org_api_key = Some(SERVER_KEY.into());
    })
    .await;
    let (status, paid) = post(
        &app,
        "/api/jobs",
        &json!({ "workflow": paid_workflow("queued blind") }),
        None,
    )
    .await;
    assert_eq!(
        (status, paid["status"].as_str()),
        (202, Some("queued")),
        "{paid}"
    );
    let (_, free) = post(
        &app,
        "/api/jobs",
        &json!({ "workflow": free_workflow() }),
        None,
    )
    .await;

    let comfy = FakeComfy::start_on(listener);
    comfy.set_comfy_api_base(&org.url());
    app.wait_for_job(free["id"].as_str().unwrap(), "succeeded")
        .await;
    let waiting = app
        .wait_for_job(paid["id"].as_str().unwrap(), "awaiting_confirmation")
        .await;
    assert_eq!(
        waiting["approval"]["paidNodes"][0]["class_type"],
        "FluxProUltraImageNode"
    );
    assert_eq!(queued(&comfy), 1, "only the free job was sent");
    assert_eq!(org.call_count(), 0);
}

/// A paid job reserved and cut off before ComfyUI took it (the process stopped mid-send) may have been charged: on
/// the next start it becomes `needs_reconcile` and is never sent again.
#[tokio::test]
async fn a_paid_job_cut_off_mid_send_is_never_resent_after_a_restart() {
    let comfy = FakeComfy::start().await;
    let org = FakeComfyOrg::start().await;
    comfy.set_comfy_api_base(&org.url());
    let data = tempfile::tempdir().unwrap();
    // What a stop between the reservation and ComfyUI's answer leaves in the store.
    let store = orchestrator::store::Store::open(&crate::support::database_for(data.path()))
        .await
        .unwrap();
    let workflow = paid_workflow("cut off");
    let job = match store
        .reserve_paid_job(orchestrator::store::PaidJob {
            job: orchestrator::store::NewJob {
                backend: orchestrator::model::Backend::Comfy,
                template: None,
                params: &json!({}),
                workflow: &workflow,
                backend_url: Some(&comfy.url()),
            },
            cost_micros: 60_000,
            day: "2026-12-02",
            budget_micros: 5_000_000,
            idempotency: None,
            token_id: "token-of-the-last-run",
            approval: None,
        })
        .await
        .unwrap()
    {
        orchestrator::store::Reservation::Reserved(job) => job,
        _ => panic!("reserved"),
    };
    store.close().await;
    let dir = data.path().display().to_string();
    let app = TestApp::spawn_with(&comfy.url(), |s| {
        s.data_dir = dir;
        s.allow_generation = "true".into();
        s.comfy_org_api_key = Some(SERVER_KEY.into());
    })
    .await;
    let settled = app.wait_for_job(&job.id, "needs_reconcile").await;
    assert_eq!(settled["error"]["code"], "submit_interrupted");
    assert_eq!(queued(&comfy), 0);
    assert_eq!(org.call_count(), 0);
}

/// A prompt in another charset is not judged as UTF-8 and forwarded for ComfyUI to read otherwise: a UTF-7 body
/// hides whole nodes (and a key) inside what UTF-8 reads as one string.
#[tokio::test]
async fn a_prompt_in_another_charset_is_refused() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    let hidden =
        r#"{"prompt":{"3":{"class_type":"SaveImage","inputs":{"filename_prefix":"+ACIAfQB9-"}}}}"#;
    for charset in ["utf-7", "UTF-16", "\"latin1\""] {
        let response = app
            .http
            .post(app.url("/api/comfy/prompt"))
            .header(
                "content-type",
                format!("application/json; charset={charset}"),
            )
            .body(hidden)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415, "{charset}");
    }
    let response = app
        .http
        .post(app.url("/api/comfy/prompt"))
        .header("content-type", "application/json; charset=utf-8")
        .body(serde_json::to_string(&json!({ "prompt": free_workflow() })).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(queued(&comfy), 1);
    assert_eq!(org.call_count(), 0);
}

/// A V1 API node (OpenAI's DALL·E 3 here) that fails: ComfyUI's `execution_error` echoes its inputs, the hidden
/// `comfy_api_key` filled with the server's key included. The key reaches no history answer, job row or page (the
/// WebSocket relay masks it too: `comfy::ws` tests).
#[tokio::test]
async fn a_failed_paid_node_never_shows_the_servers_key() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    org.set_refuse(Some(400));
    comfy.set_step_delay(Duration::from_millis(100));
    let workflow = json!({
        "1": {"class_type": "OpenAIDalle3", "inputs": {"prompt": "a refused idea"}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "v1", "images": ["1", 0]}},
    });
    let (status, created) = post(&app, "/api/jobs", &confirmed(&app, &workflow).await, None).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let failed = app.wait_for_job(&id, "failed").await;
    let direct: Value = reqwest::get(format!("{}/history", comfy.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        direct.to_string().contains(SERVER_KEY),
        "the fake echoes the key as ComfyUI does: {direct}"
    );
    let mut seen = failed.to_string();
    for path in [
        "/api/comfy/history",
        "/api/comfy/api/history",
        &format!("/api/jobs/{id}"),
        &format!("/jobs/{id}"),
    ] {
        seen.push_str(
            &app.http
                .get(app.url(path))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    assert!(seen.contains("refused"), "{seen}");
    assert!(!seen.contains(SERVER_KEY), "{seen}");
    assert_eq!(org.calls()[0].api_key.as_deref(), Some(SERVER_KEY));
}

#[tokio::test]
async fn an_svg_a_job_writes_is_a_download_that_cannot_script_the_panel() {
    // The fake Comfy.org API must outlive the run: it answers the paid node.
    let Rig {
        comfy,
        app,
        org: _org,
    } = rig(true, |_| {}).await;
    // Recraft's vector node is the one source of SVG in ComfyUI 0.3.64; SaveSVGNode writes it as `.svg`.
    let workflow = json!({
        "1": {"class_type": "RecraftTextToVectorNode", "inputs": {"prompt": "a logo", "substyle": "None",
              "size": "1024x1024", "n": 1, "seed": 0}},
        "3": {"class_type": "SaveSVGNode", "inputs": {"filename_prefix": "svg/logo", "svg": ["1", 0]}},
    });
    let body = confirmed(&app, &workflow).await;
    let (status, created) = post(&app, "/api/jobs", &body, None).await;
    assert_eq!(status, 202, "{created}");
    let done = app
        .wait_for_job(created["id"].as_str().unwrap(), "succeeded")
        .await;
    let output = &done["outputs"][0];
    assert!(output["name"].as_str().unwrap().ends_with(".svg"), "{done}");
    let served = app
        .http
        .get(app.url(output["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let headers = served.headers().clone();
    assert_eq!(headers["content-type"], "image/svg+xml");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["content-security-policy"], "sandbox");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment"), "{disposition}");
    assert!(disposition.contains(output["name"].as_str().unwrap()));
    assert_eq!(
        served.bytes().await.unwrap().as_ref(),
        testkit::fake_comfy::OUTPUT_SVG
    );
    assert_eq!(queued(&comfy), 1);
}

/// Each parked prompt is a job someone must look at: a page or a custom node's script posting them in a loop is
/// held to the paid routes' pace, and each says where it came from (origin, client, browser) to whoever approves it.
#[tokio::test]
async fn parked_prompts_are_rate_limited_and_say_where_they_came_from() {
    let Rig { comfy, org, app } = rig(true, |s| {
        s.paid_rate_limit_per_min = "1".into();
        s.paid_rate_limit_burst = "2".into();
    })
    .await;
    let mut answers = Vec::new();
    for n in 0..3 {
        let body = editor_prompt(&paid_workflow(&format!("prompt {n}")));
        let response = app
            .http
            .post(app.editor_url("/api/prompt"))
            .header("user-agent", "studio-browser/1.0")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        answers.push((status, retry_after, response.json::<Value>().await.unwrap()));
    }
    let statuses: Vec<u16> = answers.iter().map(|(status, ..)| *status).collect();
    assert_eq!(statuses, [402, 402, 429], "{answers:?}");
    let (_, retry_after, refused) = &answers[2];
    assert_eq!(error_code(refused), "rate_limited");
    assert!(retry_after.is_some(), "Retry-After says when");
    let waiting = app.get_json("/api/jobs?status=awaiting_confirmation").await;
    assert_eq!(waiting["jobs"].as_array().unwrap().len(), 2, "{waiting}");
    let id = answers[0].2["error"]["details"]["jobId"].as_str().unwrap();
    let job = app.get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(
        (
            &job["params"]["origin"],
            &job["params"]["client"],
            &job["params"]["user_agent"]
        ),
        (
            &json!("editor"),
            &json!("127.0.0.1"),
            &json!("studio-browser/1.0")
        ),
        "{job}"
    );
    assert_eq!(queued(&comfy), 0);
    assert_eq!(org.call_count(), 0);
}

/// ComfyUI's own log (its editor's log panel, through the gateway) shows what nodes print; a node that prints the
/// prompt's `extra_data` would show the server's Comfy.org key there: it is masked.
#[tokio::test]
async fn comfys_own_log_never_shows_the_servers_key() {
    let Rig { comfy, app, .. } = rig(true, |_| {}).await;
    comfy.log_line(&format!(
        "got prompt {{'api_key_comfy_org': '{SERVER_KEY}'}}"
    ));
    for url in [
        app.url("/api/comfy/internal/logs"),
        app.editor_url("/internal/logs"),
    ] {
        let response = app.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let text = response.text().await.unwrap();
        assert!(!text.contains(SERVER_KEY), "{url}: {text}");
        assert!(text.contains("got prompt"), "{url}: {text}");
    }
}
