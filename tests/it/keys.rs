//! One `Idempotency-Key` rule for every route that takes a key: v1's jobs and confirmations, FLUX and the v2 API
//! accept and refuse the same keys, with the same words, before anything is recorded or sent.

use serde_json::{Value, json};
use testkit::fake_bfl::FakeBfl;
use testkit::fake_comfy::{FakeComfy, no_model_workflow};

use crate::support::{TestApp, error_code};

const BFL_KEY: &str = "bfl-test-key-0123456789";

/// `POST path` with `body` under `key`; the status and the body.
async fn post_keyed(app: &TestApp, path: &str, body: &Value, key: &str) -> (u16, Value) {
    let posted = app.post(path, Some(body), Some(key)).await;
    (posted.status, posted.body)
}

/// What a refused key's answer says about the key: v1 and FLUX name the field, v2 puts it in its message.
fn the_words(body: &Value) -> String {
    body["error"]["details"]["fields"]["Idempotency-Key"]
        .as_str()
        .map(|words| format!("Idempotency-Key {words}"))
        .or_else(|| body["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_string())
}

#[tokio::test]
async fn v1_flux_and_v2_take_and_refuse_the_same_keys_alike() {
    let fake = FakeComfy::start().await;
    let bfl = FakeBfl::start(BFL_KEY).await;
    let bfl_url = bfl.url();
    let app = TestApp::spawn_with(&fake.url(), move |s| {
        s.bfl_api_key = Some(BFL_KEY.into());
        s.bfl_base_url = bfl_url;
        s.allow_generation = "true".into();
    })
    .await;
    let mut colour = 0x10_20_30;
    let mut workflow = || {
        colour += 1;
        let mut workflow = no_model_workflow();
        workflow["1"]["inputs"]["color"] = json!(colour);
        workflow
    };
    let flux = json!({ "prompt": "a red fox in snow", "width": 512 });

    // A space is a printable character: every route takes the key.
    let spaced = "order 42";
    let (v1, body) = post_keyed(
        &app,
        "/api/jobs",
        &json!({ "workflow": workflow() }),
        spaced,
    )
    .await;
    assert_eq!(v1, 202, "{body}");
    let (confirm, body) =
        post_keyed(&app, "/api/jobs/no-such-job/confirm", &json!({}), spaced).await;
    assert_eq!(
        confirm, 404,
        "the key passed; the job is what is missing: {body}"
    );
    let (dry_run, body) = post_keyed(&app, "/api/flux/generate", &flux, spaced).await;
    assert_eq!(dry_run, 200, "{body}");
    let (v2, body) = post_keyed(
        &app,
        "/api/v2/jobs",
        &json!({ "workflow": workflow() }),
        spaced,
    )
    .await;
    assert_eq!(v2, 201, "{body}");

    let jobs_before = app.get_json("/api/jobs?limit=500").await["jobs"]
        .as_array()
        .unwrap()
        .len();
    let prompts_before = fake.received_prompts().len();
    for length in [256, 300] {
        let long = "k".repeat(length);
        let answers = [
            post_keyed(&app, "/api/jobs", &json!({ "workflow": workflow() }), &long).await,
            post_keyed(&app, "/api/jobs/no-such-job/confirm", &json!({}), &long).await,
            post_keyed(&app, "/api/flux/generate", &flux, &long).await,
            post_keyed(
                &app,
                "/api/v2/jobs",
                &json!({ "workflow": workflow() }),
                &long,
            )
            .await,
        ];
        let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
        // Each API family answers in its own envelope: v1 and FLUX a field error, v2 its contract's 400.
        assert_eq!(statuses, [422, 422, 422, 400], "{length}: {answers:?}");
        let codes: Vec<String> = answers.iter().map(|(_, body)| error_code(body)).collect();
        assert_eq!(
            codes,
            [
                "validation_failed",
                "validation_failed",
                "validation_failed",
                "invalid_request"
            ],
            "{length}"
        );
        for (_, body) in &answers {
            assert_eq!(
                the_words(body),
                format!("Idempotency-Key {}", orchestrator::money::keys::RULE),
                "{length}: {body}"
            );
        }
    }
    let jobs_after = app.get_json("/api/jobs?limit=500").await["jobs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(jobs_after, jobs_before, "a refused key records no job");
    assert_eq!(
        fake.received_prompts().len(),
        prompts_before,
        "nor sends one"
    );
    assert_eq!(bfl.submits(), 0, "and nothing reached BFL");
}
