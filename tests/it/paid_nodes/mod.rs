//! ComfyUI's paid API nodes behind the money rules: every path, counted at a fake Comfy.org API that the fake
//! ComfyUI calls with the key it finds in the prompt's `extra_data`, as the real one does.

mod confirmation;
mod egress;
mod estimates;
mod fan_out;
mod leaks;
mod once;

use orchestrator::config::Settings;
use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;
use testkit::fake_comfy_org::FakeComfyOrg;

use crate::support::TestApp;

/// Orchestrator's own Comfy.org key.
const SERVER_KEY: &str = "comfyui-server-key-0123456789abcdef";
/// A key a client (ComfyUI's editor, signed in) puts into `extra_data`.
const CLIENT_KEY: &str = "comfyui-client-key-should-never-be-used";
const CLIENT_TOKEN: &str = "client-auth-token-should-never-be-used";

struct Rig {
    comfy: FakeComfy,
    org: FakeComfyOrg,
    app: TestApp,
}

async fn rig(allow: bool, adjust: impl FnOnce(&mut Settings)) -> Rig {
    let comfy = FakeComfy::start().await;
    let org = FakeComfyOrg::start().await;
    let app = TestApp::spawn_with(&comfy.url(), |s| {
        s.allow_generation = allow.to_string();
        s.comfy_org_api_key = Some(SERVER_KEY.into());
        s.comfy_org_api_base = org.url();
        s.paid_rate_limit_per_min = "100000".into();
        s.paid_rate_limit_burst = "1000".into();
        adjust(s);
    })
    .await;
    through_egress(&comfy, &app);
    Rig { comfy, org, app }
}

/// ComfyUI started as Orchestrator starts it: its API nodes call Orchestrator's Comfy.org egress
/// (`--comfy-api-base`), which forwards to the fake Comfy.org the app was given.
fn through_egress(comfy: &FakeComfy, app: &TestApp) {
    comfy.set_comfy_api_base(&app.url("/api/comfy-org/"));
}

/// FLUX 1.1 [pro] Ultra through ComfyUI's API node, saved by SaveImage (ids as the recorded run's).
fn paid_workflow(prompt: &str) -> Value {
    json!({
        "1": {"class_type": "FluxProUltraImageNode", "inputs": {"prompt": prompt, "aspect_ratio": "16:9",
              "prompt_upsampling": false, "raw": false, "seed": 7}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "paid", "images": ["1", 0]}},
    })
}

/// Five FLUX 1.1 [pro] Ultra nodes, $0.06 each, and a SaveImage: a job confirmed for five calls.
pub(crate) fn five_ultra_images() -> Value {
    let mut workflow = serde_json::Map::new();
    for n in 1..=5 {
        workflow.insert(
            n.to_string(),
            json!({"class_type": "FluxProUltraImageNode", "inputs": {"prompt": format!("image {n}"),
                   "aspect_ratio": "1:1", "prompt_upsampling": false, "raw": false, "seed": n}}),
        );
    }
    workflow.insert(
        "9".into(),
        json!({"class_type": "SaveImage", "inputs": {"filename_prefix": "five", "images": ["1", 0]}}),
    );
    Value::Object(workflow)
}

fn free_workflow() -> Value {
    testkit::fake_comfy::no_model_workflow()
}

/// A dry run of `workflow`, and the body that runs it with the dry run's token.
async fn confirmed(app: &TestApp, workflow: &Value) -> Value {
    let (status, dry) = app
        .post_json(
            "/api/jobs",
            &json!({ "workflow": workflow, "dryRun": true }),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    json!({ "workflow": workflow, "confirmToken": dry["confirmToken"] })
}

/// The prompt ComfyUI's editor posts: the graph, its client id and the signed-in user's credentials.
fn editor_prompt(workflow: &Value) -> Value {
    json!({ "prompt": workflow, "client_id": "editor-1",
            "extra_data": { "api_key_comfy_org": CLIENT_KEY, "auth_token_comfy_org": CLIENT_TOKEN,
                            "extra_pnginfo": { "workflow": {} } } })
}

/// Every POST /prompt ComfyUI queued.
fn queued(comfy: &FakeComfy) -> usize {
    comfy.received_prompts().len()
}
