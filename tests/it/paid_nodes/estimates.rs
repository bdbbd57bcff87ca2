//! What a paid node is estimated at, read from what the backend lists: a newer ComfyUI's price badge evaluated with
//! the node's own widgets, and a custom node that asks for the Comfy.org credentials without calling itself paid.

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

/// xAI's Grok image node as a newer ComfyUI lists it (`comfy_api_nodes/nodes_grok.py`): a rate times the number of
/// images.
fn grok() -> Value {
    json!({"category": "api node/image/Grok", "display_name": "Grok Image", "api_node": true,
        "input": {"required": {}, "hidden": {"api_key_comfy_org": ["API_KEY_COMFY_ORG"]}},
        "price_badge": {"engine": "jsonata",
            "depends_on": {"widgets": [{"name": "number_of_images", "type": "INT"},
                {"name": "resolution", "type": "COMBO"}], "inputs": [], "input_groups": []},
            "expr": "($rate := widgets.resolution = \"1k\" ? 0.02 : 0.05; {\"type\":\"usd\",\"usd\": $rate * widgets.number_of_images})"}})
}

fn grok_workflow(count: Value) -> Value {
    json!({"1": {"class_type": "GrokImageNode",
        "inputs": {"prompt": "a kite", "number_of_images": count, "resolution": "2K"}}})
}

#[tokio::test]
async fn a_node_that_makes_ten_images_is_estimated_at_ten() {
    let dry = dry_run(("GrokImageNode", grok()), grok_workflow(json!(10))).await;
    assert_eq!(dry["paid"], true);
    assert_eq!(
        dry["estimatedCost"]["usd"].as_f64(),
        Some(0.5),
        "10 × $0.05"
    );
    assert_eq!(dry["paidNodes"][0]["priceSource"], "price_badge");
}

/// A count fed by another node's output is not known before the run: the ceiling for each unit, not one unit.
#[tokio::test]
async fn a_badge_that_cannot_say_costs_the_ceiling() {
    let dry = dry_run(("GrokImageNode", grok()), grok_workflow(json!(["2", 0]))).await;
    assert_eq!(dry["estimatedCost"]["usd"].as_f64(), Some(1.0));
    assert_eq!(dry["paidNodes"][0]["priceSource"], "ceiling");
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
