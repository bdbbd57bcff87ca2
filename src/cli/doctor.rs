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
                        crate::status::shown_database(url),
                        std::error::Error::source(&e)
                            .map(|s| format!(" ({s})"))
                            .unwrap_or_default()
                    )
                })?;
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
    let behind = match (
        db["migrations_applied"].as_i64(),
        db["migrations_expected"].as_i64(),
    ) {
        (Some(applied), Some(expected)) if applied < expected => {
            format!(", BEHIND: {applied} of {expected} migrations applied")
        }
        _ => String::new(),
    };
    lines.push(format!(
        "database     {} {} ({} bytes), {} jobs, {} messages{behind}",
        if db["ok"] == true { "ok" } else { "FAILING" },
        db["path"].as_str().unwrap_or("?"),
        db["size_bytes"],
        db["jobs"],
        db["messages"]
    ));
    let fleet = &report["fleet"];
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
