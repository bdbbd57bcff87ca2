//! The MCP server, driven by rmcp's own client over streamable HTTP (`/mcp`) and over stdio (`orchestrator mcp`).

use orchestrator::testkit::fake_bfl::FakeBfl;
use orchestrator::testkit::fake_comfy::FakeComfy;
use rmcp::model::{CallToolRequestParams, CallToolResult, ReadResourceRequestParams};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

use crate::support::TestApp;

type Client = RunningService<RoleClient, ()>;

async fn http_client(app: &TestApp) -> Client {
    orchestrator::flux::client::install_crypto_provider();
    ().serve(StreamableHttpClientTransport::from_uri(app.url("/mcp")))
        .await
        .expect("the MCP session starts over HTTP")
}

async fn call(client: &Client, tool: &'static str, arguments: Value) -> (bool, Value) {
    let params = CallToolRequestParams::new(tool)
        .with_arguments(arguments.as_object().cloned().unwrap_or_default());
    let result: CallToolResult = client
        .call_tool(params)
        .await
        .expect("the tool call is answered");
    let text = result
        .content
        .iter()
        .find_map(|block| block.as_text().map(|t| t.text.clone()))
        .unwrap_or_default();
    (
        result.is_error != Some(true),
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_and_their_schemas_over_http() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let client = http_client(&app).await;
    let info = client.peer_info().expect("the server introduced itself");
    assert!(info.capabilities.tools.is_some() && info.capabilities.resources.is_some());
    let mut tools = client.list_all_tools().await.unwrap();
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    let listed: Vec<Value> = tools
        .iter()
        .map(|tool| json!({ "name": tool.name, "description": tool.description, "input_schema": tool.input_schema }))
        .collect();
    insta::assert_json_snapshot!("mcp_tools", listed);
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_job_runs_to_its_outputs_which_are_resources() {
    let comfy =
        FakeComfy::start_with_models(&[("checkpoints", "sd_xl_base_1.0.safetensors")]).await;
    let app = TestApp::spawn(&comfy.url()).await;
    let client = http_client(&app).await;

    let (ok, status) = call(&client, "system_status", json!({})).await;
    assert!(ok && status["comfy"]["online"] == true, "{status}");
    let (ok, templates) = call(&client, "list_templates", json!({})).await;
    assert!(ok && templates["templates"].as_array().unwrap().len() >= 4);

    // Validation is the API's: a missing prompt is a tool error with the API's code.
    let (ok, refused) = call(&client, "generate_image", json!({ "template": "sdxl-t2i" })).await;
    assert!(!ok);
    assert_eq!(refused["error"]["code"], "validation_failed");

    let (ok, job) = call(
        &client,
        "generate_image",
        json!({ "template": "sdxl-t2i", "prompt": "a lighthouse", "params": { "steps": 4, "checkpoint": "sd_xl_base_1.0.safetensors" } }),
    )
    .await;
    assert!(ok, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let (ok, waited) = call(&client, "wait_job", json!({ "id": id, "timeout_secs": 20 })).await;
    assert!(ok && waited["finished"] == true, "{waited}");
    assert_eq!(waited["job"]["status"], "succeeded");
    assert!(
        waited["resources"][0]
            .as_str()
            .unwrap()
            .starts_with("orchestrator://jobs/")
    );
    let (ok, jobs) = call(&client, "list_jobs", json!({ "status": "succeeded" })).await;
    assert!(ok && jobs["jobs"][0]["id"] == id.as_str());

    let resources = client.list_all_resources().await.unwrap();
    let uri = resources
        .iter()
        .map(|r| r.uri.clone())
        .find(|uri| uri.contains(&id))
        .expect("the job's output is listed");
    let read = client
        .read_resource(
            serde_json::from_value::<ReadResourceRequestParams>(json!({ "uri": uri })).unwrap(),
        )
        .await
        .unwrap();
    let contents = serde_json::to_value(&read).unwrap();
    let blob = contents["contents"][0]["blob"].as_str().unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .unwrap();
    assert_eq!(bytes, orchestrator::testkit::fake_comfy::OUTPUT_PNG);
    let (ok, _) = call(&client, "cancel_job", json!({ "id": id })).await;
    assert!(!ok, "a finished job cannot be cancelled");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_through_mcp_never_reaches_bfl_without_the_guards() {
    let comfy = FakeComfy::start().await;
    let bfl = FakeBfl::start("bfl-key-for-the-agent-00").await;
    let url = bfl.url();
    let app = TestApp::spawn_with(&comfy.url(), move |s| {
        s.bfl_api_key = Some("bfl-key-for-the-agent-00".into());
        s.bfl_base_url = url;
    })
    .await;
    let client = http_client(&app).await;
    // The first call is the dry run: the payload, the cost and a token, nothing sent.
    let (ok, dry) = call(
        &client,
        "generate_image",
        json!({ "backend": "flux", "prompt": "a fox", "width": 512 }),
    )
    .await;
    assert!(ok, "{dry}");
    assert_eq!(
        (
            dry["dryRun"].as_bool(),
            dry["estimatedCost"]["usd"].as_f64()
        ),
        (Some(true), Some(0.04))
    );
    // Paying with the token is refused: generation is disabled on this server.
    let (ok, refused) = call(
        &client,
        "generate_image",
        json!({ "backend": "flux", "prompt": "a fox", "width": 512, "confirm_token": dry["confirmToken"] }),
    )
    .await;
    assert!(!ok);
    assert_eq!(refused["error"]["code"], "generation_disabled");
    // Asking to pay with a made-up token is refused too.
    let (ok, _) = call(
        &client,
        "generate_image",
        json!({ "backend": "flux", "prompt": "a fox", "confirm_token": "v1.1.a.b" }),
    )
    .await;
    assert!(!ok);
    assert!(
        bfl.requests().is_empty(),
        "not a single request reached BFL: {:?}",
        bfl.requests()
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdio_server_calls_the_running_orchestrator() {
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let addr = app.addr.to_string();
    let data = app.data_dir.display().to_string();
    let transport = TokioChildProcess::new(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator")).configure(|command| {
            command
                .arg("mcp")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("ORCH_BIND", &addr)
                .env("DATA_DIR", &data);
        }),
    )
    .unwrap();
    let client = ().serve(transport).await.expect("the MCP session starts over stdio");
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(
        tools.len(),
        10,
        "{:?}",
        tools.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    let (ok, models) = call(&client, "list_models", json!({})).await;
    assert!(ok, "{models}");
    assert!(models["checkpoints"].is_array());
    let (ok, logs) = call(&client, "tail_comfy_logs", json!({ "lines": 5 })).await;
    assert!(!ok && logs["error"]["code"] == "log_not_found", "{logs}");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_answers_at_once_and_wait_job_returns_on_time() {
    let comfy =
        FakeComfy::start_with_models(&[("checkpoints", "sd_xl_base_1.0.safetensors")]).await;
    comfy.set_step_delay(std::time::Duration::from_millis(400));
    let app = TestApp::spawn(&comfy.url()).await;
    let client = http_client(&app).await;
    let started = std::time::Instant::now();
    let (ok, job) = call(
        &client,
        "generate_image",
        json!({ "template": "sdxl-t2i", "prompt": "slow" }),
    )
    .await;
    let answered = started.elapsed();
    assert!(ok, "{job}");
    assert!(
        answered < std::time::Duration::from_secs(1),
        "generate_image took {answered:?}"
    );
    let started = std::time::Instant::now();
    let (ok, waited) = call(
        &client,
        "wait_job",
        json!({ "id": job["id"], "timeout_secs": 1 }),
    )
    .await;
    let took = started.elapsed();
    assert!(ok && waited["finished"] == false, "{waited}");
    assert!(
        took >= std::time::Duration::from_secs(1) && took < std::time::Duration::from_millis(2500),
        "{took:?}"
    );
    eprintln!(
        "mcp: generate_image answered in {answered:?}; wait_job(1 s) returned after {took:?}"
    );
    client.cancel().await.unwrap();
}
