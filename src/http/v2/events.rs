//! `GET /api/v2/jobs/{id}/events`: a job's live state as the contract's server-sent events (`status`, `progress`,
//! `preview`, `output`, `log`), made from the same numbered job events as `/api/jobs/{id}/events`.
//!
//! Additive to the contract, which has no cursor: each frame carries an `id:`. One job event may make several
//! frames (a run that succeeded: each `output`, then `status`); the last frame of an event has the event's number
//! (`12`), the others the number and their place (`12.0`, `12.1`). A client that comes back with `Last-Event-ID`
//! gets exactly the frames after that one; a client that ignores ids sees the contract's stream.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::response::sse::Event;
use http::HeaderMap;
use serde_json::{Value, json};

use super::render;
use super::{V2Error, V2Result, base};
use crate::app::AppState;
use crate::http::events::{Seen, follow_job};
use crate::jobs::ledger::preview::Preview;
use crate::model::{EventKind, Job, JobStatus};

/// Where a client left off: after event `n` (`n`), or after frame `k` of event `n` (`n.k`).
fn resume_from(headers: &HeaderMap) -> V2Result<Option<(i64, Option<usize>)>> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let bad = || V2Error::invalid("Last-Event-ID must be an event id this stream sent (n or n.k)");
    let text = value.to_str().map_err(|_| bad())?.trim();
    let (event, frame) = match text.split_once('.') {
        Some((event, frame)) => (event, Some(frame.parse::<usize>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let event = event
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(bad)?;
    Ok(Some((event, frame)))
}

fn frame(name: &str, data: &Value) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_default()
}

/// The frames of one job event, in order, without ids; `preview`: the job's newest preview image, if it has one.
fn frames(kind: EventKind, job: &Job, base: &str, preview: Option<Preview>) -> Vec<Event> {
    let status = render::status(job.status);
    let progress = render::progress(job);
    if kind == EventKind::Preview {
        // The contract's frame carries the image: the newest, which the event says is there (none once the job
        // ended, as for a stored event replayed later).
        return preview
            .map(|preview| {
                use base64::Engine as _;
                let data = base64::engine::general_purpose::STANDARD.encode(&preview.bytes);
                let node = job.current_node.as_deref().unwrap_or_default();
                frame(
                    "preview",
                    &json!({ "node_id": node, "content_type": preview.content_type, "data_base64": data }),
                )
            })
            .into_iter()
            .collect();
    }
    if kind == EventKind::Progress {
        return progress
            .map(|p| frame("progress", &p))
            .into_iter()
            .collect();
    }
    let mut frames = Vec::new();
    if kind == EventKind::Resubmitted {
        let message = "its ComfyUI went away before the job started: it was sent to another";
        frames.push(frame(
            "log",
            &json!({ "level": "warning", "message": message }),
        ));
    }
    if job.status == JobStatus::Succeeded {
        for (index, file) in job.outputs.iter().enumerate() {
            frames.push(frame("output", &render::output(job, index, file, base)));
        }
    }
    if status == "failed"
        && let Some(message) = job.error.as_ref().and_then(|e| e["message"].as_str())
    {
        frames.push(frame(
            "log",
            &json!({ "level": "error", "message": message }),
        ));
    }
    frames.push(frame(
        "status",
        &json!({ "status": status, "queue_position": null }),
    ));
    if let Some(progress) = progress {
        frames.push(frame("progress", &progress));
    }
    frames
}

/// `GET /api/v2/jobs/{id}/events`: on connect the job's status and latest progress (and its outputs, once it
/// succeeded), then every change; the stream ends after the terminal `status`.
#[utoipa::path(get, path = "/api/v2/jobs/{id}/events", tag = "v2",
    params(("id" = String, Path, description = "The job's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last frame's `id:`; the stream resumes after it")),
    responses((status = 200, description = "Server-sent events: `event:` status, progress, output or log; `data:` StatusEvent, Progress, Output or LogEvent; `id:` the frame's place", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_request`: `Last-Event-ID` is not an id this stream sends", body = crate::error::ErrorBody),
        (status = 404, description = "`not_found`", body = crate::error::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> V2Result<Response> {
    // Subscribed, then the last event's number read, then the job, so no change falls between them.
    let changes = state.jobs.ledger().subscribe();
    let last = state
        .jobs
        .store()
        .last_job_event(&id)
        .await
        .map_err(V2Error::internal)?;
    let job = super::jobs::find(&state, &id).await?;
    let resume = resume_from(&headers)?;
    // Part-way through an event: that event is read again, and its frames up to the client's are left out.
    let mut skip = resume.and_then(|(event, frame)| frame.map(|k| (event, k)));
    let after = resume.map(|(event, frame)| if frame.is_some() { event - 1 } else { event });
    let base = base(&headers);
    let jobs = state.jobs.clone();
    let render = move |seq: i64, kind: EventKind, seen: Seen<'_>| {
        let stored;
        let job = match seen {
            Seen::Live(job) => job,
            Seen::Stored(value) => match serde_json::from_value::<Job>(value.clone()) {
                Ok(job) => {
                    stored = job;
                    &stored
                }
                Err(_) => return Vec::new(),
            },
        };
        let preview = (kind == EventKind::Preview)
            .then(|| jobs.ledger().preview(&job.id))
            .flatten();
        let frames = frames(kind, job, &base, preview);
        let count = frames.len();
        let sent_already = match skip.take() {
            Some((event, k)) if event == seq => k + 1,
            _ => 0,
        };
        frames
            .into_iter()
            .enumerate()
            .skip(sent_already)
            .map(|(k, frame)| match k + 1 == count {
                true => frame.id(seq.to_string()),
                false => frame.id(format!("{seq}.{k}")),
            })
            .collect()
    };
    Ok(follow_job(&state, changes, (last, job), after, render))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_event_id_is_an_event_or_a_frame_of_one() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("last-event-id", value.parse().unwrap());
            resume_from(&headers).map_err(|e| e.code)
        };
        assert_eq!(with("12").unwrap(), Some((12, None)));
        assert_eq!(with("12.1").unwrap(), Some((12, Some(1))));
        assert!(with("x").is_err());
        assert!(with("-1").is_err());
        assert!(with("3.x").is_err());
        assert_eq!(resume_from(&HeaderMap::new()).unwrap(), None);
    }
}
