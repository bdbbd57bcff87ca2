//! Orchestrator's jobs and assets in the Comfy API v2's shapes (`Job`, `Output`, `Progress`, `Asset`).

use serde_json::{Value, json};

use crate::assets::output_asset_id;
use crate::model::{Job, JobStatus, OutputFile};
use crate::store::AssetRecord;

/// Orchestrator keeps jobs, outputs and assets until they are deleted: the deadline the contract requires is the
/// last representable instant, and content URLs are not signed, so they do not expire either.
pub const NEVER: &str = "9999-12-31T23:59:59Z";

/// A job's v2 status. A job waiting for ComfyUI, for a person's confirmation or in ComfyUI's queue is `queued`; one
/// whose backend lost it, or whose paid outcome is for a person to check, has `failed` (its `error` says which).
pub fn status(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued | JobStatus::Submitted | JobStatus::AwaitingConfirmation => "queued",
        JobStatus::Running => "running",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Cancelled => "canceled",
        JobStatus::Failed | JobStatus::BackendLost | JobStatus::NeedsReconcile => "failed",
    }
}

/// Whether a v2 status never changes again.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "canceled" | "failed" | "expired")
}

/// The labels a job was submitted with through v2 (`{}` for any other job).
pub fn metadata(job: &Job) -> Value {
    match &job.params["metadata"] {
        Value::Object(labels) if job.template.is_none() => Value::Object(labels.clone()),
        _ => json!({}),
    }
}

/// The latest progress of a running job: the overall fraction and the node it is at.
pub fn progress(job: &Job) -> Option<Value> {
    if job.status != JobStatus::Running {
        return None;
    }
    // The follower records the current node as "<id> <class>".
    let (node, class) = match job.current_node.as_deref() {
        Some(label) => match label.split_once(' ') {
            Some((id, class)) => (Some(id), Some(class)),
            None => (Some(label), None),
        },
        None => (None, None),
    };
    let value = (job.progress / 100.0).clamp(0.0, 1.0);
    Some(json!({
        "value": value,
        "nodes_done": 0,
        "nodes_total": 0,
        "current_node": node,
        "current_node_class": class,
        "step": null,
        "steps": null,
        "message": class.map(|c| format!("{c} {:.0}%", value * 100.0)),
    }))
}

fn error(job: &Job) -> Value {
    let Some(error) = &job.error else {
        return Value::Null;
    };
    if !status(job.status).eq("failed") {
        return Value::Null;
    }
    let details = &error["details"];
    let traceback = match &details["traceback"] {
        Value::Array(lines) => Some(
            lines
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(""),
        ),
        Value::String(text) => Some(text.clone()),
        _ => None,
    };
    json!({
        "code": error["code"].as_str().unwrap_or("internal"),
        "message": error["message"].as_str().unwrap_or_default(),
        "node_id": details["node_id"].as_str(),
        "class_type": details["node_type"].as_str(),
        "traceback": traceback,
    })
}

/// An output's kind, from its content type.
fn kind(content_type: &str) -> &'static str {
    match content_type.split('/').next().unwrap_or_default() {
        "image" => "image",
        "video" => "video",
        "audio" => "audio",
        "text" => "text",
        _ => "file",
    }
}

fn milliseconds(from: &str, to: Option<&str>) -> Value {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    match (parse(from), to.and_then(parse)) {
        (Some(from), Some(to)) => json!((to - from).num_milliseconds().max(0)),
        _ => Value::Null,
    }
}

/// The n-th output of a job, as the job lists it.
pub fn output(job: &Job, index: usize, file: &OutputFile, base: &str) -> Value {
    let id = output_asset_id(&job.id, index);
    json!({
        "node_id": file.node_id.as_deref().unwrap_or_default(),
        "name": file.name,
        "type": kind(&file.content_type),
        "content_type": file.content_type,
        "size_bytes": file.size,
        "id": id,
        "hash": null,
        "url": format!("{base}/api/v2/assets/{id}/content"),
        "url_expires_at": NEVER,
        "job_id": job.id,
    })
}

/// A job; `canceling` in place of its status when a cancel was asked for and the run has not stopped yet.
pub fn job(job: &Job, base: &str, canceling: bool) -> Value {
    let mut status = status(job.status);
    if canceling && !is_terminal(status) {
        status = "canceling";
    }
    let outputs: Vec<Value> = job
        .outputs
        .iter()
        .enumerate()
        .map(|(index, file)| output(job, index, file, base))
        .collect();
    let queue_end = job.started_at.as_deref().or(job.finished_at.as_deref());
    json!({
        "id": job.id,
        "status": status,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.finished_at,
        "expires_at": NEVER,
        "queue_position": null,
        "progress": progress(job),
        "outputs": outputs,
        "error": error(job),
        "metrics": {
            "queue_ms": milliseconds(&job.created_at, queue_end),
            "execution_ms": job.started_at.as_deref().map_or(Value::Null, |s| milliseconds(s, job.finished_at.as_deref())),
        },
        "metadata": metadata(job),
        "urls": {
            "self": format!("/api/v2/jobs/{}", job.id),
            "events": format!("/api/v2/jobs/{}/events", job.id),
            "cancel": format!("/api/v2/jobs/{}/cancel", job.id),
        },
    })
}

/// An uploaded asset; `created_new` on the answers that make one.
pub fn uploaded(record: &AssetRecord, base: &str, created_new: Option<bool>) -> Value {
    let mut asset = json!({
        "id": record.id,
        "hash": record.hash,
        "size_bytes": record.size_bytes,
        "content_type": record.content_type,
        "file_path": record.file_path,
        "created_at": record.created_at,
        "url": format!("{base}/api/v2/assets/{}/content", record.id),
        "url_expires_at": NEVER,
        "expires_at": null,
        "tags": record.tags,
    });
    if let Some(created_new) = created_new {
        asset["created_new"] = json!(created_new);
    }
    asset
}

/// A job's output as an asset.
pub fn output_asset(job: &Job, index: usize, file: &OutputFile, base: &str) -> Value {
    let id = output_asset_id(&job.id, index);
    json!({
        "id": id,
        "hash": null,
        "size_bytes": file.size,
        "content_type": file.content_type,
        "file_path": file.name,
        "created_at": job.finished_at.as_deref().unwrap_or(&job.created_at),
        "url": format!("{base}/api/v2/assets/{id}/content"),
        "url_expires_at": NEVER,
        "expires_at": null,
        "job_id": job.id,
    })
}
