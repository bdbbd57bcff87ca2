//! `/api/v2/jobs…`: Stripe's idempotency, the contract's refusals, paging and label filters, cancel, the event
//! stream with ids, and the money rules on the v2 path (counted at the fake Comfy.org API).

use std::time::Duration;

use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;
use testkit::fake_comfy_org::FakeComfyOrg;

use super::{submit, wait_v2};
use crate::support::{TestApp, error_code};

fn free(colour: u64) -> Value {
    let mut workflow = testkit::fake_comfy::no_model_workflow();
    workflow["1"]["inputs"]["color"] = json!(colour);
    workflow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_one_job_another_body_refused_a_racing_repeat_told_to_wait() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let body = json!({"workflow": free(1)});
    let (status, replayed, first) = submit(&app, &body, Some("key-1")).await;
    assert_eq!((status, replayed), (201, None), "{first}");
    let (status, replayed, again) = submit(&app, &body, Some("key-1")).await;
    assert_eq!(
        (status, replayed.as_deref()),
        (201, Some("true")),
        "{again}"
    );
    assert_eq!(again["id"], first["id"]);
    let (status, _, other) = submit(&app, &json!({"workflow": free(2)}), Some("key-1")).await;
    assert_eq!(
        (status, error_code(&other).as_str()),
        (422, "idempotency_key_reuse")
    );
    wait_v2(&app, first["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(comfy.received_prompts().len(), 1, "one job was sent");

    // A repeat while the first is still being answered (ComfyUI hangs: the first waits for its answer).
    comfy.set_hang(true);
    let asked = comfy.request_count();
    let slow = {
        let app_url = app.url("/api/v2/jobs");
        let http = app.http.clone();
        tokio::spawn(async move {
            http.post(app_url)
                .header("Idempotency-Key", "key-2")
                .json(&json!({"workflow": free(3)}))
                .send()
                .await
                .unwrap()
        })
    };
    // The key is claimed before ComfyUI is asked anything: once the hanging fake hears the first request's
    // question, the key is held.
    crate::support::wait_until(
        Duration::from_secs(10),
        "the first request asks ComfyUI",
        || async { comfy.request_count() > asked },
    )
    .await;
    let racing = app
        .http
        .post(app.url("/api/v2/jobs"))
        .header("Idempotency-Key", "key-2")
        .json(&json!({"workflow": free(3)}))
        .send()
        .await
        .unwrap();
    assert_eq!(racing.status(), 409);
    assert_eq!(racing.headers()["retry-after"], "1");
    assert_eq!(
        error_code(&racing.json().await.unwrap()),
        "idempotency_conflict"
    );
    comfy.set_hang(false);
    let first_answer: Value = slow.await.unwrap().json().await.unwrap();
    let (status, replayed, repeat) =
        submit(&app, &json!({"workflow": free(3)}), Some("key-2")).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(repeat["id"], first_answer["id"]);

    let (status, _, bad) = submit(&app, &body, Some("")).await;
    assert_eq!(
        (status, error_code(&bad).as_str()),
        (400, "invalid_request")
    );
}

#[tokio::test]
async fn what_is_not_a_runnable_workflow_is_refused_with_the_contracts_codes() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let cases = [
        (
            json!({"workflow": {"nodes": [], "links": [], "last_node_id": 1}}),
            422,
            "workflow_format_ui",
        ),
        (
            json!({"workflow": {"1": {"inputs": {}}}}),
            422,
            "invalid_workflow",
        ),
        (
            json!({"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}),
            422,
            "invalid_workflow",
        ),
        (json!({"nope": 1}), 422, "invalid_workflow"),
        (
            json!({"workflow": free(1), "webhook_url": "http://x"}),
            422,
            "invalid_workflow",
        ),
        (
            json!({"workflow": free(1), "extra_data": {"api_key_comfy_org": "k"}}),
            400,
            "invalid_request",
        ),
        (
            json!({"workflow": free(1), "metadata": {"bad key!": "x"}}),
            422,
            "metadata_invalid",
        ),
        (
            json!({"workflow": free(1), "metadata": {"k": 1}}),
            422,
            "metadata_invalid",
        ),
    ];
    for (body, status, code) in cases {
        let (got, _, answer) = submit(&app, &body, None).await;
        assert_eq!(
            (got, error_code(&answer)),
            (status, code.to_owned()),
            "{body} → {answer}"
        );
    }
    let (_, _, unknown) = submit(
        &app,
        &json!({"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}),
        None,
    )
    .await;
    assert!(
        unknown["error"]["details"]["node_errors"]["1"].is_array(),
        "{unknown}"
    );
    let garbage = app
        .http
        .post(app.url("/api/v2/jobs"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    assert_eq!(
        error_code(&garbage.json().await.unwrap()),
        "invalid_request"
    );
    assert!(
        comfy.received_prompts().is_empty(),
        "nothing reached ComfyUI"
    );
    let missing = app
        .http
        .get(app.url("/api/v2/jobs/0190d6a1-0000-7000-8000-000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(error_code(&missing.json().await.unwrap()), "not_found");
}

#[tokio::test]
async fn the_list_pages_newest_first_and_filters_by_label_and_status() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let mut ids = Vec::new();
    for n in 0..5u64 {
        let label = if n % 2 == 0 { "even" } else { "odd" };
        let (_, _, job) = submit(
            &app,
            &json!({"workflow": free(n), "metadata": {"parity": label}}),
            None,
        )
        .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        wait_v2(&app, id, "succeeded").await;
    }
    let first = app.get_json("/api/v2/jobs?limit=2").await;
    let page: Vec<&str> = first["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec![ids[4].as_str(), ids[3].as_str()]);
    assert!(first["jobs"][0]["create_time"].is_string());
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = app
        .get_json(&format!(
            "/api/v2/jobs?limit=10&cursor={}",
            urlencode(cursor)
        ))
        .await;
    assert_eq!(rest["jobs"].as_array().unwrap().len(), 3, "{rest}");
    assert!(
        rest.get("next_cursor").is_none(),
        "the last page has no cursor: {rest}"
    );
    let even = app.get_json("/api/v2/jobs?metadata[parity]=even").await;
    assert_eq!(even["jobs"].as_array().unwrap().len(), 3);
    assert!(
        even["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["metadata"]["parity"] == "even")
    );
    let none = app.get_json("/api/v2/jobs?status=failed").await;
    assert!(none["jobs"].as_array().unwrap().is_empty());
    for (query, code) in [
        ("limit=0", "invalid_request"),
        ("limit=101", "invalid_request"),
        ("cursor=zzz", "invalid_cursor"),
        ("status=done", "invalid_request"),
        (
            "metadata[a]=1&metadata[b]=2&metadata[c]=3&metadata[d]=4",
            "invalid_metadata_filter",
        ),
    ] {
        let response = app
            .http
            .get(app.url(&format!("/api/v2/jobs?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(error_code(&response.json().await.unwrap()), code, "{query}");
    }
}

/// A fake ComfyUI with the checkpoint the recorded sampler workflow loads.
pub async fn sampler_comfy() -> FakeComfy {
    FakeComfy::start_with_models(&[("checkpoints", "tiny-sd15.safetensors")]).await
}

/// A server whose ComfyUI samples `steps` steps of `delay_ms` each, and the id of a v2 job running the sampler.
async fn sampler_job(steps: u64, delay_ms: u64) -> (FakeComfy, TestApp, String) {
    let comfy = sampler_comfy().await;
    comfy.set_progress_steps(steps);
    comfy.set_step_delay(Duration::from_millis(delay_ms));
    let app = TestApp::spawn(&comfy.url()).await;
    let workflow = json!({"workflow": testkit::fake_comfy::ksampler_workflow()});
    let (_, _, job) = submit(&app, &workflow, None).await;
    let id = job["id"].as_str().expect("a job id").to_owned();
    (comfy, app, id)
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_numbers_its_frames_and_resumes_after_any_of_them() {
    let (_comfy, app, id) = sampler_job(40, 20).await;
    let id = id.as_str();
    let path = format!("/api/v2/jobs/{id}/events");
    let all = app.events(&path, None).await;
    let kinds: Vec<&str> = all
        .iter()
        .map(|e| e.kind.as_deref().unwrap_or("message"))
        .collect();
    assert_eq!(kinds.first(), Some(&"status"), "{kinds:?}");
    assert!(kinds.contains(&"progress"), "{kinds:?}");
    let last = all.last().unwrap().json().unwrap();
    assert_eq!(last, json!({"status": "succeeded", "queue_position": null}));
    let outputs: Vec<Value> = all
        .iter()
        .filter(|e| e.kind.as_deref() == Some("output"))
        .map(|e| e.json().unwrap())
        .collect();
    assert_eq!(outputs.len(), 1, "{kinds:?}");
    assert_eq!(outputs[0]["node_id"], "9");
    assert!(all.iter().all(|e| e.id.is_some()), "every frame has an id");

    // Resumed after any frame (the middle one, and the output just before the final status): exactly the rest.
    let replay = app.events(&path, Some("0")).await;
    for cut in [replay.len() / 2, replay.len() - 2] {
        let after = replay[cut].id.clone().unwrap();
        let rest = app.events(&path, Some(&after)).await;
        let expected: Vec<(Option<String>, String)> = replay[cut + 1..]
            .iter()
            .map(|e| (e.id.clone(), e.data.clone()))
            .collect();
        let got: Vec<(Option<String>, String)> = rest
            .iter()
            .map(|e| (e.id.clone(), e.data.clone()))
            .collect();
        assert_eq!(got, expected, "resumed after {after}");
    }
    // An id past the job's last event (another server's, say) is answered as a new client: the snapshot, not
    // silence until the stream times out.
    let beyond = app.events(&path, Some("100000")).await;
    let kinds: Vec<&str> = beyond.iter().filter_map(|e| e.kind.as_deref()).collect();
    assert_eq!(kinds.last(), Some(&"status"), "{kinds:?}");
    assert_eq!(beyond.last().unwrap().json().unwrap(), last);
    let bad = app
        .http
        .get(app.url(&path))
        .header("Last-Event-ID", "x.y")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_idempotent_canceling_then_canceled() {
    let (_comfy, app, id) = sampler_job(400, 50).await;
    let id = id.as_str();
    wait_v2(&app, id, "running").await;
    let (status, first) = app
        .post_json(&format!("/api/v2/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{first}");
    assert!(
        ["canceling", "canceled"].contains(&first["status"].as_str().unwrap()),
        "{first}"
    );
    wait_v2(&app, id, "canceled").await;
    let (status, again) = app
        .post_json(&format!("/api/v2/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!((status, again["status"].as_str()), (200, Some("canceled")));
    let (status, done) = app
        .post_json(
            "/api/v2/jobs/0190d6a1-0000-7000-8000-000000000000/cancel",
            &json!({}),
        )
        .await;
    assert_eq!((status, error_code(&done).as_str()), (404, "not_found"));
}

/// FLUX 1.1 [pro] Ultra through ComfyUI's API node (as `paid_nodes.rs`).
fn paid() -> Value {
    json!({
        "1": {"class_type": "FluxProUltraImageNode", "inputs": {"prompt": "a fox", "aspect_ratio": "16:9",
              "prompt_upsampling": false, "raw": false, "seed": 7}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "paid", "images": ["1", 0]}},
    })
}

#[tokio::test]
async fn a_paid_workflow_through_v2_is_sent_once_and_only_with_a_confirmation() {
    let comfy = FakeComfy::start().await;
    let org = FakeComfyOrg::start().await;
    let off = TestApp::spawn_with(&comfy.url(), |s| {
        s.comfy_org_api_key = Some("comfyui-server-key-0123456789abcdef".into())
    })
    .await;
    let (status, _, refused) = submit(&off, &json!({"workflow": paid()}), None).await;
    assert_eq!(
        (status, error_code(&refused).as_str()),
        (403, "generation_disabled")
    );
    off.stop().await;

    let app = TestApp::spawn_with(&comfy.url(), |s| {
        s.allow_generation = "true".into();
        s.comfy_org_api_key = Some("comfyui-server-key-0123456789abcdef".into());
        s.comfy_org_api_base = org.url();
        s.flux_daily_budget_usd = "0.07".into();
    })
    .await;
    comfy.set_comfy_api_base(&app.url("/api/comfy-org/"));
    let (status, _, asked) = submit(&app, &json!({"workflow": paid()}), None).await;
    assert_eq!(
        (status, error_code(&asked).as_str()),
        (402, "confirmation_required"),
        "{asked}"
    );
    let token = asked["error"]["details"]["confirmToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        comfy.received_prompts().is_empty() && org.call_count() == 0,
        "nothing sent before the confirmation"
    );

    let body = json!({"workflow": paid(), "confirm_token": token});
    let (status, _, job) = submit(&app, &body, Some("paid-1")).await;
    assert_eq!(status, 201, "{job}");
    let (status, replayed, again) = submit(&app, &body, Some("paid-1")).await;
    assert_eq!(
        (status, replayed.as_deref(), &again["id"]),
        (201, Some("true"), &job["id"])
    );
    wait_v2(&app, job["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(org.call_count(), 1, "paid once");
    assert_eq!(comfy.received_prompts().len(), 1);

    // The day's budget is spent: the contract's insufficient_credits, nothing sent.
    let (_, _, asked) = submit(&app, &json!({"workflow": paid()}), None).await;
    let token = asked["error"]["details"]["confirmToken"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, _, broke) = submit(
        &app,
        &json!({"workflow": paid(), "confirm_token": token}),
        None,
    )
    .await;
    assert_eq!(
        (status, error_code(&broke).as_str()),
        (402, "insufficient_credits"),
        "{broke}"
    );
    assert_eq!(org.call_count(), 1);
    assert_eq!(comfy.received_prompts().len(), 1);
}

#[tokio::test]
async fn the_v2_routes_are_behind_the_same_guard() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn_with(&comfy.url(), |s| {
        s.token = Some("v2-test-token-0123456789".into())
    })
    .await;
    let jobs = app.url("/api/v2/jobs");
    let anonymous = app.http.get(&jobs).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(error_code(&anonymous.json().await.unwrap()), "unauthorized");
    let bearer = "Bearer v2-test-token-0123456789";
    let listed = app
        .http
        .get(&jobs)
        .header("authorization", bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let (content_type, body) = super::multipart(
        b"bytes",
        "x.png",
        &[("content_type", "image/png"), ("file_path", "x.png")],
    );
    for (path, body, content_type) in [
        (
            "/api/v2/jobs",
            json!({"workflow": free(1)}).to_string().into_bytes(),
            "application/json".to_owned(),
        ),
        ("/api/v2/assets", body, content_type),
    ] {
        let cross = app
            .http
            .post(app.url(path))
            .header("authorization", bearer)
            .header("origin", "http://evil.example")
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(cross.status(), 403, "{path}");
        assert_eq!(
            error_code(&cross.json().await.unwrap()),
            "cross_origin_refused"
        );
    }
    let rebinding = app
        .http
        .get(&jobs)
        .header("authorization", bearer)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebinding.status(), 403);
    assert!(comfy.received_prompts().is_empty() && comfy.uploads().is_empty());
    assert!(
        !app.data_dir.join("assets").exists()
            || std::fs::read_dir(app.data_dir.join("assets"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_client_hung_up_or_was_refused_answers_its_repeats() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;

    // The client hangs up while ComfyUI is being asked: the submit goes on without it, and its repeat is answered
    // with the job it made (not told to wait for ever).
    comfy.set_hang(true);
    let asked = comfy.request_count();
    let gone = {
        let (url, http) = (app.url("/api/v2/jobs"), app.http.clone());
        tokio::spawn(async move {
            let request = http.post(url).header("Idempotency-Key", "hung-up");
            request.json(&json!({"workflow": free(7)})).send().await
        })
    };
    crate::support::wait_until(
        Duration::from_secs(10),
        "the first request asks ComfyUI",
        || async { comfy.request_count() > asked },
    )
    .await;
    gone.abort();
    let _ = gone.await;
    comfy.set_hang(false);
    let body = json!({"workflow": free(7)});
    let last = std::sync::Mutex::new(None);
    crate::support::wait_until(
        Duration::from_secs(10),
        "the repeat is answered",
        || async {
            let answer = submit(&app, &body, Some("hung-up")).await;
            let answered = answer.0 != 409;
            *last.lock().unwrap() = Some(answer);
            answered
        },
    )
    .await;
    let repeat = last.into_inner().unwrap().unwrap();
    assert_eq!(
        (repeat.0, repeat.1.as_deref()),
        (201, Some("true")),
        "{}",
        repeat.2
    );
    wait_v2(&app, repeat.2["id"].as_str().unwrap(), "succeeded").await;
    let sent = comfy.received_prompts();
    assert_eq!(
        sent.iter()
            .filter(|p| p["prompt"]["1"]["inputs"]["color"] == 7)
            .count(),
        1,
        "one job was made and sent under the key"
    );

    // ComfyUI refuses the workflow after its job was recorded: a repeat gets the same refusal, and no second job.
    let mut bad_link = testkit::fake_comfy::no_model_workflow();
    bad_link["3"]["inputs"]
        .as_object_mut()
        .unwrap()
        .remove("images");
    let body = json!({"workflow": bad_link});
    let (status, replayed, first) = submit(&app, &body, Some("refused")).await;
    assert_eq!((status, replayed), (422, None), "{first}");
    assert_eq!(error_code(&first), "invalid_workflow");
    let jobs_before: Value = app.get_json("/api/jobs").await;
    let (status, replayed, again) = submit(&app, &body, Some("refused")).await;
    assert_eq!((status, replayed.as_deref()), (422, Some("true")));
    assert_eq!(again, first, "the first refusal, word for word");
    let jobs_after: Value = app.get_json("/api/jobs").await;
    assert_eq!(
        jobs_after["jobs"].as_array().map(Vec::len),
        jobs_before["jobs"].as_array().map(Vec::len)
    );
}
