//! Paid FLUX calls across the fleet: one budget, one charge per `Idempotency-Key` whichever instance is asked, and
//! a task of a killed instance polled to its end by another.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::fake_bfl::FakeBfl;
use testkit::fake_comfy::FakeComfy;

use super::{Fleet, LEASE_SECS};

/// `n` instances with FLUX on `bfl` (generation allowed) and `extra`; their ComfyUI is a fake no test sends to.
async fn flux_fleet(n: usize, bfl: &FakeBfl, extra: &[(&str, &str)]) -> Option<(FakeComfy, Fleet)> {
    let url = bfl.url();
    let mut env = vec![
        ("ALLOW_GENERATION", "true"),
        ("BFL_API_KEY", BFL_KEY),
        ("BFL_BASE_URL", url.as_str()),
    ];
    env.extend_from_slice(extra);
    let comfy = FakeComfy::start().await;
    let fleet = Fleet::start(n, &[&comfy], &env)?;
    Some((comfy, fleet))
}

const BFL_KEY: &str = "bfl-fleet-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_paid_requests_over_three_instances_spend_the_budget_once() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    bfl.set_pending_polls(1000);
    // $0.20 covers five $0.04 images.
    let Some((_nobody, fleet)) = flux_fleet(
        3,
        &bfl,
        &[
            ("FLUX_DAILY_BUDGET_USD", "0.20"),
            ("FLUX_POLL_INTERVAL_MS", "50"),
            ("PAID_RATE_LIMIT_PER_MIN", "100000"),
            ("PAID_RATE_LIMIT_BURST", "1000"),
        ],
    )
    .await
    else {
        return;
    };
    // Fifty dry runs, each on one instance; each paid on the next one (the fleet shares the token key).
    let mut confirmed = Vec::new();
    for n in 0..50 {
        let (status, dry) = fleet
            .post(
                n % 3,
                "/api/flux/generate",
                &json!({ "prompt": "fifty at once" }),
            )
            .await;
        assert_eq!(status, 200, "{dry}");
        confirmed.push(json!({ "prompt": "fifty at once", "dryRun": false, "confirmToken": dry["confirmToken"] }));
    }
    let paid = confirmed
        .iter()
        .enumerate()
        .map(|(n, body)| fleet.post((n + 1) % 3, "/api/flux/generate", body));
    let answers = futures_util::future::join_all(paid).await;
    let accepted = answers.iter().filter(|(status, _)| *status == 202).count();
    let over = answers
        .iter()
        .filter(|(status, body)| *status == 402 && body["error"]["code"] == "budget_exceeded")
        .count();
    assert_eq!(
        (accepted, over),
        (5, 45),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert_eq!(bfl.submits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_to_every_instance_is_one_charge() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    bfl.set_pending_polls(1000);
    let Some((_nobody, fleet)) = flux_fleet(3, &bfl, &[("FLUX_POLL_INTERVAL_MS", "50")]).await
    else {
        return;
    };
    let (_, dry) = fleet
        .post(
            0,
            "/api/flux/generate",
            &json!({ "prompt": "double click" }),
        )
        .await;
    let body =
        json!({ "prompt": "double click", "dryRun": false, "confirmToken": dry["confirmToken"] });
    let repeats = (0..9).map(|n| {
        fleet
            .http
            .post(fleet.url(n % 3, "/api/flux/generate"))
            .header("Idempotency-Key", "order-fleet-1")
            .json(&body)
            .send()
    });
    let answers = futures_util::future::join_all(repeats).await;
    let mut ids = std::collections::HashSet::new();
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 202);
        let body: Value = answer.json().await.unwrap();
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "every repeat names the same job");
    assert_eq!(bfl.submits(), 1);
}

/// A paid FLUX task BFL took is polled by the instance that sent it; when that instance dies, another takes the
/// job over and polls it to its image. Nothing is sent to BFL again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flux_task_of_a_killed_instance_is_polled_to_its_end_by_another() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    // Pending for a few polls (they back off by half each time): the task outlives instance b.
    bfl.set_pending_polls(8);
    let Some((_nobody, mut fleet)) = flux_fleet(2, &bfl, &[("FLUX_POLL_INTERVAL_MS", "100")]).await
    else {
        return;
    };
    let (_, dry) = fleet
        .post(
            1,
            "/api/flux/generate",
            &json!({ "prompt": "a lighthouse" }),
        )
        .await;
    let (status, job) = fleet
        .post(
            1,
            "/api/flux/generate",
            &json!({ "prompt": "a lighthouse", "dryRun": false, "confirmToken": dry["confirmToken"] }),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(bfl.submits(), 1);
    fleet.members[1].child.kill().unwrap();
    fleet
        .wait_all(0, &[id], "succeeded", Duration::from_secs(LEASE_SECS + 20))
        .await;
    assert_eq!(bfl.submits(), 1, "the task was not sent again");
}

/// Under one `Idempotency-Key`, a request with another body is refused on every instance, the first one's included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_with_two_bodies_is_refused_on_another_instance() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    bfl.set_pending_polls(1000);
    let Some((_nobody, fleet)) = flux_fleet(2, &bfl, &[]).await else {
        return;
    };
    let mut bodies = Vec::new();
    for (i, prompt) in ["one body", "another body"].iter().enumerate() {
        let (_, dry) = fleet
            .post(i, "/api/flux/generate", &json!({ "prompt": prompt }))
            .await;
        bodies.push(
            json!({ "prompt": prompt, "dryRun": false, "confirmToken": dry["confirmToken"] }),
        );
    }
    let send = |i: usize, body: &Value| {
        fleet
            .http
            .post(fleet.url(i, "/api/flux/generate"))
            .header("Idempotency-Key", "order-fleet-2")
            .json(body)
            .send()
    };
    let (first, second) = tokio::join!(send(0, &bodies[0]), send(1, &bodies[1]));
    let mut statuses = [
        first.unwrap().status().as_u16(),
        second.unwrap().status().as_u16(),
    ];
    statuses.sort();
    assert_eq!(statuses, [202, 422], "one accepted, the other refused");
    assert_eq!(bfl.submits(), 1);
}

/// ComfyUI's paid calls across the fleet: one job confirmed for five $0.06 calls, twenty of its calls at once split
/// over two instances' egresses, five forwarded to Comfy.org; the cap holds under the money lock on every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_calls_of_one_job_over_two_instances_pass_the_cap_five_times() {
    use testkit::fake_comfy_org::FakeComfyOrg;
    let org = FakeComfyOrg::start().await;
    let comfy = FakeComfy::start().await;
    comfy.set_step_delay(Duration::from_millis(400));
    let org_url = org.url();
    let env = [
        ("ALLOW_GENERATION", "true"),
        ("COMFY_ORG_API_KEY", "comfy-org-fleet-key-0123456789"),
        ("COMFY_ORG_API_BASE", org_url.as_str()),
    ];
    let Some(fleet) = Fleet::start(2, &[&comfy], &env) else {
        return;
    };
    comfy.set_comfy_api_base(&fleet.url(0, "/api/comfy-org/"));
    // A free job keeps ComfyUI busy: the paid prompt waits in its queue, its key valid.
    let busy = fleet
        .submit(0, &testkit::fake_comfy::no_model_workflow())
        .await;
    fleet
        .wait_all(
            0,
            std::slice::from_ref(&busy),
            "running",
            Duration::from_secs(10),
        )
        .await;
    let workflow = crate::paid_nodes::five_ultra_images();
    let (status, dry) = fleet
        .post(
            0,
            "/api/jobs",
            &json!({ "workflow": workflow, "dryRun": true }),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    let body = json!({ "workflow": workflow, "confirmToken": dry["confirmToken"] });
    let (status, paid) = fleet.post(1, "/api/jobs", &body).await;
    assert_eq!(status, 202, "{paid}");
    let id = paid["id"].as_str().unwrap().to_owned();
    fleet
        .wait_all(
            0,
            std::slice::from_ref(&id),
            "submitted",
            Duration::from_secs(10),
        )
        .await;
    let key = comfy.received_prompts().last().unwrap()["extra_data"]["api_key_comfy_org"]
        .as_str()
        .unwrap()
        .to_owned();

    let calls = (0..20).map(|n| {
        fleet
            .http
            .post(fleet.url(
                n % 2,
                "/api/comfy-org/proxy/bfl/flux-pro-1.1-ultra/generate",
            ))
            .header("X-API-KEY", &key)
            .json(&json!({"prompt": "a call"}))
            .send()
    });
    let answers: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|answer| answer.unwrap().status().as_u16())
        .collect();
    let forwarded = answers.iter().filter(|s| **s == 200).count();
    let refused = answers.iter().filter(|s| matches!(**s, 401 | 402)).count();
    assert_eq!((forwarded, refused), (5, 15), "{answers:?}");
    assert_eq!(org.call_count(), 5);
    fleet
        .wait_all(
            1,
            std::slice::from_ref(&id),
            "failed",
            Duration::from_secs(10),
        )
        .await;
    let failed = fleet.get(0, &format!("/api/jobs/{id}")).await;
    assert_eq!(failed["error"]["code"], "spend_cap_reached", "{failed}");
    assert_eq!(failed["actual_cost_usd"], org.spent_usd());
}
