//! The keys the binary holds: never in an answer, a header, a log line or `config`, and never in the supervised
//! ComfyUI's environment.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use testkit::fake_bfl::{FakeBfl, SubmitMode};
use testkit::fake_comfy::FakeComfy;
use testkit::fake_v0::FakeV0;

use super::{BFL_KEY, COMFY_ORG_KEY, EDITOR_KEY, V0_KEY, flux_env};
use crate::support::served::{Served, command};
use crate::support::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_appear_in_answers_headers_or_logs() {
    let bfl = FakeBfl::start(BFL_KEY).await;
    let v0 = FakeV0::start(V0_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = flux_env(&bfl);
    env.extend([
        ("V0_API_KEY", V0_KEY.to_owned()),
        ("V0_BASE_URL", v0.url()),
        ("RUST_LOG", "trace".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let served = Served::start_with(dir.path(), "http://127.0.0.1:9", &env);
    let client = crate::support::client();
    let mut seen = String::new();
    let record = |response: reqwest::Response| {
        let headers = format!("{:?}", response.headers());
        async move { format!("{headers}\n{}\n", response.text().await.unwrap()) }
    };

    let dry: Value = client
        .post(served.url("/api/flux/generate"))
        .json(&serde_json::json!({ "prompt": "secret-free" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    seen.push_str(&dry.to_string());
    let mut paid = serde_json::json!({ "prompt": "secret-free", "dryRun": false });
    paid["confirmToken"] = dry["confirmToken"].clone();
    let answer = client
        .post(served.url("/api/flux/generate"))
        .json(&paid)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let answer: Value = answer.json().await.unwrap();
    let job = format!("/api/jobs/{}", answer["id"].as_str().unwrap());
    wait_until(Duration::from_secs(15), "the FLUX job succeeds", || {
        let client = client.clone();
        let url = served.url(&job);
        async move {
            let job: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            job["status"] == "succeeded"
        }
    })
    .await;
    bfl.set_submit_mode(SubmitMode::Refuse(403));
    let dry: Value = client
        .post(served.url("/api/flux/generate"))
        .json(&serde_json::json!({ "prompt": "secret-free" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    paid["confirmToken"] = dry["confirmToken"].clone();
    for request in [
        client.post(served.url("/api/flux/generate")).json(&paid),
        client.get(served.url(&job)),
        client.get(served.url("/api/jobs")),
        client.get(served.url("/api/flux/budget")),
        client.get(served.url("/api/v0/validate")),
        client.get(served.url("/api/v0/chats")),
        client
            .post(served.url("/api/v0/chats"))
            .header("Authorization", "Bearer client")
            .json(&serde_json::json!({ "message": "hi" })),
    ] {
        let response = request.send().await.unwrap();
        seen.push_str(&record(response).await);
    }
    assert!(
        seen.contains("bfl_unauthorized") && seen.contains("\"status\":\"valid\""),
        "{seen}"
    );
    let config = command(dir.path(), &env).arg("config").output().unwrap();
    seen.push_str(&String::from_utf8_lossy(&config.stdout));
    seen.push_str(&String::from_utf8_lossy(&config.stderr));
    // The server did log the requests (so the check below reads real log lines).
    let lines = served.lines().join("\n");
    assert!(
        lines.contains("/api/v0/chats") && lines.contains("/api/flux/generate"),
        "{lines}"
    );
    for key in [BFL_KEY, V0_KEY] {
        assert!(
            !seen.contains(key),
            "a key leaked into an answer or `config`"
        );
        assert!(!lines.contains(key), "a key leaked into the log");
    }
    // The upstreams did get them.
    assert!(v0.requests().iter().all(|r| {
        r.headers
            .contains(&("authorization".into(), format!("Bearer {V0_KEY}")))
    }));
}

/// `generate --workflow` with a paid API node: the price is shown and nothing is sent without a yes; `--yes` pays
/// once with the server's key. The real binary logs at trace level meanwhile, and neither key shows up in a log
/// line, an answer or `config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_workflow_from_the_cli_asks_first_and_no_comfy_org_key_is_ever_shown() {
    use testkit::fake_comfy_org::FakeComfyOrg;
    let fake = FakeComfy::start().await;
    let org = FakeComfyOrg::start().await;
    let dir = tempfile::tempdir().unwrap();
    let org_url = org.url();
    let env = [
        ("ALLOW_GENERATION", "true"),
        ("COMFY_ORG_API_KEY", COMFY_ORG_KEY),
        ("COMFY_ORG_API_BASE", org_url.as_str()),
        ("RUST_LOG", "trace"),
    ];
    let served = Served::start_with(dir.path(), &fake.url(), &env);
    fake.set_comfy_api_base(&served.url("/api/comfy-org/"));
    let workflow = serde_json::json!({
        "1": {"class_type": "FluxProUltraImageNode", "inputs": {"prompt": "from the terminal", "aspect_ratio": "4:3",
              "prompt_upsampling": false, "raw": false, "seed": 11}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "cli", "images": ["1", 0]}},
    });
    let file = dir.path().join("paid.json");
    std::fs::write(&file, workflow.to_string()).unwrap();
    let client_env = [
        ("ORCH_BIND", served.addr.to_string()),
        ("DATA_DIR", dir.path().join("data").display().to_string()),
    ];
    let client_env: Vec<(&str, &str)> = client_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = ["generate", "--workflow", file.to_str().unwrap()];

    let refused = command(dir.path(), &client_env)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let shown = String::from_utf8_lossy(&refused.stdout);
    assert!(
        shown.contains("node 1 FluxProUltraImageNode (api node/image/BFL): ~$0.060"),
        "{shown}"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(org.call_count(), 0);

    let paid = command(dir.path(), &client_env)
        .args(args)
        .arg("--yes")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        paid.status.success(),
        "{}",
        String::from_utf8_lossy(&paid.stderr)
    );
    assert_eq!(org.call_count(), 1);
    assert_eq!(org.calls()[0].api_key.as_deref(), Some(COMFY_ORG_KEY));

    // The editor's own key in a prompt through the gateway, and every answer that could echo one.
    let client = crate::support::client();
    let prompt = serde_json::json!({ "prompt": testkit::fake_comfy::no_model_workflow(),
        "extra_data": { "api_key_comfy_org": EDITOR_KEY } });
    let mut seen = String::new();
    for request in [
        client.post(served.url("/api/comfy/prompt")).json(&prompt),
        client.get(served.url("/api/comfy/queue")),
        client.get(served.url("/api/comfy/history")),
        client.get(served.url("/api/jobs")),
    ] {
        let response = request.send().await.unwrap();
        seen.push_str(&response.text().await.unwrap());
    }
    let config = command(dir.path(), &env).arg("config").output().unwrap();
    seen.push_str(&String::from_utf8_lossy(&config.stdout));
    assert!(seen.contains("COMFY_ORG_API_KEY"), "{seen}");
    let lines = served.lines().join("\n");
    assert!(lines.contains("/api/comfy/prompt"), "{lines}");
    for key in [COMFY_ORG_KEY, EDITOR_KEY] {
        assert!(
            !seen.contains(key),
            "a Comfy.org key leaked into an answer or `config`"
        );
        assert!(!lines.contains(key), "a Comfy.org key leaked into the log");
    }
    assert!(
        fake.received_prompts()
            .iter()
            .all(|p| !p.to_string().contains(EDITOR_KEY))
    );
}

/// The supervised ComfyUI (here a `COMFY_COMMAND` that writes its environment out) runs without Orchestrator's
/// secrets and without anything Orchestrator's `.env` set, yet with the rest of the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervised_comfy_gets_no_secret_and_nothing_from_dotenv() {
    let dir = tempfile::tempdir().unwrap();
    let dumped = dir.path().join("child-env.txt");
    std::fs::write(
        dir.path().join(".env"),
        "MODELS_DIR=/from/the/dotenv/file\n",
    )
    .unwrap();
    let command_json = serde_json::json!([
        "sh",
        "-c",
        format!("env > '{}'; exec sleep 60", dumped.display())
    ])
    .to_string();
    let token = "a-token-of-orchestrator-0123456789";
    let database = crate::support::database_for(&dir.path().join("data"));
    let env = [
        ("SERVICE_BACKEND", "supervised"),
        ("COMFY_COMMAND", command_json.as_str()),
        ("BFL_API_KEY", BFL_KEY),
        ("V0_API_KEY", V0_KEY),
        ("COMFY_ORG_API_KEY", COMFY_ORG_KEY),
        ("ORCHESTRATOR_TOKEN", token),
        ("DATABASE_URL", database.as_str()),
        ("KEPT_FOR_COMFY", "yes"),
    ];
    let served = Served::start_with(dir.path(), "http://127.0.0.1:9", &env);
    let started = crate::support::client()
        .post(served.url("/api/system/comfy/start"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(
        started.status().is_success(),
        "{}",
        started.text().await.unwrap()
    );
    wait_until(Duration::from_secs(15), "the child wrote its environment", || {
        let dumped = dumped.clone();
        async move { std::fs::read_to_string(&dumped).is_ok_and(|t| t.contains("KEPT_FOR_COMFY")) }
    })
    .await;
    let child_env = std::fs::read_to_string(&dumped).unwrap();
    for (name, value) in [
        ("BFL_API_KEY", BFL_KEY),
        ("V0_API_KEY", V0_KEY),
        ("COMFY_ORG_API_KEY", COMFY_ORG_KEY),
        ("ORCHESTRATOR_TOKEN", token),
        ("DATABASE_URL", database.as_str()),
        ("MODELS_DIR", "/from/the/dotenv/file"),
    ] {
        assert!(
            !child_env.contains(value),
            "{name} reached the child:\n{child_env}"
        );
    }
    assert!(child_env.contains("KEPT_FOR_COMFY=yes") && child_env.contains("PYTHONUNBUFFERED=1"));
    let stopped = crate::support::client()
        .post(served.url("/api/system/comfy/stop"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(stopped.status().is_success());
}
