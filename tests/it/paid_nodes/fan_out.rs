//! A paid node downstream of a list runs once per item: the dry run prices every run, and the Comfy.org egress
//! holds the run to what was confirmed whatever the graph does.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Rig, rig};
use crate::support::{error_code, wait_until};

/// `EmptyImage(batch_size) → RebatchImages(1) → FLUX.1 Kontext [pro] → SaveImage`: one paid call per image.
fn fanned(batch_size: Value) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": batch_size, "color": 0}},
        "2": {"class_type": "RebatchImages", "inputs": {"images": ["1", 0], "batch_size": 1}},
        "3": {"class_type": "FluxKontextProImageNode", "inputs": {"prompt": "each", "aspect_ratio": "1:1",
              "guidance": 3.0, "steps": 50, "seed": 1, "prompt_upsampling": false, "input_image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "fan", "images": ["3", 0]}},
        "9": {"class_type": "PrimitiveInt", "inputs": {"value": 6}},
    })
}

#[tokio::test]
async fn six_list_items_are_six_runs_priced_confirmed_and_spent() {
    // The fake ComfyUI lives as long as the test.
    let Rig {
        org,
        app,
        comfy: _comfy,
    } = rig(true, |_| {}).await;
    org.set_price(0.04);
    let workflow = fanned(json!(6));
    let (status, dry) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": workflow, "dryRun": true }),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    let node = &dry["paidNodes"][0];
    assert_eq!(
        (node["unitPriceUsd"].as_f64(), node["runs"].as_u64()),
        (Some(0.04), Some(6)),
        "{dry}"
    );
    assert_eq!(dry["estimatedCost"]["usd"].as_f64(), Some(0.24));
    assert_eq!(node["priceUsd"].as_f64(), Some(0.24));
    let body = json!({ "workflow": workflow, "confirmToken": dry["confirmToken"] });
    let (status, created) = app.post_json("/api/jobs", &body).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap();
    let done = app.wait_for_job(id, "succeeded").await;

    assert_eq!(org.call_count(), 6);
    // The fake's sum of six $0.04 is a float; the job's and the budget's are whole micro-dollars.
    let spent = (org.spent_usd() * 1e6).round() / 1e6;
    assert!(spent <= 0.24, "{spent}");
    assert_eq!(done["actual_cost_usd"].as_f64(), Some(spent));
    wait_until(
        Duration::from_secs(5),
        "the day's budget counts it",
        || async { app.get_json("/api/flux/budget").await["spent"].as_f64() == Some(spent) },
    )
    .await;
}

/// The list's length comes through a link: the dry run cannot price the run and asks for a cap; with `maxUsd` of
/// $0.10 the run's six calls stop after two, and the job fails with what it spent.
#[tokio::test]
async fn a_run_the_graph_does_not_fix_stops_at_the_persons_cap() {
    // The fake ComfyUI lives as long as the test.
    let Rig {
        org,
        app,
        comfy: _comfy,
    } = rig(true, |_| {}).await;
    org.set_price(0.04);
    let workflow = fanned(json!(["9", 0]));
    let (status, dry) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": workflow, "dryRun": true }),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["openEnded"], true, "{dry}");
    assert!(
        dry["confirmToken"].is_null(),
        "no token without a cap: {dry}"
    );
    assert!(dry["message"].as_str().unwrap().contains("maxUsd"));
    // Without a cap it is not run; a cap below the estimate is refused.
    let (status, refused) = app
        .post_json("/api/jobs", &json!({ "workflow": workflow }))
        .await;
    assert_eq!(
        (status, error_code(&refused).as_str()),
        (402, "confirmation_required")
    );
    let (status, low) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": workflow, "dryRun": true, "maxUsd": 0.01 }),
        )
        .await;
    assert_eq!(
        (status, error_code(&low).as_str()),
        (422, "validation_failed"),
        "{low}"
    );

    let (_, capped) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": workflow, "dryRun": true, "maxUsd": 0.10 }),
        )
        .await;
    assert_eq!(capped["maxUsd"].as_f64(), Some(0.10), "{capped}");
    // The token confirms that cap and no other.
    let other =
        json!({ "workflow": workflow, "confirmToken": capped["confirmToken"], "maxUsd": 0.20 });
    let (status, mismatch) = app.post_json("/api/jobs", &other).await;
    assert_eq!(
        (status, error_code(&mismatch).as_str()),
        (402, "confirmation_mismatch")
    );
    let body =
        json!({ "workflow": workflow, "confirmToken": capped["confirmToken"], "maxUsd": 0.10 });
    let (status, created) = app.post_json("/api/jobs", &body).await;
    assert_eq!(status, 202, "{created}");
    let failed = app
        .wait_for_job(created["id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(failed["error"]["code"], "spend_cap_reached", "{failed}");
    assert_eq!(org.call_count(), 2, "two $0.04 calls fit under $0.10");
    assert_eq!(failed["actual_cost_usd"].as_f64(), Some(0.08));
    assert_eq!(failed["cost_usd"].as_f64(), Some(0.10));
}
