//! `orchestrator doctor`: the health report, from the running server or made here when none answers.

use serde_json::Value;

use super::api;
use crate::config::Config;

/// `orchestrator doctor`: the running server's `/api/status`; when no server answers, the same report made by this
/// command itself (then a supervised ComfyUI shows as stopped: its supervisor lives in the server).
pub async fn doctor(config: &Config, json: bool) -> Result<String, String> {
    let reply = api(config).get("/api/status").await;
    let (report, note) = match reply {
        reply if reply.is_success() => (reply.body, None),
        _ => {
            let paths = crate::paths::DataPaths::new(&config.data_dir);
            // Looked at as it is: a store behind on migrations is reported, not migrated by a look.
            let url = config.database_url.expose();
            let store = crate::store::Store::open_unmigrated(url)
                .await
                .map_err(|e| {
                    format!(
                        "overall      down\ndatabase     UNREACHABLE {}: {e}{}",
                        crate::app::status::shown_database(url),
                        std::error::Error::source(&e)
                            .map(|s| format!(" ({s})"))
                            .unwrap_or_default()
                    )
                })?;
            let state = crate::app::AppState::new(config.clone(), paths, store);
            let report = crate::app::status::report(&state).await;
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
/// The report as the terminal shows it: a line per part, in the report's order.
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
    lines.push(comfy_line(comfy));
    lines.push(service_line(&report["services"]["comfy"]));
    lines.extend(models_line(comfy));
    lines.push(model_paths_line(&report["model_paths"]));
    lines.push(database_line(&report["database"]));
    lines.extend(instance_lines(&report["fleet"]));
    lines.push(flux_line(&report["external"]["flux"]));
    lines.push(v0_line(&report["external"]["v0"]));
    lines.join("\n")
}

/// ComfyUI: its state, address, version and queue.
fn comfy_line(comfy: &Value) -> String {
    let queue = &comfy["queue"];
    format!(
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
    )
}

/// How ComfyUI is run: state, backend, process and restarts.
fn service_line(service: &Value) -> String {
    format!(
        "service      {} ({} backend{}), restarts {}",
        service["status"].as_str().unwrap_or("?"),
        service["backend"].as_str().unwrap_or("?"),
        service["pid"]
            .as_u64()
            .map(|p| format!(", pid {p}"))
            .unwrap_or_default(),
        service["restarts"]
    )
}

/// The models ComfyUI lists, by folder, when it answered.
fn models_line(comfy: &Value) -> Option<String> {
    let models = comfy["models"].as_object()?;
    let counts: Vec<String> = models.iter().map(|(k, v)| format!("{k} {v}")).collect();
    Some(format!("models       {}", counts.join(", ")))
}

/// `extra_model_paths.yaml`: whether it is there and valid.
fn model_paths_line(paths: &Value) -> String {
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
    }
}

/// The store: whether it answers, its size and counts, and migrations not yet applied.
fn database_line(db: &Value) -> String {
    let behind = match (
        db["migrations_applied"].as_i64(),
        db["migrations_expected"].as_i64(),
    ) {
        (Some(applied), Some(expected)) if applied < expected => {
            format!(", BEHIND: {applied} of {expected} migrations applied")
        }
        _ => String::new(),
    };
    format!(
        "database     {} {} ({} bytes), {} jobs, {} messages{behind}",
        if db["ok"] == true { "ok" } else { "FAILING" },
        db["path"].as_str().unwrap_or("?"),
        db["size_bytes"],
        db["jobs"],
        db["messages"]
    )
}

/// One line per instance of the fleet.
fn instance_lines(fleet: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for instance in fleet["instances"].as_array().into_iter().flatten() {
        let online = instance["backends"]
            .as_array()
            .map_or(0, |b| b.iter().filter(|b| b["online"] == true).count());
        lines.push(format!(
            "instance     {}{} at {}, heartbeat {}{}, {} backend(s) online",
            instance["id"].as_str().unwrap_or("?"),
            if instance["id"] == fleet["instance"] {
                " (this one)"
            } else {
                ""
            },
            instance["url"].as_str().unwrap_or("?"),
            instance["heartbeat_at"].as_str().unwrap_or("?"),
            if instance["stale"] == true {
                " (STALE)"
            } else {
                ""
            },
            online
        ));
    }
    lines
}

/// FLUX: key, whether generation is allowed, and the day's budget left.
fn flux_line(flux: &Value) -> String {
    format!(
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
    )
}

/// v0: its status when a key is set.
fn v0_line(v0: &Value) -> String {
    format!(
        "v0           {}",
        if v0["configured"] == true {
            v0["status"].as_str().unwrap_or("?")
        } else {
            "not configured"
        }
    )
}
