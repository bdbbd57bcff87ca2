//! No paid node runs without a confirmation: generation off, a token per run, prompts at the gateway parked until
//! someone confirms them, and a workflow whose cost cannot be told refused.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;
use testkit::fake_comfy_org::FakeComfyOrg;

use super::{
    CLIENT_KEY, CLIENT_TOKEN, Rig, SERVER_KEY, editor_prompt, free_workflow, paid_workflow, queued,
    rig,
};
use crate::support::{TestApp, error_code, wait_until};

#[tokio::test]
async fn with_generation_off_no_path_sends_a_paid_workflow() {
    let Rig { comfy, org, app } = rig(false, |_| {}).await;
    let workflow = paid_workflow("a lighthouse");

    let (status, body) = app
        .post_json("/api/jobs", &json!({ "workflow": workflow }))
        .await;
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
        let (status, body) = app.post_json(path, &editor_prompt(&workflow)).await;
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
    let (status, dry) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": workflow, "dryRun": true }),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["paid"].as_bool(), dry["estimatedCost"]["usd"].as_f64()),
        (Some(true), Some(0.06))
    );
    let token = dry["confirmToken"].as_str().unwrap();
    let (status, _) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": workflow, "confirmToken": token }),
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

    let (status, refused) = app
        .post_json("/api/jobs", &json!({ "workflow": workflow }))
        .await;
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
    let (status, body) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": other, "confirmToken": token }),
        )
        .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (402, "confirmation_mismatch")
    );
    assert_eq!(queued(&comfy), 0);

    let (status, created) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": workflow, "confirmToken": token }),
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
    let (status, body) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": workflow, "confirmToken": token }),
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

    let (status, refused) = app
        .post_json("/api/comfy/prompt", &editor_prompt(&workflow))
        .await;
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
    let (status, asked) = app.post_json(&confirm, &json!({})).await;
    assert_eq!(
        (status, error_code(&asked).as_str()),
        (402, "confirmation_required")
    );
    let token = asked["error"]["details"]["confirmToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, sent) = app
        .post_json(&confirm, &json!({ "confirmToken": token }))
        .await;
    assert_eq!(
        (status, sent["id"].as_str()),
        (202, Some(id.as_str())),
        "{sent}"
    );
    app.wait_for_job(&id, "succeeded").await;
    let (status, again) = app
        .post_json(&confirm, &json!({ "confirmToken": token }))
        .await;
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
    let (status, accepted) = app
        .post_json("/api/comfy/prompt", &editor_prompt(&free_workflow()))
        .await;
    assert_eq!(status, 200, "{accepted}");
    let prompts = comfy.received_prompts();
    assert_eq!(prompts.len(), 2);
    // ComfyUI held a key of that job's own, which only Orchestrator's egress takes, never the server's.
    let job_key = prompts[0]["extra_data"]["api_key_comfy_org"]
        .as_str()
        .unwrap();
    assert!(job_key.starts_with("orch-job-"), "{job_key}");
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
async fn a_class_comfyui_does_not_list_is_refused_not_assumed_free() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    let workflow = json!({"1": {"class_type": "SomeoneElsesPaidNode", "inputs": {}}});
    let (status, body) = app
        .post_json("/api/jobs", &json!({ "workflow": workflow }))
        .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (422, "validation_failed"),
        "{body}"
    );
    assert!(body["error"]["details"]["fields"]["workflow.1.class_type"].is_string());
    let (status, body) = app
        .post_json("/api/comfy/prompt", &json!({ "prompt": workflow }))
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
    let (status, dry) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": free_workflow(), "dryRun": true }),
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
        s.comfy_org_api_base = org.url();
    })
    .await;
    let (status, paid) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": paid_workflow("queued blind") }),
        )
        .await;
    assert_eq!(
        (status, paid["status"].as_str()),
        (202, Some("queued")),
        "{paid}"
    );
    let (_, free) = app
        .post_json("/api/jobs", &json!({ "workflow": free_workflow() }))
        .await;

    let comfy = FakeComfy::start_on(listener);
    super::through_egress(&comfy, &app);
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
