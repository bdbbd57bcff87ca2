//! Generation jobs against the fake ComfyUI: submitted, followed, outputs fetched, cancelled, lost.

mod backends;
mod cancel;
mod runs;

use serde_json::{Value, json};
use testkit::fake_comfy::no_model_workflow;

use crate::support::TestApp;

async fn submit(app: &TestApp, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/api/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn job(app: &TestApp, id: &str) -> Value {
    app.get_json(&format!("/api/jobs/{id}")).await
}

/// A variant of the recorded no-model workflow (a new colour defeats ComfyUI's cache).
pub(crate) fn workflow(colour: u32) -> Value {
    let mut workflow = no_model_workflow();
    workflow["1"]["inputs"]["color"] = json!(colour);
    workflow
}
