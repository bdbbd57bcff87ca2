//! Terminal commands other than `serve`. Each returns the text to print, or an error message; `main` prints and
//! picks the exit code.

use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::config::{Config, ServiceBackend};
use crate::service::control::{self, ServiceControl, Step};
use crate::service::{ServiceStatus, logs};

/// `orchestrator service …`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    Install,
    Uninstall,
    Start,
    Stop,
    Status,
    Logs { lines: usize },
}

pub async fn service(
    config: &Config,
    action: ServiceAction,
    dry_run: bool,
) -> Result<String, String> {
    if let ServiceAction::Logs { lines } = action {
        let path = &config.service.log_file;
        if dry_run {
            return Ok(format!(
                "# would print the last {lines} lines of {}",
                path.display()
            ));
        }
        return logs::tail(path, lines.clamp(1, 5000))
            .map(|lines| lines.join("\n"))
            .map_err(|error| format!("cannot read ComfyUI's log {}: {error}", path.display()));
    }
    match config.service.backend {
        // ComfyUI runs inside the server's supervisor, or outside Orchestrator: the running server is asked.
        ServiceBackend::Supervised | ServiceBackend::External => {
            via_server(config, action, dry_run).await
        }
        ServiceBackend::Systemd | ServiceBackend::Windows => {
            let control = control::for_config(config);
            directly(&control, action, dry_run).await
        }
    }
}

async fn directly(
    control: &ServiceControl,
    action: ServiceAction,
    dry_run: bool,
) -> Result<String, String> {
    let plan = match action {
        ServiceAction::Install => control.install_plan().map_err(|e| e.to_string())?,
        ServiceAction::Uninstall => control.uninstall_plan(),
        ServiceAction::Start | ServiceAction::Stop | ServiceAction::Status => {
            if dry_run {
                return Ok(
                    format!("# would ask the {} backend to {action:?}", control.name())
                        .to_lowercase(),
                );
            }
            match action {
                ServiceAction::Start => control.start().await.map_err(|e| e.to_string())?,
                ServiceAction::Stop => control.stop().await.map_err(|e| e.to_string())?,
                _ => {}
            }
            return Ok(describe(&control.status().await));
        }
        ServiceAction::Logs { .. } => unreachable!("handled by the caller"),
    };
    let printed = plan
        .iter()
        .map(Step::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    if dry_run {
        return Ok(printed);
    }
    control::execute(&plan).await.map_err(|e| e.to_string())?;
    Ok(format!("{printed}\n# done"))
}

async fn via_server(
    config: &Config,
    action: ServiceAction,
    dry_run: bool,
) -> Result<String, String> {
    let (method, path) = match action {
        ServiceAction::Install | ServiceAction::Uninstall => {
            let why = match config.service.backend {
                ServiceBackend::External => {
                    "ComfyUI is run by someone else (SERVICE_BACKEND=external)"
                }
                _ => {
                    "the supervised backend needs no installation: `orchestrator serve` starts and watches ComfyUI \
                      itself; to run it as an OS service choose SERVICE_BACKEND=systemd or windows"
                }
            };
            return Ok(format!(
                "# nothing to {}: {why}",
                format!("{action:?}").to_lowercase()
            ));
        }
        ServiceAction::Start => (Method::POST, "/api/system/comfy/start"),
        ServiceAction::Stop => (Method::POST, "/api/system/comfy/stop"),
        ServiceAction::Status => (Method::GET, "/api/system/comfy/status"),
        ServiceAction::Logs { .. } => unreachable!("handled by the caller"),
    };
    let base = local_base(config);
    if dry_run {
        return Ok(format!("{method} {base}{path}"));
    }
    let (status, body) = local_api(config, method, path).await?;
    if status.is_success() {
        Ok(describe_json(&body))
    } else {
        Err(body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string()))
    }
}

/// One human line about a service.
pub fn describe(status: &ServiceStatus) -> String {
    describe_json(&serde_json::to_value(status).unwrap_or(Value::Null))
}

fn describe_json(status: &Value) -> String {
    let text = |key: &str| status[key].as_str().unwrap_or("unknown").to_owned();
    let mut line = format!("ComfyUI ({} backend): {}", text("backend"), text("status"));
    if let Some(pid) = status["pid"].as_u64() {
        line.push_str(&format!(", pid {pid}"));
    }
    if let Some(restarts) = status["restarts"].as_u64().filter(|r| *r > 0) {
        line.push_str(&format!(", {restarts} restart(s)"));
    }
    let exit = &status["last_exit"];
    if let Some(code) = exit["code"].as_i64() {
        line.push_str(&format!("; last exit: code {code}"));
    } else if let Some(signal) = exit["signal"].as_i64() {
        line.push_str(&format!("; last exit: signal {signal}"));
    }
    line
}

/// Where the local server answers (a wildcard bind is reached on loopback).
fn local_base(config: &Config) -> String {
    let mut addr = config.bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{addr}")
}

/// Calls the running server's own API.
async fn local_api(
    config: &Config,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Value), String> {
    local_api_with(config, method, path, None).await
}

async fn local_api_with(
    config: &Config,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(StatusCode, Value), String> {
    local_api_with_headers(config, method, path, body, &[]).await
}

async fn local_api_with_headers(
    config: &Config,
    method: Method,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Value), String> {
    let response = local_request_with_headers(config, method, path, body, headers).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Sends a request to the running server; the answer's body is left to the caller (it may be a stream).
async fn local_request_with_headers(
    config: &Config,
    method: Method,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let base = local_base(config);
    let client = crate::comfy::proxy::http_client(Duration::from_secs(2));
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(token) = &config.token {
        request = request.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.expose()),
        );
    }
    let request = match body {
        Some(body) => request
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .map_err(|e| e.to_string())?,
        None => request.body(Body::empty()).map_err(|e| e.to_string())?,
    };
    let unreachable = |e: &dyn std::fmt::Display| {
        format!("Orchestrator is not answering at {base} ({e}); is `orchestrator serve` running?")
    };
    tokio::time::timeout(Duration::from_secs(120), client.request(request))
        .await
        .map_err(|e| unreachable(&e))?
        .map_err(|e| unreachable(&e))
}

/// What `orchestrator generate` asks for.
pub struct GenerateRequest {
    /// `comfy` (the default) or `flux`.
    pub backend: Option<String>,
    /// The FLUX model (`flux-pro-1.1` when not given).
    pub model: Option<String>,
    /// Pay without asking (FLUX).
    pub yes: bool,
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
    let (mut status, mut answer) =
        local_api_with(config, Method::POST, "/api/jobs", Some(&body)).await?;
    // A workflow with paid API nodes: its price first, then, confirmed, the same workflow with the token.
    if status == reqwest::StatusCode::PAYMENT_REQUIRED
        && answer["error"]["details"]["confirmToken"].is_string()
    {
        let dry = &answer["error"]["details"];
        let cost = dry["estimatedCost"]["usd"].as_f64().unwrap_or_default();
        println!("Dry run: this workflow has paid API nodes. Nothing has been sent.");
        for node in dry["paidNodes"].as_array().into_iter().flatten() {
            println!(
                "  node {} {} ({}): ~${:.3}",
                node["id"].as_str().unwrap_or("?"),
                node["class_type"].as_str().unwrap_or("?"),
                node["category"].as_str().unwrap_or("?"),
                node["priceUsd"].as_f64().unwrap_or_default()
            );
        }
        show_budget(&dry["budget"]);
        ask_to_pay(cost, "this workflow", request.yes)?;
        let mut paid = body.clone();
        paid["confirmToken"] = dry["confirmToken"].clone();
        let key = uuid::Uuid::new_v4().to_string();
        (status, answer) = local_api_with_headers(
            config,
            Method::POST,
            "/api/jobs",
            Some(&paid),
            &[("idempotency-key", &key)],
        )
        .await?;
    }
    if !status.is_success() {
        return Err(describe_error(&answer));
    }
    let id = answer["id"]
        .as_str()
        .ok_or("no job id in the answer")?
        .to_owned();
    finish(config, &id).await
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
    let (status, dry) = local_api_with(
        config,
        Method::POST,
        "/api/flux/generate",
        Some(&Value::Object(body.clone())),
    )
    .await?;
    if !status.is_success() {
        return Err(describe_error(&dry));
    }
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
    let (status, answer) = local_api_with_headers(
        config,
        Method::POST,
        "/api/flux/generate",
        Some(&Value::Object(body)),
        &[("idempotency-key", &key)],
    )
    .await?;
    if !status.is_success() {
        return Err(describe_error(&answer));
    }
    let id = answer["id"]
        .as_str()
        .ok_or("no job id in the answer")?
        .to_owned();
    finish(config, &id).await
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
async fn finish(config: &Config, id: &str) -> Result<String, String> {
    let job = follow(config, id).await?;
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

/// Follows `/api/jobs/{id}/events` with a progress bar until the job ends; answers the last state.
async fn follow(config: &Config, id: &str) -> Result<Value, String> {
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("job {id}"));
    let mut last = Value::Null;
    let mut last_event: Option<String> = None;
    // A dropped stream is picked up where it broke (Last-Event-ID): nothing is shown twice or missed.
    let mut attempts = 0;
    loop {
        let path = format!("/api/jobs/{id}/events");
        let headers: Vec<(&str, &str)> = last_event
            .as_deref()
            .map(|event| vec![("last-event-id", event)])
            .unwrap_or_default();
        let response =
            match local_request_with_headers(config, Method::GET, &path, None, &headers).await {
                Ok(response) => response,
                Err(error) if attempts >= 10 => return Err(error),
                Err(_) => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
        let mut body = response.into_body();
        let mut pending = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                if let Some(event) = block.lines().find_map(|l| l.strip_prefix("id: ")) {
                    last_event = Some(event.trim().to_owned());
                }
                let Some(json) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let Ok(job) = serde_json::from_str::<Value>(json) else {
                    continue;
                };
                bar.set_position(job["progress"].as_f64().unwrap_or(0.0) as u64);
                let node = job["current_node"].as_str().unwrap_or("");
                bar.set_message(format!("{} {node}", job["status"].as_str().unwrap_or("")));
                last = job;
            }
        }
        let finished = last["status"]
            .as_str()
            .and_then(crate::jobs::model::JobStatus::parse)
            .is_some_and(crate::jobs::model::JobStatus::is_final);
        if finished || attempts >= 10 {
            break;
        }
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish_and_clear();
    if last.is_null() {
        return Err(format!("no events for job {id}"));
    }
    Ok(last)
}

/// `orchestrator doctor`: the running server's `/api/status`; when no server answers, the same report made by this
/// command itself (then a supervised ComfyUI shows as stopped: its supervisor lives in the server).
pub async fn doctor(config: &Config, json: bool) -> Result<String, String> {
    let (report, note) = match local_api_with(config, Method::GET, "/api/status", None).await {
        Ok((status, report)) if status.is_success() => (report, None),
        _ => {
            let paths = crate::paths::DataPaths::new(&config.data_dir);
            let store = crate::store::Store::open(config.database_url.expose())
                .await
                .map_err(|e| format!("cannot open the store: {e}"))?;
            let state = crate::AppState::new(config.clone(), paths, store);
            let report = crate::status::report(&state).await;
            (
                serde_json::to_value(report).map_err(|e| e.to_string())?,
                Some(
                    "(Orchestrator is not running: this report was made by the doctor command itself)",
                ),
            )
        }
    };
    let text = if json {
        serde_json::to_string_pretty(&report).unwrap_or_default()
    } else {
        describe_status(&report, note)
    };
    if report["overall"] == "down" {
        Err(text)
    } else {
        Ok(text)
    }
}

fn describe_status(report: &Value, note: Option<&str>) -> String {
    let mut lines = Vec::new();
    if let Some(note) = note {
        lines.push(note.to_owned());
    }
    lines.push(format!(
        "overall      {}",
        report["overall"].as_str().unwrap_or("?")
    ));
    for reason in report["reasons"].as_array().into_iter().flatten() {
        lines.push(format!(
            "             - {}",
            reason.as_str().unwrap_or_default()
        ));
    }
    let comfy = &report["comfy"];
    let queue = &comfy["queue"];
    lines.push(format!(
        "ComfyUI      {} at {}{}{}",
        comfy["status"].as_str().unwrap_or("?"),
        comfy["url"].as_str().unwrap_or("?"),
        comfy["version"]
            .as_str()
            .map(|v| format!(", version {v}"))
            .unwrap_or_default(),
        if queue.is_object() {
            format!(
                ", queue {} running / {} pending",
                queue["running"], queue["pending"]
            )
        } else {
            String::new()
        }
    ));
    let service = &report["services"]["comfy"];
    lines.push(format!(
        "service      {} ({} backend{}), restarts {}",
        service["status"].as_str().unwrap_or("?"),
        service["backend"].as_str().unwrap_or("?"),
        service["pid"]
            .as_u64()
            .map(|p| format!(", pid {p}"))
            .unwrap_or_default(),
        service["restarts"]
    ));
    if let Some(models) = comfy["models"].as_object() {
        let counts: Vec<String> = models.iter().map(|(k, v)| format!("{k} {v}")).collect();
        lines.push(format!("models       {}", counts.join(", ")));
    }
    let paths = &report["model_paths"];
    lines.push(
        match (
            paths["configured"].as_bool(),
            paths["exists"].as_bool(),
            paths["valid"].as_bool(),
        ) {
            (Some(false), ..) => "model paths  COMFY_DIR not set".to_owned(),
            (_, Some(false), _) => "model paths  no extra_model_paths.yaml".to_owned(),
            (_, _, Some(true)) => format!(
                "model paths  valid ({})",
                paths["path"].as_str().unwrap_or("")
            ),
            _ => format!(
                "model paths  INVALID ({}): run `orchestrator paths check`",
                paths["path"].as_str().unwrap_or("")
            ),
        },
    );
    let db = &report["database"];
    lines.push(format!(
        "database     {} {} ({} bytes), {} jobs, {} messages",
        if db["ok"] == true { "ok" } else { "FAILING" },
        db["path"].as_str().unwrap_or("?"),
        db["size_bytes"],
        db["jobs"],
        db["messages"]
    ));
    let flux = &report["external"]["flux"];
    lines.push(format!(
        "FLUX         key {}, generation {}{}",
        if flux["configured"] == true {
            "set"
        } else {
            "not set"
        },
        if flux["allowGeneration"] == true {
            "allowed"
        } else {
            "disabled"
        },
        flux["budget"]["left"]
            .as_f64()
            .map(|left| format!(", ${left:.2} left today"))
            .unwrap_or_default()
    ));
    let v0 = &report["external"]["v0"];
    lines.push(format!(
        "v0           {}",
        if v0["configured"] == true {
            v0["status"].as_str().unwrap_or("?")
        } else {
            "not configured"
        }
    ));
    lines.join("\n")
}

/// `orchestrator paths …`
pub enum PathsAction {
    Check {
        json: bool,
    },
    Init {
        base_path: Option<std::path::PathBuf>,
        create_folders: bool,
        force: bool,
    },
    Restore {
        backup: std::path::PathBuf,
    },
}

/// Works on the file directly: it is ComfyUI's, on this machine, and needs no running server.
pub fn paths(config: &Config, action: PathsAction) -> Result<String, String> {
    use crate::comfy::model_paths;
    let dir =
        config.service.comfy_dir.as_deref().ok_or(
            "COMFY_DIR is not set: it tells where ComfyUI and its extra_model_paths.yaml are",
        )?;
    let file = model_paths::file_in(dir);
    match action {
        PathsAction::Check { json } => {
            let report = model_paths::check(&file);
            let text = if json {
                serde_json::to_string_pretty(&report).unwrap_or_default()
            } else {
                describe_paths(&report)
            };
            if report.valid { Ok(text) } else { Err(text) }
        }
        PathsAction::Init {
            base_path,
            create_folders,
            force,
        } => {
            let base = base_path
                .or_else(|| config.models_dir.clone())
                .ok_or("give --base-path, or set MODELS_DIR")?;
            let created = model_paths::create_default(&file, &base, create_folders, force)
                .map_err(|e| e.to_string())?;
            let mut text = format!("wrote {}", created.path);
            if let Some(backup) = &created.backup_path {
                text.push_str(&format!("\nthe previous file is kept as {backup}"));
            }
            for folder in &created.created_folders {
                text.push_str(&format!("\ncreated {folder}"));
            }
            Ok(text)
        }
        PathsAction::Restore { backup } => {
            let backup = if backup.is_absolute() {
                backup
            } else {
                dir.join(backup)
            };
            let restored = model_paths::restore(&file, &backup).map_err(|e| e.to_string())?;
            Ok(format!(
                "restored {} from {}{}",
                restored.path,
                backup.display(),
                restored
                    .backup_path
                    .map(|b| format!(" (the replaced file is kept as {b})"))
                    .unwrap_or_default()
            ))
        }
    }
}

fn describe_paths(report: &crate::comfy::model_paths::Report) -> String {
    let mut lines = vec![format!(
        "{}: {}",
        report.path,
        match (report.exists, report.valid) {
            (false, _) => "not there (ComfyUI uses its own models folder only)",
            (true, true) => "ComfyUI can read it",
            (true, false) => "ComfyUI would NOT start with it",
        }
    )];
    for section in &report.sections {
        lines.push(format!(
            "[{}] base_path {}{}",
            section.name,
            section
                .base_path
                .as_deref()
                .unwrap_or("(none: paths are relative to ComfyUI's folder)"),
            if section.is_default {
                ", default for downloads"
            } else {
                ""
            }
        ));
        for (key, folder) in &section.folders {
            for (path, exists) in folder.paths.iter().zip(&folder.exist) {
                let state = if *exists { "" } else { "  (missing)" };
                lines.push(format!("  {key:<16} {path}{state}"));
            }
            lines.push(format!("  {:<16} {} file(s)", "", folder.files));
        }
    }
    for problem in &report.problems {
        let place = problem
            .line
            .map(|l| format!(" (line {l}, column {})", problem.column.unwrap_or(1)))
            .unwrap_or_default();
        let severity = match problem.severity {
            crate::comfy::model_paths::Severity::Error => "error",
            crate::comfy::model_paths::Severity::Warning => "warning",
        };
        lines.push(format!("{severity}: {}{place}", problem.message));
    }
    lines.join("\n")
}

/// `orchestrator jobs …`
pub enum JobsAction {
    List { status: Option<String>, limit: u32 },
    Show { id: String },
    Cancel { id: String },
}

pub async fn jobs(config: &Config, action: JobsAction) -> Result<String, String> {
    let (method, path) = match &action {
        JobsAction::List { status, limit } => {
            let status = status
                .as_deref()
                .map(|s| format!("&status={s}"))
                .unwrap_or_default();
            (Method::GET, format!("/api/jobs?limit={limit}{status}"))
        }
        JobsAction::Show { id } => (Method::GET, format!("/api/jobs/{id}")),
        JobsAction::Cancel { id } => (Method::POST, format!("/api/jobs/{id}/cancel")),
    };
    let (status, answer) = local_api_with(config, method, &path, None).await?;
    if !status.is_success() {
        return Err(describe_error(&answer));
    }
    Ok(match action {
        JobsAction::List { .. } => {
            let mut lines = vec![format!(
                "{:<36}  {:<15} {:>5}  {:<10} {}",
                "ID", "STATUS", "%", "TEMPLATE", "CREATED"
            )];
            for job in answer["jobs"].as_array().into_iter().flatten() {
                lines.push(format!(
                    "{:<36}  {:<15} {:>5.0}  {:<10} {}",
                    job["id"].as_str().unwrap_or(""),
                    job["status"].as_str().unwrap_or(""),
                    job["progress"].as_f64().unwrap_or(0.0),
                    job["template"].as_str().unwrap_or("-"),
                    job["created_at"].as_str().unwrap_or("")
                ));
            }
            lines.join("\n")
        }
        _ => serde_json::to_string_pretty(&answer).unwrap_or_default(),
    })
}

fn describe_error(answer: &Value) -> String {
    let error = &answer["error"];
    let mut text = error["message"].as_str().unwrap_or("failed").to_owned();
    if let Some(fields) = error["details"]["fields"].as_object() {
        for (field, problem) in fields {
            text.push_str(&format!("\n  {field}: {}", problem.as_str().unwrap_or("")));
        }
    }
    text
}
