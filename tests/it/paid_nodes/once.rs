//! A paid call is made once: under concurrent repeats of one key, under one shared budget, never moved to another
//! ComfyUI, and never sent again after a restart cut it off.

use std::time::Duration;

use serde_json::json;
use testkit::fake_bfl::FakeBfl;
use testkit::fake_comfy::FakeComfy;
use testkit::fake_comfy_org::FakeComfyOrg;

use super::{Rig, SERVER_KEY, confirmed, editor_prompt, free_workflow, paid_workflow, queued, rig};
use crate::support::{TestApp, error_code};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_confirms_under_one_idempotency_key_make_one_call() {
    let Rig { comfy, org, app } = rig(true, |_| {}).await;
    let workflow = paid_workflow("double click");
    let body = confirmed(&app, &workflow).await;
    let answers = futures_util::future::join_all(
        (0..20).map(|_| app.post_json_with_key("/api/jobs", &body, Some("click-7"))),
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
    let (_, refused) = app
        .post_json(
            "/api/comfy/prompt",
            &editor_prompt(&paid_workflow("from the editor")),
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
        (0..20).map(|_| app.post_json_with_key(&confirm, &body, Some("click-8"))),
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
        let (_, dry) = app.post_json("/api/flux/generate", &flux).await;
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
            .map(|(path, body)| app.post_json(path, body)),
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
    let app = TestApp::spawn_with(&format!("{},{}", first.url(), second.url()), |s| {
        s.allow_generation = "true".into();
        s.comfy_org_api_key = Some(SERVER_KEY.into());
        s.comfy_org_api_base = org.url();
        s.comfy_read_timeout_secs = "2".into();
    })
    .await;
    super::through_egress(&first, &app);
    super::through_egress(&second, &app);
    second.set_hang(true);
    // A free job keeps the first ComfyUI busy; the paid one waits behind it.
    let (_, busy) = app
        .post_json("/api/jobs", &json!({ "workflow": free_workflow() }))
        .await;
    let workflow = paid_workflow("must not move");
    let (status, paid) = app
        .post_json("/api/jobs", &confirmed(&app, &workflow).await)
        .await;
    assert_eq!(status, 202, "{paid}");
    let paid_id = paid["id"].as_str().unwrap();
    // A free one behind it, which may move.
    let (_, free) = app
        .post_json("/api/jobs", &json!({ "workflow": free_workflow() }))
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

/// A paid job reserved and cut off before ComfyUI took it (the process stopped mid-send) may have been charged: on
/// the next start it becomes `needs_reconcile` and is never sent again.
#[tokio::test]
async fn a_paid_job_cut_off_mid_send_is_never_resent_after_a_restart() {
    let comfy = FakeComfy::start().await;
    let org = FakeComfyOrg::start().await;
    let data = tempfile::tempdir().unwrap();
    // What a stop between the reservation and ComfyUI's answer leaves in the store.
    let store = orchestrator::store::Store::open(&crate::support::database_for(data.path()))
        .await
        .unwrap();
    let workflow = paid_workflow("cut off");
    let job = match store
        .reserve_paid_job(orchestrator::store::PaidJob {
            record: orchestrator::store::Record::New {
                job: orchestrator::store::NewJob {
                    backend: orchestrator::model::Backend::Comfy,
                    template: None,
                    params: &json!({}),
                    workflow: &workflow,
                    backend_url: Some(&comfy.url()),
                },
                approval: None,
            },
            cost_micros: 60_000,
            day: "2026-12-02",
            budget_micros: 5_000_000,
            idempotency: None,
            token_id: "token-of-the-last-run",
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
        s.comfy_org_api_base = org.url();
    })
    .await;
    super::through_egress(&comfy, &app);
    let settled = app.wait_for_job(&job.id, "needs_reconcile").await;
    assert_eq!(settled["error"]["code"], "submit_interrupted");
    assert_eq!(queued(&comfy), 0);
    assert_eq!(org.call_count(), 0);
}
