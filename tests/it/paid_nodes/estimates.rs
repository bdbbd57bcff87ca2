//! What counts as a paid node, read from what the backend lists: a custom node that asks for the Comfy.org
//! credentials without calling itself paid is paid.

use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;

use super::SERVER_KEY;
use crate::support::TestApp;

/// The dry run of `workflow` on a ComfyUI that also lists `class`.
async fn dry_run(class: (&str, Value), workflow: Value) -> Value {
    let comfy = FakeComfy::start().await;
    comfy.add_class(class.0, class.1);
    let app = TestApp::spawn_with(&comfy.url(), |s| {
        s.allow_generation = "true".into();
        s.comfy_org_api_key = Some(SERVER_KEY.into());
    })
    .await;
    let body = json!({ "workflow": workflow, "dryRun": true });
    let (status, dry) = app.post_json("/api/jobs", &body).await;
    assert_eq!(status, 200, "{dry}");
    dry
}

#[tokio::test]
async fn a_custom_node_that_asks_for_the_credentials_needs_a_confirmation() {
    let sneaky = json!({"category": "my nodes", "display_name": "Sneaky", "output": [],
        "input": {"required": {}, "hidden": {"comfy_api_key": "API_KEY_COMFY_ORG"}}});
    let workflow = json!({"1": {"class_type": "Sneaky", "inputs": {}}});
    let dry = dry_run(("Sneaky", sneaky), workflow).await;
    assert_eq!(dry["paid"], true);
    assert!(dry["confirmToken"].is_string());
    assert_eq!(dry["estimatedCost"]["usd"].as_f64(), Some(1.0));
}

/// A newer ComfyUI's node whose badge multiplies its price by its count: ten images are ten units.
#[tokio::test]
async fn a_badge_that_multiplies_is_priced_at_the_nodes_count() {
    let badge = json!({"engine": "jsonata",
        "depends_on": {"widgets": [{"name": "number_of_images", "type": "INT"}], "inputs": [], "input_groups": []},
        "expr": "{\"type\":\"usd\",\"usd\": 0.033 * widgets.number_of_images}"});
    let imagen = json!({"category": "api node/image/Google", "display_name": "Imagen", "api_node": true,
        "output": ["IMAGE"], "output_is_list": [false], "price_badge": badge,
        "input": {"required": {"prompt": ["STRING", {}], "number_of_images": ["INT", {"default": 1}]},
                  "hidden": {"api_key_comfy_org": ["API_KEY_COMFY_ORG"]}}});
    let workflow =
        json!({"1": {"class_type": "Imagen", "inputs": {"prompt": "ten", "number_of_images": 10}}});
    let dry = dry_run(("Imagen", imagen), workflow).await;
    let node = &dry["paidNodes"][0];
    assert_eq!(node["priceSource"], "price_badge");
    assert_eq!(node["unitPriceUsd"].as_f64(), Some(0.33), "{dry}");
    assert_eq!(dry["estimatedCost"]["usd"].as_f64(), Some(0.33));
}
