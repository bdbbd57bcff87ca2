//! The MCP server, driven by rmcp's own client over streamable HTTP (`/mcp`) and over stdio (`orchestrator mcp`).

use rmcp::model::{CallToolRequestParams, CallToolResult, ReadResourceRequestParams, Tool};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use testkit::fake_bfl::FakeBfl;
use testkit::fake_comfy::FakeComfy;

use crate::support::{TestApp, error_code, raw_request};

type Client = RunningService<RoleClient, ()>;

async fn http_client(app: &TestApp) -> Client {
    orchestrator::outbound::install_crypto_provider();
    ().serve(StreamableHttpClientTransport::from_uri(app.url("/mcp")))
        .await
        .expect("the MCP session starts over HTTP")
}

/// The tools as the snapshot holds them: sorted by name, each its name, description and input schema. Over HTTP and
/// over stdio the list must be the same, so both compare against the one `mcp_tools` snapshot.
fn tool_list(mut tools: Vec<Tool>) -> Vec<Value> {
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    tools
        .iter()
        .map(|tool| json!({ "name": tool.name, "description": tool.description, "input_schema": tool.input_schema }))
        .collect()
}

/// A FLUX body for the tool, and the server settings that let it pay (a fake BFL, `ALLOW_GENERATION=true`).
fn paying_app_settings(bfl_url: String) -> impl FnOnce(&mut orchestrator::config::Settings) {
    move |s| {
        s.bfl_api_key = Some("bfl-key-for-the-agent-00".into());
        s.bfl_base_url = bfl_url;
        s.allow_generation = "true".into();
    }
}

/// Tries to pay for FLUX with every kind of missing or wrong token, on a server that allows generation; each attempt
/// must be a tool error with the API's own code, and the caller then checks that BFL saw nothing.
async fn flux_refuses_every_bad_token(client: &Client) {
    let fox = json!({ "backend": "flux", "prompt": "a fox", "width": 512 });
    let (ok, dry) = call(client, "generate_image", fox.clone()).await;
    assert!(ok && dry["dryRun"] == true, "{dry}");
    let token = dry["confirmToken"].as_str().unwrap().to_owned();

    // Asking to pay through params without a token is still only the dry run: the tool sets dryRun itself.
    let (ok, still_dry) = call(
        client,
        "generate_image",
        json!({ "backend": "flux", "prompt": "a fox", "width": 512, "params": { "dryRun": false } }),
    )
    .await;
    assert!(ok && still_dry["dryRun"] == true, "{still_dry}");

    let with_token = |token: &str, prompt: &str| json!({ "backend": "flux", "prompt": prompt, "width": 512, "confirm_token": token });
    let forged_tag = format!(
        "{}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        token.rsplit_once('.').unwrap().0
    );
    let cases = [
        // An empty token: a paid call without one.
        (with_token("", "a fox"), "confirmation_required"),
        // Made up.
        (with_token("v1.1.a.b", "a fox"), "confirmation_mismatch"),
        // The dry run's expiry and id with a forged signature.
        (with_token(&forged_tag, "a fox"), "confirmation_mismatch"),
        // A genuine token, for another payload.
        (with_token(&token, "a wolf"), "confirmation_mismatch"),
    ];
    for (arguments, code) in cases {
        let (ok, refused) = call(client, "generate_image", arguments.clone()).await;
        assert!(!ok, "{arguments} paid: {refused}");
        assert_eq!(error_code(&refused), code, "{arguments}: {refused}");
    }
}

/// The resource of job `id`'s output, found in the listing and read, as JSON.
async fn read_output(client: &Client, id: &str) -> Value {
    let uri = client
        .list_all_resources()
        .await
        .unwrap()
        .iter()
        .map(|r| r.uri.clone())
        .find(|uri| uri.contains(id))
        .expect("the job's output is listed");
    let read = client
        .read_resource(
            serde_json::from_value::<ReadResourceRequestParams>(json!({ "uri": uri })).unwrap(),
        )
        .await
        .unwrap();
    serde_json::to_value(&read).unwrap()
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
    let listed = tool_list(client.list_all_tools().await.unwrap());
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

    // ComfyUI already answers: Ignite adopts it and starts nothing.
    let (ok, ignited) = call(&client, "ignite_comfy", json!({})).await;
    assert!(ok, "{ignited}");
    assert_eq!(
        (&ignited["comfy"], &ignited["started"], &ignited["error"]),
        (&json!("online"), &json!(false), &Value::Null),
        "{ignited}"
    );
    let service = app.get_json("/api/system/comfy/status").await;
    assert_eq!(
        (&service["adopted"], &service["pid"]),
        (&json!(true), &Value::Null),
        "the ComfyUI that answers is adopted, no process of ours: {service}"
    );

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
    // The progress wait_job followed ends at the finished job.
    assert_eq!(waited["job"]["progress"], 100.0, "{waited}");
    let (ok, got) = call(&client, "get_job", json!({ "id": id })).await;
    assert!(ok, "{got}");
    assert_eq!(
        (&got["id"], &got["status"], &got["template"]),
        (&json!(id), &json!("succeeded"), &json!("sdxl-t2i"))
    );
    assert_eq!(got["params"]["prompt"], "a lighthouse");
    assert_eq!(got["outputs"], waited["job"]["outputs"]);
    assert_eq!(got["outputs"].as_array().unwrap().len(), 1, "{got}");
    for tool in ["get_job", "wait_job"] {
        let (ok, missing) = call(&client, tool, json!({ "id": "no-such-job" })).await;
        assert!(!ok, "{tool}: {missing}");
        assert_eq!(error_code(&missing), "job_not_found", "{tool}");
    }
    let (ok, jobs) = call(&client, "list_jobs", json!({ "status": "succeeded" })).await;
    assert!(ok && jobs["jobs"][0]["id"] == id.as_str());

    let contents = read_output(&client, &id).await;
    let blob = contents["contents"][0]["blob"].as_str().unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .unwrap();
    assert_eq!(bytes, testkit::fake_comfy::OUTPUT_PNG);
    // A name that walks out of the job's outputs reads nothing: not the health answer, not another job's file.
    for name in [
        "..\\..\\..\\health",
        "..%5C..%5C..%5Chealth",
        "..%2F..%2F..%2Fhealth",
        "%2E%2E%2F%2E%2E%2F%2E%2E%2Fhealth",
        "..",
        "%2E%2E",
    ] {
        let uri = format!("orchestrator://jobs/{id}/outputs/{name}");
        let read = client
            .read_resource(
                serde_json::from_value::<ReadResourceRequestParams>(json!({ "uri": uri })).unwrap(),
            )
            .await;
        assert!(read.is_err(), "{uri} read {read:?}");
    }
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

    // With generation allowed, a missing, forged or wrong confirmToken is refused with the API's 409 codes.
    let app = TestApp::spawn_with(&comfy.url(), paying_app_settings(bfl.url())).await;
    let client = http_client(&app).await;
    flux_refuses_every_bad_token(&client).await;
    assert!(
        bfl.requests().is_empty(),
        "not a single request reached BFL: {:?}",
        bfl.requests()
    );
    client.cancel().await.unwrap();
}

/// `/mcp` stands behind the guard every route has: Host allowlist, Origin check on writes, the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_endpoint_is_behind_the_guard() {
    let initialize = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-03-26", "capabilities": {},
        "clientInfo": { "name": "guard-test", "version": "0" } } })
    .to_string();
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;

    // A DNS-rebinding page reaches us under its own name.
    for method in ["GET", "POST"] {
        let request = format!(
            "{method} /mcp HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{initialize}",
            initialize.len()
        );
        let (status, text) = raw_request(app.addr, &request).await;
        assert_eq!(status, 403, "{method} with Host evil.example: {text}");
        let body: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(error_code(&body), "host_not_allowed");
    }

    // A page on another origin may not post to it (CSRF).
    let post = |origin: Option<String>| {
        let mut request = app
            .http
            .post(app.url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(initialize.clone());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let foreign = post(Some("https://evil.example".into())).await.unwrap();
    assert_eq!(foreign.status(), 403);
    assert_eq!(
        error_code(&foreign.json().await.unwrap()),
        "cross_origin_refused"
    );
    // The panel's own origin may.
    let own = post(Some(app.origin())).await.unwrap();
    assert_eq!(own.status(), 200);
    let answer: Value = own.json().await.unwrap();
    assert!(answer["result"]["serverInfo"].is_object(), "{answer}");

    // With a token configured, nothing answers without it.
    let token = "a-long-enough-mcp-test-token";
    let app = TestApp::spawn_with(&comfy.url(), |s| s.token = Some(token.into())).await;
    for authorization in [None, Some("Bearer a-long-enough-wrong-token")] {
        let mut request = app
            .http
            .post(app.url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(initialize.clone());
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 401, "{authorization:?}");
        assert_eq!(error_code(&refused.json().await.unwrap()), "unauthorized");
    }
    let refused = ().serve(StreamableHttpClientTransport::from_uri(app.url("/mcp"))).await;
    assert!(
        refused.is_err(),
        "a session without the token must not start"
    );
    // With it, the session starts and the tools (which call the API with the server's token) work.
    let client = ()
        .serve(StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(app.url("/mcp")).auth_header(token),
        ))
        .await
        .expect("the MCP session starts with the token");
    assert!(client.peer_info().is_some());
    let (ok, status) = call(&client, "system_status", json!({})).await;
    assert!(ok && status["comfy"]["online"] == true, "{status}");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdio_server_calls_the_running_orchestrator() {
    let comfy =
        FakeComfy::start_with_models(&[("checkpoints", "sd_xl_base_1.0.safetensors")]).await;
    let bfl = FakeBfl::start("bfl-key-for-the-agent-00").await;
    let app = TestApp::spawn_with(&comfy.url(), paying_app_settings(bfl.url())).await;
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
    // The same tools and schemas as over HTTP: one snapshot serves both.
    let listed = tool_list(client.list_all_tools().await.unwrap());
    insta::assert_json_snapshot!("mcp_tools", listed);
    let (ok, models) = call(&client, "list_models", json!({})).await;
    assert!(ok, "{models}");
    assert_eq!(models["checkpoints"], json!(["sd_xl_base_1.0.safetensors"]));
    let (ok, logs) = call(&client, "tail_comfy_logs", json!({ "lines": 5 })).await;
    assert!(!ok && logs["error"]["code"] == "log_not_found", "{logs}");

    // A template job runs to success against the fake ComfyUI.
    let (ok, job) = call(
        &client,
        "generate_image",
        json!({ "template": "sdxl-t2i", "prompt": "a harbour", "params": { "steps": 4, "checkpoint": "sd_xl_base_1.0.safetensors" } }),
    )
    .await;
    assert!(ok, "{job}");
    let (ok, waited) = call(
        &client,
        "wait_job",
        json!({ "id": job["id"], "timeout_secs": 20 }),
    )
    .await;
    assert!(ok && waited["finished"] == true, "{waited}");
    assert_eq!(waited["job"]["status"], "succeeded");
    let (ok, got) = call(&client, "get_job", json!({ "id": job["id"] })).await;
    assert!(ok, "{got}");
    assert_eq!(
        (&got["id"], &got["status"]),
        (&job["id"], &json!("succeeded"))
    );
    assert_eq!(got["outputs"].as_array().unwrap().len(), 1, "{got}");

    // FLUX with generation allowed: without a valid confirmToken not a single request reaches BFL.
    flux_refuses_every_bad_token(&client).await;
    assert!(
        bfl.requests().is_empty(),
        "not a single request reached BFL: {:?}",
        bfl.requests()
    );
    client.cancel().await.unwrap();
}

/// `orchestrator mcp` writes nothing to stdout but MCP messages, one JSON object a line, not even a blank line
/// when its input ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdio_server_writes_only_mcp_messages() {
    use tokio::io::AsyncWriteExt;
    let comfy = FakeComfy::start().await;
    let app = TestApp::spawn(&comfy.url()).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("mcp")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ORCH_BIND", app.addr.to_string())
        .env("DATA_DIR", &app.data_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let messages = [
        json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": { "name": "test", "version": "1" } } }),
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" }),
    ];
    for message in messages {
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
    }
    let out = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
    let mut seen = Vec::new();
    // Read until the tools answer arrives, then close stdin so the server ends, and read the rest.
    let deadline = std::time::Duration::from_secs(20);
    while let Some(line) = tokio::time::timeout(deadline, lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        let answered = line.contains("\"tools\"");
        seen.push(line);
        if answered {
            break;
        }
    }
    drop(stdin);
    while let Some(line) = tokio::time::timeout(deadline, lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push(line);
    }
    let status = tokio::time::timeout(deadline, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(seen.len() >= 2, "{seen:?}");
    for line in &seen {
        let message: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not an MCP message on stdout: {line:?} ({e})"));
        assert_eq!(message["jsonrpc"], "2.0", "{line}");
    }
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
    // It answers with the job as it was taken, not after the run.
    assert!(
        ["queued", "submitted", "running"].contains(&job["status"].as_str().unwrap_or_default()),
        "{job}"
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
    // The answer is the last state the job's event stream showed, progress and all.
    assert!(waited["job"]["progress"].is_number(), "{waited}");
    assert_eq!(waited["job"]["id"], job["id"]);
    assert!(waited.get("resources").is_none(), "{waited}");
    assert!(took >= std::time::Duration::from_secs(1), "{took:?}");
    eprintln!(
        "mcp: generate_image answered in {answered:?}; wait_job(1 s) returned after {took:?}"
    );
    client.cancel().await.unwrap();
}

/// A ComfyUI workflow with a paid API node, through the tool: refused while generation is off, priced with a token
/// while it is on, and paid once with the token; counted at the fake Comfy.org API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_workflow_through_mcp_pays_only_with_its_token() {
    use testkit::fake_comfy_org::FakeComfyOrg;
    let comfy = FakeComfy::start().await;
    let org = FakeComfyOrg::start().await;
    let workflow = json!({
        "1": {"class_type": "FluxProUltraImageNode", "inputs": {"prompt": "an agent's idea", "aspect_ratio": "1:1",
              "prompt_upsampling": false, "raw": false, "seed": 3}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "agent", "images": ["1", 0]}},
    });
    let arguments = json!({ "backend": "comfy", "workflow": workflow });
    for allow in [false, true] {
        let org_url = org.url();
        let app = TestApp::spawn_with(&comfy.url(), move |s| {
            s.allow_generation = allow.to_string();
            s.comfy_org_api_key = Some("comfy-org-key-of-the-server".into());
            s.comfy_org_api_base = org_url;
        })
        .await;
        comfy.set_comfy_api_base(&app.url("/api/comfy-org/"));
        let client = http_client(&app).await;
        let (ok, refused) = call(&client, "generate_image", arguments.clone()).await;
        assert!(!ok, "{refused}");
        if !allow {
            assert_eq!(error_code(&refused), "generation_disabled");
            assert_eq!(refused["error"]["details"]["paidNodes"][0]["id"], "1");
            client.cancel().await.unwrap();
            app.stop().await;
            continue;
        }
        assert_eq!(error_code(&refused), "confirmation_required", "{refused}");
        let token = refused["error"]["details"]["confirmToken"].clone();
        let mut forged = arguments.clone();
        forged["confirm_token"] = json!("v1.1.a.b");
        let (ok, bad) = call(&client, "generate_image", forged).await;
        assert!(!ok && error_code(&bad) == "confirmation_mismatch", "{bad}");
        assert_eq!(org.call_count(), 0);

        let mut paid = arguments.clone();
        paid["confirm_token"] = token;
        let (ok, job) = call(&client, "generate_image", paid.clone()).await;
        assert!(ok, "{job}");
        let (ok, waited) = call(
            &client,
            "wait_job",
            json!({ "id": job["id"], "timeout_secs": 20 }),
        )
        .await;
        assert!(ok && waited["job"]["status"] == "succeeded", "{waited}");
        let (ok, replay) = call(&client, "generate_image", paid).await;
        assert!(
            !ok && error_code(&replay) == "confirmation_used",
            "{replay}"
        );
        client.cancel().await.unwrap();
        app.stop().await;
    }
    assert_eq!(org.call_count(), 1, "one call for one confirmation");
    assert_eq!(
        org.calls()[0].api_key.as_deref(),
        Some("comfy-org-key-of-the-server")
    );
}

/// An output larger than what is sent inline is answered with where to download it, and the server never holds it
/// whole to say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_output_is_named_not_inlined() {
    let comfy = FakeComfy::start().await;
    // 3 MiB that no decoder reads (the gallery shows its placeholder): the size is what matters here.
    comfy.set_output_png(bytes::Bytes::from(vec![7u8; 3 * 1024 * 1024]));
    let app = TestApp::spawn(&comfy.url()).await;
    let job = app
        .run_workflow(testkit::fake_comfy::no_model_workflow())
        .await;
    let id = job.rsplit('/').next().unwrap().to_owned();
    let client = http_client(&app).await;
    let contents = read_output(&client, &id).await;
    let text = contents["contents"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("3145728 bytes of image/png, too large to send inline: download http://"),
        "{text}"
    );
    assert!(contents["contents"][0]["blob"].is_null());
    client.cancel().await.unwrap();
}

/// The client behind MCP's resources reads no further than it may send inline: an answer that says it is 10 GB,
/// and then trickles, is refused at once, never read.
#[tokio::test]
async fn a_download_past_the_inline_limit_is_never_read() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::io::AsyncReadExt::read(&mut socket, &mut buffer)
                .await
                .unwrap();
            assert!(n > 0, "the client hung up");
            request.extend_from_slice(&buffer[..n]);
        }
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: video/webm\r\ncontent-length: 10000000000\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&[0u8; 1024]).await.unwrap();
        std::future::pending::<()>().await;
    });
    let client = orchestrator::client::ApiClient::new(format!("http://{addr}"), None);
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.bytes("/api/jobs/x/outputs/big.webm", 1024 * 1024),
    )
    .await
    .expect("answered without reading the body");
    match read.unwrap() {
        (kind, orchestrator::client::Download::TooLarge { size }) => {
            assert_eq!((kind.as_str(), size), ("video/webm", Some(10_000_000_000)));
        }
        other => panic!("{other:?}"),
    }
}
