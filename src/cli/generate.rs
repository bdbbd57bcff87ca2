//! `orchestrator generate`: a job submitted, its price confirmed when it has one, followed to its end.

use std::time::Duration;

use serde_json::Value;

use super::{answered, api, describe_error};
use crate::client::ApiClient;
use crate::config::Config;

/// What `orchestrator generate` asks for.
pub struct GenerateRequest {
    /// `comfy` (the default) or `flux`.
    pub backend: Option<String>,
    /// The FLUX model (`flux-pro-1.1` when not given).
    pub model: Option<String>,
    /// Pay without asking (FLUX).
    pub yes: bool,
    /// A ComfyUI workflow's cap, in dollars (`maxUsd`).
    pub max_usd: Option<f64>,
    pub template: Option<String>,
    pub workflow_file: Option<std::path::PathBuf>,
    pub prompt: Option<String>,
    /// `key=value`; a value that parses as JSON (a number, true/false) is taken as such, otherwise as text.
    pub params: Vec<String>,
    pub image: Option<std::path::PathBuf>,
}

/// Submits a job to the running server, follows it with a progress bar, and answers the paths of its outputs.
pub async fn generate(config: &Config, request: GenerateRequest) -> Result<String, String> {
    match request.backend.as_deref().unwrap_or("comfy") {
        "comfy" => {}
        "flux" => return generate_flux(config, request).await,
        other => return Err(format!("--backend {other:?}: expected comfy or flux")),
    }
    let mut params = serde_json::Map::new();
    if let Some(prompt) = request.prompt {
        params.insert("prompt".into(), Value::String(prompt));
    }
    for pair in &request.params {
        let (key, value) = parse_param(pair)?;
        params.insert(key, value);
    }
    if let Some(path) = &request.image {
        params.insert("image".into(), Value::String(image_data_url(path)?));
    }
    let body = match (&request.template, &request.workflow_file) {
        (Some(template), None) => {
            serde_json::json!({ "backend": "comfy", "template": template, "params": params })
        }
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let workflow: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
            serde_json::json!({ "backend": "comfy", "workflow": workflow })
        }
        _ => return Err("give --template NAME or --workflow FILE".into()),
    };
    let mut body = body;
    if let Some(max) = request.max_usd {
        body["maxUsd"] = serde_json::json!(max);
    }
    let api = api(config);
    let mut reply = answered(api.post("/api/jobs", &body).await)?;
    // A workflow with paid API nodes: its price first, then, confirmed, the same workflow with the token.
    if reply.status == 402 && reply.body["error"]["details"]["confirmToken"].is_string() {
        let dry = &reply.body["error"]["details"];
        // What the token confirms: the cap given, else the estimate.
        let cost = dry["maxUsd"]
            .as_f64()
            .or_else(|| dry["estimatedCost"]["usd"].as_f64())
            .unwrap_or_default();
        println!("Dry run: this workflow has paid API nodes. Nothing has been sent.");
        for node in dry["paidNodes"].as_array().into_iter().flatten() {
            let runs = match node["runs"].as_u64() {
                Some(1) => String::new(),
                Some(n) => format!(" × {n} runs"),
                None => " × an open number of runs".to_owned(),
            };
            println!(
                "  node {} {} ({}): ~${:.3}{runs}",
                node["id"].as_str().unwrap_or("?"),
                node["class_type"].as_str().unwrap_or("?"),
                node["category"].as_str().unwrap_or("?"),
                node["unitPriceUsd"]
                    .as_f64()
                    .or_else(|| node["priceUsd"].as_f64())
                    .unwrap_or_default()
            );
        }
        show_budget(&dry["budget"]);
        ask_to_pay(cost, "this workflow", request.yes)?;
        let mut paid = body.clone();
        paid["confirmToken"] = dry["confirmToken"].clone();
        let key = uuid::Uuid::new_v4().to_string();
        let headers = [("idempotency-key", key.as_str())];
        let post = reqwest::Method::POST;
        reply = answered(api.call(post, "/api/jobs", Some(&paid), &headers).await)?;
    }
    if !reply.is_success() {
        return Err(describe_error(&reply.body));
    }
    let id = reply.body["id"]
        .as_str()
        .ok_or("no job id in the answer")?
        .to_owned();
    finish(config, &api, &id).await
}

/// `generate --backend flux`: the dry run and its price first, then, confirmed with `--yes` or at the terminal's
/// prompt, the paid call under an idempotency key of its own (a retry of this command is a new request).
async fn generate_flux(config: &Config, request: GenerateRequest) -> Result<String, String> {
    if request.template.is_some() || request.workflow_file.is_some() {
        return Err(
            "--template and --workflow are for ComfyUI; FLUX takes --prompt, --model and --param"
                .into(),
        );
    }
    let mut body = serde_json::Map::new();
    if let Some(model) = request.model {
        body.insert("model".into(), Value::String(model));
    }
    if let Some(prompt) = request.prompt {
        body.insert("prompt".into(), Value::String(prompt));
    }
    for pair in &request.params {
        let (key, value) = parse_param(pair)?;
        body.insert(key, value);
    }
    if let Some(path) = &request.image {
        body.insert("input_image".into(), Value::String(image_data_url(path)?));
    }
    let api = api(config);
    let dry = answered(
        api.post("/api/flux/generate", &Value::Object(body.clone()))
            .await,
    )?;
    if !dry.is_success() {
        return Err(describe_error(&dry.body));
    }
    let dry = dry.body;
    let cost = dry["estimatedCost"]["usd"].as_f64().unwrap_or_default();
    let mut shown = dry["payload"].clone();
    for field in ["input_image", "image_prompt"] {
        if let Some(text) = shown[field].as_str()
            && text.len() > 64
        {
            shown[field] = Value::String(format!("<{} bytes of base64>", text.len()));
        }
    }
    println!(
        "Dry run: {} would cost ${cost:.3} ({} credits). Nothing has been sent.",
        dry["model"].as_str().unwrap_or("?"),
        dry["estimatedCost"]["credits"]
    );
    println!(
        "Payload: {}",
        serde_json::to_string_pretty(&shown).unwrap_or_default()
    );
    show_budget(&dry["budget"]);
    ask_to_pay(cost, "this image", request.yes)?;
    body.insert("dryRun".into(), Value::Bool(false));
    body.insert("confirmToken".into(), dry["confirmToken"].clone());
    let key = uuid::Uuid::new_v4().to_string();
    let headers = [("idempotency-key", key.as_str())];
    let body = Value::Object(body);
    let post = reqwest::Method::POST;
    let reply = answered(
        api.call(post, "/api/flux/generate", Some(&body), &headers)
            .await,
    )?;
    if !reply.is_success() {
        return Err(describe_error(&reply.body));
    }
    let id = reply.body["id"]
        .as_str()
        .ok_or("no job id in the answer")?
        .to_owned();
    finish(config, &api, &id).await
}

fn show_budget(budget: &Value) {
    if let Some(left) = budget["left"].as_f64() {
        println!(
            "Budget today: ${left:.2} left of ${:.2}.",
            budget["limit"].as_f64().unwrap_or_default()
        );
    }
}

/// A person's yes at the terminal (or `--yes`) before anything is paid.
fn ask_to_pay(cost: f64, what: &str, yes: bool) -> Result<(), String> {
    if yes {
        return Ok(());
    }
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err("not confirmed, nothing was sent: add --yes to pay without being asked".into());
    }
    print!("Pay ${cost:.3} for {what}? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        return Err("not confirmed, nothing was sent".into());
    }
    Ok(())
}

/// Follows a job to its end and answers the paths of its outputs.
async fn finish(config: &Config, api: &ApiClient, id: &str) -> Result<String, String> {
    let job = follow(api, id).await?;
    if job["status"] != "succeeded" {
        let why = describe_error(&serde_json::json!({ "error": job["error"] }));
        return Err(format!("job {id} ended {}: {why}", job["status"]));
    }
    let dir = config.data_dir.join("outputs").join(id);
    let paths: Vec<String> = job["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["name"].as_str())
        .map(|name| dir.join(name).display().to_string())
        .collect();
    Ok(paths.join("\n"))
}

/// `key=value`; a value that parses as JSON (a number, true/false) is taken as such, otherwise as text.
fn parse_param(pair: &str) -> Result<(String, Value), String> {
    let (key, value) = pair
        .split_once('=')
        .ok_or_else(|| format!("--param {pair:?}: expected key=value"))?;
    let value = serde_json::from_str::<Value>(value)
        .ok()
        .filter(|v| !v.is_string())
        .unwrap_or_else(|| Value::String(value.to_owned()));
    Ok((key.trim().to_owned(), value))
}

fn image_data_url(path: &std::path::Path) -> Result<String, String> {
    use base64::Engine;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let kind = match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "image/png",
    };
    Ok(format!(
        "data:{kind};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// Follows the job's events with a progress bar until it ends; answers the last state.
async fn follow(api: &ApiClient, id: &str) -> Result<Value, String> {
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("job {id}"));
    // No time limit of its own: a job takes what it takes, and Ctrl-C leaves it running.
    let shown = |job: &Value| {
        bar.set_position(job["progress"].as_f64().unwrap_or(0.0) as u64);
        let node = job["current_node"].as_str().unwrap_or("");
        bar.set_message(format!("{} {node}", job["status"].as_str().unwrap_or("")));
    };
    let outcome = api.follow_job(id, FOLLOW_AT_MOST, shown).await;
    bar.finish_and_clear();
    let (job, _) = outcome.map_err(|reply| reply.message())?;
    Ok(job)
}

/// How long `generate` follows a job at most: a day.
const FOLLOW_AT_MOST: Duration = Duration::from_secs(24 * 3600);
