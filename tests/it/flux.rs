//! FLUX behind the money rules, against a fake BFL that counts every request it gets.

use std::time::Duration;

use orchestrator::config::Settings;
use serde_json::{Value, json};
use testkit::fake_bfl::{FakeBfl, SubmitMode, TaskEnd};

use crate::support::{Posted, TestApp, error_code, wait_until};

const KEY: &str = "bfl-test-key-0123456789";
const GENERATE: &str = "/api/flux/generate";

/// Orchestrator with a BFL key, pointed at `bfl`, generation allowed or not, a generous rate limit and quick polls.
async fn app(bfl: &FakeBfl, allow: bool, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let url = bfl.url();
    TestApp::spawn_with("http://127.0.0.1:9", move |s| {
        s.bfl_api_key = Some(KEY.into());
        s.bfl_base_url = url;
        s.allow_generation = allow.to_string();
        s.flux_poll_interval_ms = "20".into();
        s.paid_rate_limit_per_min = "100000".into();
        s.paid_rate_limit_burst = "1000".into();
        adjust(s);
    })
    .await
}

/// A dry run of `body`, and the body to pay for it.
async fn confirmed(app: &TestApp, body: Value) -> Value {
    let (status, dry) = app.post_json(GENERATE, &body).await;
    assert_eq!(status, 200, "{dry}");
    let mut paid = body;
    paid["dryRun"] = json!(false);
    paid["confirmToken"] = dry["confirmToken"].clone();
    paid
}

#[tokio::test]
async fn a_request_is_a_priced_dry_run_by_default_and_sends_nothing() {
    let bfl = FakeBfl::start(KEY).await;
    let app = app(&bfl, true, |_| {}).await;

    let (status, body) = app
        .post_json(
            GENERATE,
            &json!({ "prompt": "a red fox in snow", "width": 512 }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["dryRun"], true);
    assert_eq!(body["valid"], true);
    assert_eq!(body["model"], "flux-pro-1.1");
    assert_eq!(body["payload"]["width"], 512);
    assert_eq!(body["payload"]["height"], 768);
    assert_eq!(body["estimatedCost"]["usd"], 0.04);
    assert!(body["confirmToken"].as_str().unwrap().starts_with("v1."));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nothing was sent")
    );

    let (status, ultra) = app.post_json(GENERATE, &json!({ "model": "flux-pro-1.1-ultra", "prompt": "x", "aspect_ratio": "9:16", "raw": true, "dryRun": true }))
    .await;
    assert_eq!(status, 200);
    assert_eq!(ultra["estimatedCost"]["usd"], 0.06);
    assert_eq!(ultra["payload"]["raw"], true);

    let (status, invalid) = app
        .post_json(
            GENERATE,
            &json!({ "prompt": "x", "width": 1000, "steps": 20 }),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(error_code(&invalid), "validation_failed");
    let fields = &invalid["error"]["details"]["fields"];
    assert!(fields["width"].as_str().unwrap().contains("multiple of 32"));
    assert!(fields["steps"].as_str().unwrap().contains("flux-dev"));

    let models = app.get_json("/api/flux/models").await;
    assert_eq!(models["default"], "flux-pro-1.1");
    assert!(models["models"].as_array().unwrap().len() >= 4);
    assert!(bfl.requests().is_empty(), "a dry run never reaches BFL");
}

#[tokio::test]
async fn every_refusal_sends_nothing_to_bfl() {
    let bfl = FakeBfl::start(KEY).await;
    let body = json!({ "prompt": "a lighthouse" });

    // The server does not allow generation: a confirmed request is still refused.
    let disabled = app(&bfl, false, |_| {}).await;
    let paid = confirmed(&disabled, body.clone()).await;
    let (status, answer) = disabled.post_json(GENERATE, &paid).await;
    assert_eq!(status, 403);
    assert_eq!(error_code(&answer), "generation_disabled");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ALLOW_GENERATION=true")
    );

    let allowed = app(&bfl, true, |s| s.flux_daily_budget_usd = "0.03".into()).await;
    let mut without_token = body.clone();
    without_token["dryRun"] = json!(false);
    let (status, answer) = allowed.post_json(GENERATE, &without_token).await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (409, "confirmation_required")
    );

    // A token for another payload, for the same payload on another model, and a made-up one.
    let other = confirmed(&allowed, json!({ "prompt": "another prompt" })).await;
    let mut swapped = without_token.clone();
    swapped["confirmToken"] = other["confirmToken"].clone();
    let (status, answer) = allowed.post_json(GENERATE, &swapped).await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (409, "confirmation_mismatch")
    );
    let mut pricier = confirmed(&allowed, body.clone()).await;
    pricier["model"] = json!("flux-pro-1.1-ultra");
    pricier["width"] = Value::Null;
    let (status, answer) = allowed.post_json(GENERATE, &pricier).await;
    assert_eq!(status, 409, "{answer}");
    let mut forged = without_token.clone();
    forged["confirmToken"] = json!("v1.99999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (status, answer) = allowed.post_json(GENERATE, &forged).await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (409, "confirmation_mismatch")
    );

    // $0.03 left for the day cannot pay a $0.04 image.
    let paid = confirmed(&allowed, body.clone()).await;
    let (status, answer) = allowed.post_json(GENERATE, &paid).await;
    assert_eq!(status, 402);
    assert_eq!(error_code(&answer), "budget_exceeded");
    assert_eq!(answer["error"]["details"]["price"], 0.04);

    // No key on the server.
    let url = bfl.url();
    let keyless = TestApp::spawn_with("http://127.0.0.1:9", |s| {
        s.allow_generation = "true".into();
        s.bfl_base_url = url;
    })
    .await;
    let paid = confirmed(&keyless, body.clone()).await;
    let (status, answer) = keyless.post_json(GENERATE, &paid).await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (503, "flux_not_configured")
    );

    assert!(
        bfl.requests().is_empty(),
        "no refusal may reach BFL: {:?}",
        bfl.requests()
    );
    assert!(
        allowed.get_json("/api/jobs").await["jobs"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_confirmed_request_is_charged_once_and_its_image_saved() {
    let bfl = FakeBfl::start(KEY).await;
    bfl.set_pending_polls(3);
    let app = app(&bfl, true, |_| {}).await;

    let paid = confirmed(&app, json!({ "prompt": "a tram at dusk", "seed": 7 })).await;
    let (status, answer) = app.post_json(GENERATE, &paid).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "submitted");
    let id = answer["id"].as_str().unwrap();

    let job = app.wait_for_job(id, "succeeded").await;
    assert_eq!(job["backend"], "flux");
    assert_eq!(job["cost_usd"], 0.04);
    assert!(job["provider_id"].as_str().is_some_and(|p| !p.is_empty()));
    assert_eq!(job["progress"], 100.0);
    let output = &job["outputs"][0];
    assert_eq!(output["content_type"], "image/jpeg");
    let bytes = app
        .http
        .get(app.url(output["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.as_ref(), bfl.image());

    assert_eq!(bfl.submits(), 1);
    let submit = bfl
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(submit.path, "/v1/flux-pro-1.1");
    assert_eq!(submit.body["prompt"], "a tram at dusk");
    assert_eq!(submit.body["seed"], 7);
    assert_eq!(submit.body["width"], 1024);
    assert!(submit.headers.contains(&("x-key".into(), KEY.into())));
    assert_eq!(
        bfl.key_leaks(),
        0,
        "the key never goes to the image's delivery host"
    );

    let budget = app.get_json("/api/flux/budget").await;
    assert_eq!(
        (budget["spent"].as_f64(), budget["reserved"].as_f64()),
        (Some(0.04), Some(0.0))
    );
    assert_eq!(budget["left"], 4.96);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_never_overshoot_the_budget() {
    let bfl = FakeBfl::start(KEY).await;
    bfl.set_pending_polls(1000);
    // $0.20 covers five $0.04 images.
    let app = app(&bfl, true, |s| s.flux_daily_budget_usd = "0.20".into()).await;
    // Fifty people each confirmed a dry run of their own.
    let mut confirmations = Vec::new();
    for _ in 0..50 {
        confirmations.push(confirmed(&app, json!({ "prompt": "fifty at once" })).await);
    }

    let requests = confirmations
        .iter()
        .map(|paid| app.post_json(GENERATE, paid));
    let answers = futures_util::future::join_all(requests).await;
    let accepted = answers.iter().filter(|(status, ..)| *status == 202).count();
    let refused = answers
        .iter()
        .filter(|(status, body)| *status == 402 && error_code(body) == "budget_exceeded")
        .count();
    assert_eq!(
        (accepted, refused),
        (5, 45),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert_eq!(bfl.submits(), 5);
    let budget = app.get_json("/api/flux/budget").await;
    assert_eq!(budget["spent"], 0.2);
    assert_eq!(budget["left"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_is_one_call_even_under_twenty_concurrent_repeats() {
    let bfl = FakeBfl::start(KEY).await;
    bfl.set_pending_polls(1000);
    let app = app(&bfl, true, |_| {}).await;
    let paid = confirmed(&app, json!({ "prompt": "double click" })).await;

    let requests = (0..20).map(|_| app.post(GENERATE, Some(&paid), Some("order-42")));
    let answers = futures_util::future::join_all(requests).await;
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|Posted { status, body, .. }| {
            assert_eq!(*status, 202, "{body}");
            body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "every repeat names the same job");
    let replayed = answers
        .iter()
        .filter(|answer| answer.headers.get("idempotent-replayed").is_some())
        .count();
    assert_eq!(replayed, 19);
    assert_eq!(bfl.submits(), 1);

    // The same key with camelCase spellings and another key order is the same request…
    let mut respelled = paid.clone();
    respelled["outputFormat"] = json!("jpeg");
    let (status, again) = app
        .post_json_with_key(GENERATE, &respelled, Some("order-42"))
        .await;
    assert_eq!(
        (status, again["id"].as_str()),
        (202, ids.iter().next().map(String::as_str))
    );
    // …but another body under the same key is refused, and nothing is sent.
    let mut changed = paid.clone();
    changed["prompt"] = json!("something else");
    let (status, answer) = app
        .post_json_with_key(GENERATE, &changed, Some("order-42"))
        .await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (422, "idempotency_key_reused")
    );
    assert_eq!(bfl.submits(), 1);
    assert_eq!(app.get_json("/api/flux/budget").await["spent"], 0.04);
}

#[tokio::test]
async fn bfl_refusals_and_moderation_become_clear_job_errors() {
    let bfl = FakeBfl::start(KEY).await;
    let app = app(&bfl, true, |_| {}).await;

    bfl.set_submit_mode(SubmitMode::Refuse(402));
    let paid = confirmed(&app, json!({ "prompt": "no credits" })).await;
    let (status, answer) = app.post_json(GENERATE, &paid).await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (502, "bfl_insufficient_credits")
    );
    let job = app
        .get_json(&format!(
            "/api/jobs/{}",
            answer["error"]["details"]["job_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "bfl_insufficient_credits");

    // A task BFL refused gave its token back: the same confirmed request may be tried again.
    bfl.set_submit_mode(SubmitMode::Refuse(429));
    let Posted {
        status,
        body: answer,
        headers,
    } = app.post(GENERATE, Some(&paid), None).await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (429, "bfl_rate_limited")
    );
    assert!(headers.get("retry-after").is_some());
    // Refused tasks cost nothing: their reservations are released.
    let budget = app.get_json("/api/flux/budget").await;
    assert_eq!(
        (budget["spent"].as_f64(), budget["reserved"].as_f64()),
        (Some(0.0), Some(0.0))
    );

    bfl.set_submit_mode(SubmitMode::Accept);
    for (end, code) in [
        (TaskEnd::ContentModerated, "bfl_moderated"),
        (TaskEnd::RequestModerated, "bfl_moderated"),
        (TaskEnd::Error, "bfl_failed"),
    ] {
        bfl.set_task_end(end);
        let paid = confirmed(&app, json!({ "prompt": "moderate me" })).await;
        let (status, answer) = app.post_json(GENERATE, &paid).await;
        assert_eq!(status, 202, "{answer}");
        let job = app
            .wait_for_job(answer["id"].as_str().unwrap(), "failed")
            .await;
        assert_eq!(job["error"]["code"], code, "{job}");
        assert!(job["outputs"].as_array().unwrap().is_empty());
    }
    let moderated = app.get_json("/api/jobs?status=failed").await;
    assert!(moderated["jobs"].as_array().unwrap().iter().any(|j| {
        j["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("moderation"))
    }));
    // A FLUX task cannot be taken back.
    let any_id = moderated["jobs"][0]["id"].as_str().unwrap().to_owned();
    let response = app
        .http
        .post(app.url(&format!("/api/jobs/{any_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
}

#[tokio::test]
async fn an_unknown_outcome_is_needs_reconcile_and_never_resent_even_after_a_restart() {
    let bfl = FakeBfl::start(KEY).await;
    bfl.set_submit_mode(SubmitMode::DropConnection);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let first = app(&bfl, true, |s| s.data_dir = dir.clone()).await;

    let paid = confirmed(&first, json!({ "prompt": "lost in transit" })).await;
    let (status, answer) = first
        .post_json_with_key(GENERATE, &paid, Some("retry-me"))
        .await;
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (502, "bfl_outcome_unknown")
    );
    let id = answer["error"]["details"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        first.get_json(&format!("/api/jobs/{id}")).await["status"],
        "needs_reconcile"
    );
    // A retry with the same key gets the same answer, not a second call.
    let (status, again) = first
        .post_json_with_key(GENERATE, &paid, Some("retry-me"))
        .await;
    assert_eq!(
        (status, again["error"]["details"]["job_id"].as_str()),
        (502, Some(id.as_str()))
    );
    // The price stays reserved: the task may have been charged.
    assert_eq!(first.get_json("/api/flux/budget").await["reserved"], 0.04);
    first.stop().await;

    bfl.set_submit_mode(SubmitMode::Accept);
    let second = app(&bfl, true, |s| s.data_dir = dir.clone()).await;
    let job = second.get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["status"], "needs_reconcile");
    assert_eq!(job["error"]["code"], "bfl_outcome_unknown");
    assert_eq!(bfl.submits(), 1, "an unknown outcome is never sent again");
}

#[tokio::test]
async fn after_a_restart_submitted_tasks_are_polled_again_and_not_resent() {
    let bfl = FakeBfl::start(KEY).await;
    bfl.set_pending_polls(usize::MAX);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let first = app(&bfl, true, |s| s.data_dir = dir.clone()).await;
    let paid = confirmed(&first, json!({ "prompt": "slow one" })).await;
    let (status, answer) = first.post_json(GENERATE, &paid).await;
    assert_eq!(status, 202);
    let id = answer["id"].as_str().unwrap().to_owned();
    first.wait_for_job(&id, "running").await;
    first.stop().await;

    bfl.set_pending_polls(0);
    let second = app(&bfl, true, |s| s.data_dir = dir.clone()).await;
    let job = second.wait_for_job(&id, "succeeded").await;
    assert_eq!(job["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(bfl.submits(), 1);
    assert_eq!(second.get_json("/api/flux/budget").await["spent"], 0.04);
}

#[tokio::test]
async fn a_client_that_goes_too_fast_gets_429_with_retry_after() {
    let bfl = FakeBfl::start(KEY).await;
    let app = app(&bfl, true, |s| {
        s.paid_rate_limit_per_min = "6".into();
        s.paid_rate_limit_burst = "3".into();
    })
    .await;
    for _ in 0..3 {
        let (status, _) = app.post_json(GENERATE, &json!({ "prompt": "x" })).await;
        assert_eq!(status, 200);
    }
    let Posted {
        status,
        body,
        headers,
    } = app
        .post(GENERATE, Some(&json!({ "prompt": "x" })), None)
        .await;
    assert_eq!((status, error_code(&body).as_str()), (429, "rate_limited"));
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&wait), "{wait}");
    // The v0 routes share the limit; the rest of the API does not.
    let v0 = app
        .http
        .get(app.url("/api/v0/validate"))
        .send()
        .await
        .unwrap();
    assert_eq!(v0.status(), 429);
    let health = app.http.get(app.url("/api/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_confirmation_pays_once() {
    let bfl = FakeBfl::start(KEY).await;
    bfl.set_pending_polls(1000);
    let app = app(&bfl, true, |_| {}).await;
    let paid = confirmed(&app, json!({ "prompt": "once" })).await;
    let (status, _) = app.post_json(GENERATE, &paid).await;
    assert_eq!(status, 202);
    // A retry loop or a stray script sending the same confirmed body again pays nothing more.
    for _ in 0..3 {
        let (status, answer) = app.post_json(GENERATE, &paid).await;
        assert_eq!(
            (status, error_code(&answer).as_str()),
            (409, "confirmation_used")
        );
    }
    assert_eq!(bfl.submits(), 1);
}

#[tokio::test]
async fn a_slow_or_failing_bfl_after_sending_is_needs_reconcile_not_a_refusal() {
    let bfl = FakeBfl::start(KEY).await;
    let app = app(&bfl, true, |s| s.flux_submit_timeout_secs = "1".into()).await;
    for (mode, why) in [
        (
            SubmitMode::Slow(Duration::from_secs(3)),
            "did not answer within 1 s",
        ),
        (SubmitMode::Refuse(503), "HTTP 503"),
    ] {
        bfl.set_submit_mode(mode);
        let paid = confirmed(&app, json!({ "prompt": "maybe charged" })).await;
        let (status, answer) = app.post_json(GENERATE, &paid).await;
        assert_eq!(
            (status, error_code(&answer).as_str()),
            (502, "bfl_outcome_unknown"),
            "{answer}"
        );
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(why),
            "{answer}"
        );
        let job = app
            .get_json(&format!(
                "/api/jobs/{}",
                answer["error"]["details"]["job_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(job["status"], "needs_reconcile");
    }
    assert_eq!(bfl.submits(), 2);
    // Both prices stay reserved: either may have been charged.
    assert_eq!(app.get_json("/api/flux/budget").await["reserved"], 0.08);
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_submit_does_not_orphan_the_job() {
    let bfl = FakeBfl::start(KEY).await;
    bfl.set_submit_mode(SubmitMode::Slow(Duration::from_millis(500)));
    let app = app(&bfl, true, |_| {}).await;
    let paid = confirmed(&app, json!({ "prompt": "impatient" })).await;
    let request = app
        .http
        .post(app.url("/api/flux/generate"))
        .json(&paid)
        .send();
    // The client gives up while BFL is still answering.
    assert!(
        tokio::time::timeout(Duration::from_millis(150), request)
            .await
            .is_err()
    );
    wait_until(
        Duration::from_secs(15),
        "the job is recorded and finishes",
        || async {
            let jobs = app.get_json("/api/jobs").await;
            jobs["jobs"][0]["status"] == "succeeded"
        },
    )
    .await;
    assert_eq!(bfl.submits(), 1);
    assert_eq!(app.get_json("/api/flux/budget").await["spent"], 0.04);
}

/// FLUX.2: the dry run prices the megapixels the request asks for, the reservation holds that price, and the cost
/// BFL answers the submit with is what the job and the day's budget record as spent. The account's credits are on
/// the status report the diagnostics page reads.
#[tokio::test]
async fn flux2_is_priced_by_megapixel_and_settled_at_what_bfl_charged() {
    let bfl = FakeBfl::start(KEY).await;
    let app = app(&bfl, true, |_| {}).await;
    let body =
        json!({ "model": "flux-2-pro", "prompt": "a wide harbour", "width": 1536, "height": 1536 });
    let (status, dry) = app.post_json(GENERATE, &body).await;
    assert_eq!(status, 200, "{dry}");
    // 2.25 megapixels are billed as 3: 3 + 2 × 1.5 credits.
    assert_eq!(dry["estimatedCost"]["usd"], 0.06);
    assert_eq!(dry["megapixels"]["output"], 3);
    assert_eq!(bfl.submits(), 0);

    let mut paid = body.clone();
    paid["dryRun"] = json!(false);
    paid["confirmToken"] = dry["confirmToken"].clone();
    let (status, accepted) = app.post_json(GENERATE, &paid).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    let job = app.get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["cost_usd"], 0.06);
    assert_eq!(
        job["actual_cost_usd"], 0.06,
        "the fake charged 6 credits: {job}"
    );
    assert_eq!(app.get_json("/api/flux/budget").await["spent"], 0.06);
    app.wait_for_job(id, "succeeded").await;

    // An input image is reserved at its most (4 megapixels) and settled at what BFL says it cost.
    let image = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
    let body = json!({ "model": "flux-2-pro", "prompt": "the same, edited", "input_image": image });
    let paid = confirmed(&app, body).await;
    let (status, accepted) = app.post_json(GENERATE, &paid).await;
    assert_eq!(status, 202, "{accepted}");
    let job = app
        .get_json(&format!("/api/jobs/{}", accepted["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (job["cost_usd"].as_f64(), job["actual_cost_usd"].as_f64()),
        (Some(0.09), Some(0.045))
    );
    assert_eq!(app.get_json("/api/flux/budget").await["spent"], 0.105);

    let status = app.get_json("/api/status").await;
    assert_eq!(status["external"]["flux"]["credits"], 1234.5, "{status}");
}
