//! The `orchestrator` binary as a user runs it: a real child process.

mod config;
mod generate;
mod secrets;
mod serve;
mod service;
mod users;

use testkit::fake_bfl::FakeBfl;

fn flux_env(bfl: &FakeBfl) -> Vec<(&'static str, String)> {
    vec![
        ("ALLOW_GENERATION", "true".into()),
        ("BFL_API_KEY", BFL_KEY.into()),
        ("BFL_BASE_URL", bfl.url()),
        ("FLUX_POLL_INTERVAL_MS", "20".into()),
    ]
}

const BFL_KEY: &str = "bfl-secret-key-never-shown-1234";
const V0_KEY: &str = "v0-secret-key-never-shown-5678";

const COMFY_ORG_KEY: &str = "comfy-org-secret-never-shown-9012";
const EDITOR_KEY: &str = "editor-signed-in-key-never-used-3456";
