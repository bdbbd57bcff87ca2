//! The aggregated health report: every probe runs at once under its own time limit, so the answer comes within
//! [`ANSWER_WITHIN`] whatever hangs. `GET /api/status` (and its parts), the diagnostics page and `orchestrator
//! doctor` all show this one report.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::app::AppState;
use crate::service::{ServiceControl, ServiceState, ServiceStatus};

/// One probe's budget.
pub const PROBE_WITHIN: Duration = Duration::from_secs(2);
/// The whole report's budget.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(2500);
/// Paid APIs are asked at most this often: the panel refreshes every 10 s.
const EXTERNAL_FRESH_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = StatusReport)]
pub struct Report {
    /// `healthy`, `degraded` or `down`.
    #[schema(value_type = String, example = "healthy")]
    pub overall: &'static str,
    /// Why it is not healthy, in words.
    pub reasons: Vec<String>,
    pub services: Services,
    pub comfy: Comfy,
    pub database: Database,
    pub fleet: Fleet,
    /// `flux` and `v0`: whether each key is set and works.
    #[schema(value_type = Object)]
    pub external: Value,
    /// The `extra_model_paths.yaml` check, or why there is none.
    #[schema(value_type = Object)]
    pub model_paths: Value,
    pub checked_at: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Services {
    pub comfy: ServiceStatus,
    /// `service` when Orchestrator runs under a service manager, `dev` when started by hand.
    #[schema(value_type = String)]
    pub panel: &'static str,
    /// Jobs are followed inside the server process; there is no separate worker.
    #[schema(value_type = String)]
    pub worker: &'static str,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ComfyStatus)]
pub struct Comfy {
    pub url: String,
    /// `online`, `offline` or `unresponsive` (it accepted the connection and did not answer in time).
    #[schema(value_type = String)]
    pub status: &'static str,
    pub online: bool,
    pub version: Option<String>,
    pub python: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub devices: Vec<Value>,
    pub ram_total: Option<u64>,
    pub ram_free: Option<u64>,
    pub queue: Option<Queue>,
    /// Model files per folder, as ComfyUI lists them.
    #[schema(value_type = Option<Object>)]
    pub models: Option<Value>,
    /// Where its paid API nodes call Comfy.org (its `--comfy-api-base`, from `/system_stats`), when it answered.
    pub comfy_org: Option<ComfyOrgUse>,
}

/// Whether a ComfyUI's API nodes go through Orchestrator's Comfy.org egress.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ComfyOrgUse {
    /// Its `--comfy-api-base`; `null`: Comfy.org's own (`https://api.comfy.org`).
    pub api_base: Option<String>,
    /// Whether that is an Orchestrator's egress: if not, its paid nodes hold no key Comfy.org takes and fail.
    pub uses_egress: bool,
    /// The `--comfy-api-base` this Orchestrator's egress is reached at.
    pub egress_url: String,
}

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Queue {
    pub running: usize,
    pub pending: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Database {
    pub ok: bool,
    pub path: String,
    pub size_bytes: u64,
    pub jobs: Option<i64>,
    pub messages: Option<i64>,
    /// Migrations the store has applied, and how many this Orchestrator has; fewer applied: the store is behind.
    pub migrations_applied: Option<i64>,
    pub migrations_expected: Option<i64>,
    pub error: Option<String>,
}

/// The Orchestrators on this store, as their heartbeats say (one, on SQLite).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Fleet {
    /// This instance's name (`ORCH_INSTANCE_ID`).
    pub instance: String,
    /// How long a claim lasts unrenewed, in seconds (`FLEET_LEASE_SECS`).
    pub lease_secs: u64,
    pub instances: Vec<FleetInstance>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FleetInstance {
    #[serde(flatten)]
    pub instance: crate::store::Instance,
    /// Its last heartbeat is older than a lease: stopped, or cut off from the store.
    pub stale: bool,
}

/// Remembers the last look at the paid APIs.
#[derive(Default)]
pub struct StatusCache {
    external: Mutex<Option<(Instant, Value)>>,
}

/// The whole report.
pub async fn report(state: &AppState) -> Report {
    let (services, comfy, database, fleet, external, model_paths) = tokio::join!(
        within(services(state), || Services {
            comfy: ServiceStatus::simple(state.service.name(), ServiceState::Unknown),
            panel: panel_mode(),
            worker: "in_process",
        }),
        comfy(state),
        within(database(state), || Database {
            ok: false,
            path: database_path(state),
            size_bytes: 0,
            jobs: None,
            messages: None,
            migrations_applied: None,
            migrations_expected: None,
            error: Some("the store did not answer in time".into()),
        }),
        within(fleet(state), || Fleet {
            instance: state.config.fleet.instance_id.clone(),
            lease_secs: state.config.fleet.lease.as_secs(),
            instances: Vec::new(),
        }),
        within(
            external(state),
            || json!({ "error": "the check did not finish in time" })
        ),
        within(
            model_paths(state),
            || json!({ "configured": true, "error": "the check did not finish in time" })
        ),
    );
    let mut reasons = Vec::new();
    if !comfy.online {
        reasons.push(format!("ComfyUI at {} is {}", comfy.url, comfy.status));
    }
    if !database.ok {
        reasons.push("the database does not answer".to_owned());
    }
    if let Some(usage) = &comfy.comfy_org
        && !usage.uses_egress
        && state.config.comfy_org.api_key.is_some()
    {
        reasons.push(format!(
            "ComfyUI's paid API nodes do not call Orchestrator's Comfy.org egress, so they fail: start ComfyUI with --comfy-api-base {}",
            usage.egress_url
        ));
    }
    if let (Some(applied), Some(expected)) =
        (database.migrations_applied, database.migrations_expected)
        && applied < expected
    {
        reasons.push(format!(
            "the database is behind: {applied} of {expected} migrations applied (starting Orchestrator applies them)"
        ));
    }
    if services.comfy.status == ServiceState::CrashLooping {
        reasons.push("ComfyUI keeps crashing at start-up".to_owned());
    }
    if model_paths["valid"] == false {
        reasons.push("ComfyUI's extra_model_paths.yaml has errors".to_owned());
    }
    if external["v0"]["status"] == "invalid" {
        reasons.push("the v0 key is refused".to_owned());
    }
    if external["flux"]["reachable"] == false {
        reasons.push("BFL does not accept the key or does not answer".to_owned());
    }
    let overall = if !comfy.online || !database.ok {
        "down"
    } else if reasons.is_empty() {
        "healthy"
    } else {
        "degraded"
    };
    Report {
        overall,
        reasons,
        services,
        comfy,
        fleet,
        database,
        external,
        model_paths,
        checked_at: crate::clock::now(),
    }
}

async fn within<T>(probe: impl Future<Output = T>, late: impl FnOnce() -> T) -> T {
    tokio::time::timeout(PROBE_WITHIN, probe)
        .await
        .unwrap_or_else(|_| late())
}

fn panel_mode() -> &'static str {
    // systemd sets INVOCATION_ID for its services; the Windows service host sets this one itself.
    if std::env::var_os("INVOCATION_ID").is_some()
        || std::env::var_os("ORCHESTRATOR_SERVICE").is_some()
    {
        "service"
    } else {
        "dev"
    }
}

pub async fn services(state: &AppState) -> Services {
    Services {
        comfy: service_status(state).await,
        panel: panel_mode(),
        worker: "in_process",
    }
}

/// The ComfyUI service's status; for an external ComfyUI, its health decides.
pub async fn service_status(state: &AppState) -> ServiceStatus {
    let mut status = state.service.status().await;
    if matches!(*state.service, ServiceControl::External) {
        status.status = match state.gateway.probe(PROBE_WITHIN).await {
            true => ServiceState::Running,
            false => ServiceState::Stopped,
        };
    } else if status.status != ServiceState::Running && state.gateway.probe(PROBE_WITHIN).await {
        // Not ours, but a ComfyUI answers where ours would: report the truth instead of a "stopped" ghost.
        status.status = ServiceState::Running;
        status.adopted = true;
    }
    status
}

/// ComfyUI's health, version, devices, queue and model counts, each asked at once.
pub async fn comfy(state: &AppState) -> Comfy {
    let gateway = &state.gateway;
    let url = gateway.backend().origin();
    let stats = tokio::time::timeout(PROBE_WITHIN, gateway.system_stats());
    let queue = tokio::time::timeout(PROBE_WITHIN, gateway.queue());
    let models = tokio::time::timeout(PROBE_WITHIN, state.models.get(gateway, false));
    let (stats, queue, models) = tokio::join!(stats, queue, models);
    let (status, stats) = match stats {
        Ok(Ok(stats)) => ("online", Some(stats)),
        Ok(Err(crate::comfy::error::ComfyError::Timeout { .. })) | Err(_) => ("unresponsive", None),
        Ok(Err(_)) => ("offline", None),
    };
    let stats = stats.unwrap_or(Value::Null);
    let queue = queue.ok().and_then(Result::ok).map(|q| Queue {
        running: q.running.len(),
        pending: q.pending.len(),
    });
    let models = models.ok().and_then(Result::ok).map(|lists| {
        let value = serde_json::to_value(lists.as_ref()).unwrap_or(Value::Null);
        let counts: serde_json::Map<String, Value> = value
            .as_object()
            .map(|folders| {
                folders
                    .iter()
                    .map(|(folder, files)| {
                        (folder.clone(), json!(files.as_array().map_or(0, Vec::len)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Value::Object(counts)
    });
    Comfy {
        url,
        status,
        online: status == "online",
        version: stats["system"]["comfyui_version"]
            .as_str()
            .map(str::to_owned),
        python: stats["system"]["python_version"]
            .as_str()
            .map(|v| v.split_whitespace().next().unwrap_or(v).to_owned()),
        devices: stats["devices"].as_array().cloned().unwrap_or_default(),
        ram_total: stats["system"]["ram_total"].as_u64(),
        ram_free: stats["system"]["ram_free"].as_u64(),
        queue,
        models,
        comfy_org: stats["system"]["argv"].as_array().map(|argv| {
            let argv: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
            let api_base = crate::comfy::api::comfy_api_base(&argv);
            ComfyOrgUse {
                uses_egress: api_base
                    .as_deref()
                    .is_some_and(crate::comfy::api::is_egress),
                api_base,
                egress_url: state.config.comfy_org_egress_url(),
            }
        }),
    }
}

/// Where the store is: the SQLite file, or the PostgreSQL server and database (never its password).
fn database_path(state: &AppState) -> String {
    shown_database(state.config.database_url.expose())
}

/// The store's URL as diagnostics show it: a SQLite file's path, a PostgreSQL URL without its password.
pub fn shown_database(url: &str) -> String {
    if crate::config::Engine::of_url(url) == Some(crate::config::Engine::Postgres) {
        return match reqwest::Url::parse(url) {
            Ok(mut url) => {
                let _ = url.set_password(None);
                // The query may carry a password too (`?password=`).
                url.set_query(None);
                url.to_string()
            }
            Err(_) => "postgres://".to_owned(),
        };
    }
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url)
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned()
}

pub async fn database(state: &AppState) -> Database {
    let path = database_path(state);
    let file_size = || {
        ["", "-wal"]
            .iter()
            .filter_map(|suffix| std::fs::metadata(format!("{path}{suffix}")).ok())
            .map(|m| m.len())
            .sum()
    };
    let migrations = state.store.migrations().await.ok();
    match state.store.stats().await {
        Ok(stats) => Database {
            ok: true,
            size_bytes: stats.size_bytes.unwrap_or_else(file_size),
            path,
            jobs: Some(stats.jobs),
            messages: Some(stats.messages),
            migrations_applied: migrations.map(|(applied, _)| applied),
            migrations_expected: migrations.map(|(_, expected)| expected),
            error: None,
        },
        Err(error) => Database {
            ok: false,
            size_bytes: file_size(),
            path,
            jobs: None,
            messages: None,
            migrations_applied: None,
            migrations_expected: None,
            error: Some(error.to_string()),
        },
    }
}

/// The fleet's instances with their heartbeats.
pub async fn fleet(state: &AppState) -> Fleet {
    let lease = state.config.fleet.lease;
    let instances = state
        .store
        .instances()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|instance| FleetInstance {
            stale: instance.is_stale(lease),
            instance,
        })
        .collect();
    Fleet {
        instance: state.config.fleet.instance_id.clone(),
        lease_secs: lease.as_secs(),
        instances,
    }
}

/// FLUX (key set, allowed, reachable, budget) and v0 (key valid): the remote calls are cached for a minute.
pub async fn external(state: &AppState) -> Value {
    let budget = state.flux.budget().await.ok();
    let mut cache = state.status_cache.external.lock().await;
    let remote = match &*cache {
        Some((at, value)) if at.elapsed() < EXTERNAL_FRESH_FOR => value.clone(),
        _ => {
            let flux = async {
                if !state.flux.is_configured() {
                    return json!({ "reachable": null });
                }
                match state.flux.client().credits().await {
                    Ok(credits) => json!({ "reachable": true, "credits": credits }),
                    Err(why) => json!({ "reachable": false, "error": why }),
                }
            };
            let (flux, v0) = tokio::join!(flux, state.v0.validate());
            let value = json!({ "flux": flux, "v0": v0 });
            *cache = Some((Instant::now(), value.clone()));
            value
        }
    };
    json!({
        "flux": {
            "configured": state.flux.is_configured(),
            "allowGeneration": state.config.flux.allow_generation,
            "baseUrl": state.config.flux.base_url,
            "reachable": remote["flux"]["reachable"],
            "credits": remote["flux"]["credits"],
            "error": remote["flux"]["error"],
            "budget": budget,
        },
        "v0": {
            "configured": state.v0.is_configured(),
            "status": remote["v0"]["status"],
            "message": remote["v0"]["message"],
        },
    })
}

/// `extra_model_paths.yaml` in brief; `configured: false` without COMFY_DIR.
pub async fn model_paths(state: &AppState) -> Value {
    let Some(dir) = state.config.service.comfy_dir.clone() else {
        return json!({ "configured": false });
    };
    let file = crate::comfy::model_paths::file_in(&dir);
    let report = tokio::task::spawn_blocking(move || crate::comfy::model_paths::check(&file)).await;
    match report {
        Ok(report) => json!({
            "configured": true,
            "path": report.path,
            "exists": report.exists,
            "valid": report.valid,
            "sections": report.sections.len(),
            "counts": report.counts,
            "problems": report.problems,
        }),
        Err(error) => json!({ "configured": true, "error": error.to_string() }),
    }
}
