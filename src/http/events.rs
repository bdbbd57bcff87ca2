//! `/api/jobs/{id}/events` and `/api/events`: numbered server-sent events, resumable with `Last-Event-ID`, a
//! heartbeat comment every [`HEARTBEAT_EVERY`] on a quiet stream.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::extract::Query;
use super::jobs::find;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::model::EventKind;
use crate::model::JobStatus;
use crate::store::StoredEvent;

/// How often a quiet stream gets a comment, so proxies and browsers keep it open.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// The answer for an event stream: the events, with the heartbeat.
fn event_stream(
    stream: impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT_EVERY))
        .into_response()
}

/// `GET /api/jobs/{id}/events`: the job as it is now (`event: state`), then every change until it ends.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The same as the `Last-Event-ID` header, for clients that cannot set it.
    #[param(value_type = Option<i64>, minimum = 0)]
    last_event_id: Option<String>,
}

/// Where a reconnecting client left off: `Last-Event-ID`, else `?last_event_id=`; either must be a whole number.
fn resume_from(headers: &http::HeaderMap, query: &EventsQuery) -> ApiResult<Option<i64>> {
    let number = |field: &str, text: &str| {
        text.trim()
            .parse::<i64>()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| ApiError::invalid(field, "must be a whole number, 0 or more"))
    };
    // Both are checked, so a bad one is refused even beside a good one; the header wins (EventSource sends it).
    let from_query = query
        .last_event_id
        .as_deref()
        .map(|text| number("last_event_id", text))
        .transpose()?;
    if let Some(value) = headers.get("last-event-id") {
        let text = value
            .to_str()
            .map_err(|_| ApiError::invalid("Last-Event-ID", "must be a whole number, 0 or more"))?;
        return number("Last-Event-ID", text).map(Some);
    }
    Ok(from_query)
}

/// A job event as a stream meets it: just broadcast, or read back from the store.
pub(super) enum Seen<'a> {
    Live(&'a crate::model::Job),
    Stored(&'a serde_json::Value),
}

impl Seen<'_> {
    fn is_final(&self) -> bool {
        match self {
            Self::Live(job) => job.status.is_final(),
            Self::Stored(job) => JobStatus::is_final_json(job),
        }
    }
}

impl serde::Serialize for Seen<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Live(job) => job.serialize(serializer),
            Self::Stored(job) => job.serialize(serializer),
        }
    }
}

/// What a stream sends for one event: the frames, each given the event's number, its kind and the job.
pub(super) trait Render:
    FnMut(i64, EventKind, Seen<'_>) -> Vec<Event> + Send + 'static
{
}
impl<F: FnMut(i64, EventKind, Seen<'_>) -> Vec<Event> + Send + 'static> Render for F {}

/// `/api/jobs/{id}/events`' and `/api/events`' frames: the event's number, its kind, the job as JSON.
fn numbered(id: i64, kind: EventKind, job: Seen<'_>) -> Vec<Event> {
    vec![
        Event::default()
            .id(id.to_string())
            .event(kind.as_str())
            .json_data(job)
            .unwrap_or_default(),
    ]
}

fn by_job(event: &StoredEvent) -> i64 {
    event.job_seq
}

fn by_seq(event: &StoredEvent) -> i64 {
    event.seq
}

type Sender = tokio::sync::mpsc::Sender<Event>;

/// Sends a live event's frames: answers `false` when the stream must end, because the client left or cannot keep
/// up.
fn send_live(tx: &Sender, events: Vec<Event>) -> bool {
    events.into_iter().all(|event| send_one(tx, event))
}

fn send_one(tx: &Sender, event: Event) -> bool {
    match tx.try_send(event) {
        Ok(()) => true,
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
            tracing::debug!(
                "an event stream's client stopped reading: dropped, it may resume with Last-Event-ID"
            );
            false
        }
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Sends stored events in order, numbered by `number`, at the client's pace; answers the last number sent, or
/// `None` when the stream must end: the client left, or (with `end_on_final`) the job's final state was sent.
async fn send_stored(
    tx: &Sender,
    events: Vec<StoredEvent>,
    mut last: i64,
    number: fn(&StoredEvent) -> i64,
    end_on_final: bool,
    render: &mut impl Render,
) -> Option<i64> {
    for stored in events {
        last = number(&stored);
        for event in render(last, stored.kind, Seen::Stored(&stored.job)) {
            if tx.send(event).await.is_err() {
                return None;
            }
        }
        if end_on_final && JobStatus::is_final_json(&stored.job) {
            return None;
        }
    }
    Some(last)
}

/// How many stored events one reconnect replays at most.
const REPLAY_LIMIT: u32 = 10_000;

/// `GET /api/jobs/{id}/events`: the job's changes as server-sent events, each with its number as `id:`. A client
/// that reconnects with `Last-Event-ID` gets exactly the events after it, then live ones; a new client gets the
/// current state first. The stream ends after the job's final state; a comment every 15 s keeps it open.
#[utoipa::path(get, path = "/api/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "The last event received; the stream resumes after it")),
    responses((status = 200, description = "Server-sent events: `id:` the event's number, `event:` state, progress, node, output or resubmitted, `data:` the job (Job) as JSON", content_type = "text/event-stream", body = crate::http::openapi::JobEventMessage),
        (status = 404, description = "No such job", body = crate::error::ErrorBody),
        (status = 422, description = "`last_event_id` or `Last-Event-ID` not a whole number from 0, or `last_event_id` given more than once", body = crate::error::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: http::HeaderMap,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Response> {
    // Subscribe, then read the last event's number, then the job: no change falls between what is read and what
    // is streamed (one made in between is sent again, not lost).
    let changes = state.jobs.ledger().subscribe();
    let last = (state.jobs.store().last_job_event(&id).await).map_err(ApiError::internal)?;
    let job = find(&state, &id).await?;
    let resume = resume_from(&headers, &query)?;
    Ok(follow_job(&state, changes, (last, job), resume, numbered))
}

/// A job's events after `resume` (or, without it, its state now), then live ones until its final state, each sent
/// as `render` makes it. `changes` was subscribed to, then the number of the job's `last` event read, then `job`,
/// so nothing falls between them. A `resume` past the job's last event (another server's numbers) is answered as
/// a new client is.
pub(super) fn follow_job(
    state: &AppState,
    mut changes: tokio::sync::broadcast::Receiver<crate::jobs::ledger::JobEvent>,
    (last, job): (i64, crate::model::Job),
    resume: Option<i64>,
    mut render: impl Render,
) -> Response {
    let store = state.jobs.store().clone();
    let id = job.id.clone();
    let resume = resume.filter(|after| *after <= last);
    let stream = async_stream(&state.config, state.closing.clone(), move |tx| async move {
        let replay = |after: i64| {
            let store = store.clone();
            let id = id.clone();
            async move {
                store
                    .job_events_after(&id, after, REPLAY_LIMIT)
                    .await
                    .unwrap_or_default()
            }
        };
        let mut last = match resume {
            Some(after) => {
                let Some(last) =
                    send_stored(&tx, replay(after).await, after, by_job, true, &mut render).await
                else {
                    return;
                };
                if job.status.is_final() {
                    // Nothing more will come; the final state was delivered before the reconnect.
                    return;
                }
                last
            }
            None => {
                for event in render(last, EventKind::State, Seen::Live(&job)) {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                if job.status.is_final() {
                    return;
                }
                last
            }
        };
        loop {
            match changes.recv().await {
                Ok(change) if change.job.id == id && change.job_seq > last => {
                    last = change.job_seq;
                    let seen = Seen::Live(&change.job);
                    let done = seen.is_final();
                    if !send_live(&tx, render(change.job_seq, change.kind, seen)) || done {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    // Too slow a reader: what it missed is read back from the store, in order.
                    match send_stored(&tx, replay(last).await, last, by_job, true, &mut render)
                        .await
                    {
                        Some(sent) => last = sent,
                        None => return,
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    event_stream(stream)
}

/// `GET /api/events`: every job's changes, numbered across all jobs; `Last-Event-ID` replays what was missed.
#[utoipa::path(get, path = "/api/events", tag = "jobs",
    params(EventsQuery, ("Last-Event-ID" = Option<i64>, Header, description = "The last event received; the stream resumes after it")),
    responses((status = 200, description = "Server-sent events of every job, numbered across all jobs; `data:` the job (Job) as JSON", content_type = "text/event-stream", body = crate::http::openapi::JobEventMessage),
        (status = 422, description = "`last_event_id` or `Last-Event-ID` not a whole number from 0, or `last_event_id` given more than once", body = crate::error::ErrorBody)))]
pub async fn all_events(
    State(state): State<AppState>,
    headers: http::HeaderMap,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Response> {
    let mut changes = state.jobs.ledger().subscribe();
    let store = state.jobs.store().clone();
    let resume = resume_from(&headers, &query)?;
    let stream = async_stream(&state.config, state.closing.clone(), move |tx| async move {
        let mut render = numbered;
        // A new client starts from now; a returning one from where it left off.
        let replay = |after: i64| {
            let store = store.clone();
            async move {
                store
                    .events_after(after, REPLAY_LIMIT)
                    .await
                    .unwrap_or_default()
            }
        };
        let mut last = match resume {
            Some(after) => {
                match send_stored(&tx, replay(after).await, after, by_seq, false, &mut render).await
                {
                    Some(last) => last,
                    None => return,
                }
            }
            None => store.last_event().await.unwrap_or(0),
        };
        loop {
            match changes.recv().await {
                Ok(change) if change.seq > last => {
                    last = change.seq;
                    if !send_live(
                        &tx,
                        numbered(change.seq, change.kind, Seen::Live(&change.job)),
                    ) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    match send_stored(&tx, replay(last).await, last, by_seq, false, &mut render)
                        .await
                    {
                        Some(sent) => last = sent,
                        None => return,
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Ok(event_stream(stream))
}

/// A stream fed by a task: `produce` sends items until it returns, or until `ORCH_EVENTS_MAX_SECS` has passed; the
/// client then reconnects with `Last-Event-ID`. The stream holds at most `ORCH_EVENTS_CLIENT_BUFFER` events for its
/// client: one that falls this far behind the live events (it stopped reading) is dropped rather than held in
/// memory, and comes back with `Last-Event-ID` missing nothing.
fn async_stream<F, Fut>(
    config: &crate::config::Config,
    closing: tokio_util::sync::CancellationToken,
    produce: F,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + use<F, Fut>
where
    F: FnOnce(Sender) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(config.events_client_buffer.max(1));
    let max = config.events_max;
    let producing = produce(tx);
    tokio::spawn(async move {
        let producing = async move {
            match max {
                Some(max) => {
                    let _ = tokio::time::timeout(max, producing).await;
                }
                None => producing.await,
            }
        };
        // A server told to stop ends its streams, whole: the client reconnects (to it or another instance).
        tokio::select! {
            () = producing => {}
            () = closing.cancelled() => {}
        }
    });
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A client that stops reading holds at most `ORCH_EVENTS_CLIENT_BUFFER` events (1024 by default): the next
    /// live one ends its stream (it resumes with `Last-Event-ID`), so memory does not grow with what it did not read.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped_at_the_buffer() {
        let mut settings = crate::config::Settings::defaults();
        settings.comfy_url = "http://127.0.0.1:8188".into();
        let config = settings.validate(false).expect("the defaults are valid");
        let held = config.events_client_buffer;
        assert_eq!(held, 1024);
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
        let stream = async_stream(&config, Default::default(), move |tx| async move {
            let mut sent = 0;
            while sent < 10 * held && send_one(&tx, Event::default().data("x")) {
                sent += 1;
            }
            let _ = sent_tx.send(sent);
        });
        let sent = sent_rx.await.unwrap();
        assert_eq!(sent, held);
        // What it holds is still delivered, in full, should it read again; then the stream ends.
        use futures_util::StreamExt;
        assert_eq!(stream.count().await, held);
    }

    /// A quiet stream's first bytes are the heartbeat comment, after exactly [`HEARTBEAT_EVERY`] (the clock is
    /// tokio's paused one, so the test takes no real time).
    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_gets_a_heartbeat_every_15_s() {
        let quiet = futures_util::stream::pending::<Result<Event, Infallible>>();
        let mut body = event_stream(quiet).into_body();
        let opened = tokio::time::Instant::now();
        for beat in 1..=2 {
            let frame = body.frame().await.unwrap().unwrap();
            let bytes = frame.into_data().unwrap();
            assert!(bytes.starts_with(b":"), "{bytes:?}");
            assert_eq!(opened.elapsed(), HEARTBEAT_EVERY * beat);
        }
    }
}
