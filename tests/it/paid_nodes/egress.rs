//! The Comfy.org egress: ComfyUI's API nodes reach Comfy.org only through Orchestrator, with a key of their job's
//! own, and a job's calls never spend more than was confirmed for it.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;

use super::{Rig, SERVER_KEY, confirmed, free_workflow, paid_workflow, rig};
use crate::support::{TestApp, error_code, wait_until};

/// The key ComfyUI was given for the newest prompt it received.
fn job_key(comfy: &FakeComfy) -> String {
    let prompts = comfy.received_prompts();
    let last = prompts.last().expect("ComfyUI received a prompt");
    last["extra_data"]["api_key_comfy_org"]
        .as_str()
        .expect("an approved prompt carries its job's key")
        .to_owned()
}

/// A call an API node makes at the egress: FLUX 1.1 [pro] Ultra's generation, $0.06.
async fn generate(http: &reqwest::Client, egress: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = http
        .post(format!("{egress}proxy/bfl/flux-pro-1.1-ultra/generate"))
        .json(&json!({"prompt": "a call"}));
    if let Some(key) = key {
        request = request.header("X-API-KEY", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn direct_text(comfy: &FakeComfy, path: &str) -> String {
    reqwest::get(format!("{}{path}", comfy.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn one_confirmed_paid_node_is_one_call_with_the_servers_key_which_comfyui_never_holds() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    let workflow = paid_workflow("through the egress");
    let (status, created) = app
        .post_json("/api/jobs", &confirmed(&app, &workflow).await)
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap();
    app.wait_for_job(id, "succeeded").await;

    let calls = org.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].api_key.as_deref(), Some(SERVER_KEY));
    let received = serde_json::to_string(&comfy.received_prompts()).unwrap();
    for seen in [
        received,
        direct_text(&comfy, "/queue").await,
        direct_text(&comfy, "/history").await,
    ] {
        assert!(!seen.contains(SERVER_KEY), "{seen}");
    }
    // What the job cost is what Comfy.org charged, and the day's budget counts it.
    let spent = org.spent_usd();
    assert_eq!(spent, 0.06);
    wait_until(Duration::from_secs(5), "the charge is settled", || async {
        app.get_json("/api/flux/budget").await["spent"] == spent
    })
    .await;
    assert_eq!(
        app.get_json(&format!("/api/jobs/{id}")).await["actual_cost_usd"],
        spent
    );
}

#[tokio::test]
async fn a_call_without_a_running_jobs_key_is_refused_and_nothing_is_forwarded() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    let workflow = paid_workflow("then it ends");
    let (_, created) = app
        .post_json("/api/jobs", &confirmed(&app, &workflow).await)
        .await;
    app.wait_for_job(created["id"].as_str().unwrap(), "succeeded")
        .await;
    let ended = job_key(&comfy);
    assert_eq!(org.call_count(), 1);

    let egress = app.url("/api/comfy-org/");
    let made_up = "orch-job-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for key in [Some(ended.as_str()), Some(made_up), Some(SERVER_KEY), None] {
        let (status, refused) = generate(&app.http, &egress, key).await;
        assert_eq!(
            (status, error_code(&refused).as_str()),
            (401, "egress_key_invalid"),
            "{key:?}: {refused}"
        );
    }
    // A poll is free, and still needs a running job's key.
    let poll = app
        .http
        .get(format!("{egress}proxy/kling/v1/videos/text2video/task-1"))
        .header("X-API-KEY", &ended)
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 401);
    assert_eq!(org.call_count(), 1, "nothing more reached Comfy.org");
}

/// Five FLUX Ultra nodes confirmed at $0.30: twenty calls of that job at once (from its own ComfyUI and from
/// anything else that learnt its key) pass the egress five times; the rest are refused at the cap, and the job is
/// stopped with what it spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_calls_at_once_against_a_cap_of_five_forward_exactly_five() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    comfy.set_step_delay(Duration::from_millis(400));
    // A free job keeps ComfyUI busy, so the paid prompt waits in its queue, its key already valid.
    let (_, busy) = app
        .post_json("/api/jobs", &json!({ "workflow": free_workflow() }))
        .await;
    app.wait_for_job(busy["id"].as_str().unwrap(), "running")
        .await;
    let workflow = super::five_ultra_images();
    let (status, created) = app
        .post_json("/api/jobs", &confirmed(&app, &workflow).await)
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap();
    let paid = app.wait_for_job(id, "submitted").await;
    assert_eq!(paid["cost_usd"], 0.30, "{paid}");
    assert!(paid["comfy_prompt_id"].is_string());
    let key = job_key(&comfy);

    let egress = app.url("/api/comfy-org/");
    let calls = (0..20).map(|_| generate(&app.http, &egress, Some(&key)));
    let answers = futures_util::future::join_all(calls).await;
    let forwarded = answers.iter().filter(|(status, _)| *status == 200).count();
    // Refused at the cap; once the job is stopped, its key opens nothing at all.
    let capped = answers
        .iter()
        .filter(|(status, body)| *status == 402 && error_code(body) == "spend_cap_reached")
        .count();
    let ended = answers
        .iter()
        .filter(|(status, body)| *status == 401 && error_code(body) == "egress_key_invalid")
        .count();
    assert_eq!(forwarded, 5, "{answers:?}");
    assert!(capped >= 1 && capped + ended == 15, "{answers:?}");
    assert_eq!(org.call_count(), 5);

    let failed = app.wait_for_job(id, "failed").await;
    assert_eq!(failed["error"]["code"], "spend_cap_reached", "{failed}");
    assert_eq!(failed["error"]["details"]["cap_usd"], 0.30);
    assert_eq!(failed["actual_cost_usd"], org.spent_usd());
    wait_until(Duration::from_secs(5), "the charge is settled", || async {
        app.get_json("/api/flux/budget").await["spent"] == 0.30
    })
    .await;
    // Its prompt left ComfyUI's queue: the free job finishes and the paid one never runs.
    app.wait_for_job(busy["id"].as_str().unwrap(), "succeeded")
        .await;
    assert!(!direct_text(&comfy, "/queue").await.contains(&key));
    assert_eq!(org.call_count(), 5);
}

/// What the diagnostics say of a ComfyUI whose API nodes call Comfy.org directly, and of one that uses the egress.
#[tokio::test]
async fn the_diagnostics_flag_a_comfyui_that_bypasses_the_egress() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn_with(&comfy.url(), |s| {
        s.comfy_org_api_key = Some(SERVER_KEY.into());
    })
    .await;
    let report = app.get_json("/api/status").await;
    assert_eq!(
        report["comfy"]["comfy_org"]["uses_egress"], false,
        "{report}"
    );
    let reasons = report["reasons"].to_string();
    assert!(reasons.contains("--comfy-api-base"), "{reasons}");
    super::through_egress(&comfy, &app);
    let report = app.get_json("/api/status").await;
    assert_eq!(
        report["comfy"]["comfy_org"]["uses_egress"], true,
        "{report}"
    );
    assert!(!report["reasons"].to_string().contains("--comfy-api-base"));
}
