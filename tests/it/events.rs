//! Rejoinable progress: numbered server-sent events, `Last-Event-ID`, coalesced progress.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::fake_comfy::FakeComfy;

use crate::support::TestApp;

/// One parsed server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: i64,
    kind: String,
    data: Value,
    at: Instant,
}

/// Reads events from `path` until `stop` says so or the stream ends.
async fn read_events(
    app: &TestApp,
    path: &str,
    last_event_id: Option<i64>,
    mut stop: impl FnMut(&[Sse]) -> bool,
) -> Vec<Sse> {
    let last_event_id = last_event_id.map(|id| id.to_string());
    let within = Some(Duration::from_secs(30));
    let mut stream = app
        .api()
        .events(path, last_event_id.as_deref(), within)
        .await
        .expect("the stream opens");
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        let Some(id) = event.id.as_deref().and_then(|id| id.trim().parse().ok()) else {
            continue;
        };
        events.push(Sse {
            id,
            kind: event.kind.clone().unwrap_or_default(),
            data: event.json().unwrap_or(Value::Null),
            at: Instant::now(),
        });
        if stop(&events) {
            return events;
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_gets_every_missed_event_exactly_once_and_progress_is_coalesced() {
    let fake = FakeComfy::start_with_models(&[("checkpoints", "sd_xl_base_1.0.safetensors")]).await;
    fake.set_progress_steps(1000);
    let app = TestApp::spawn(&fake.url()).await;
    let created: Value = app
        .http
        .post(app.url("/api/jobs"))
        .json(
            &json!({ "template": "sdxl-t2i", "params": { "prompt": "a long run", "steps": 100 } }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/api/jobs/{id}/events");

    // The first connection reads three events and hangs up.
    let first = read_events(&app, &path, None, |events| events.len() == 3).await;
    assert_eq!(first.len(), 3, "{first:?}");
    let left_off = first.last().unwrap().id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reconnected = Instant::now();
    let rest = read_events(&app, &path, Some(left_off), |_| false).await;
    let gap = rest.first().map(|e| e.at.duration_since(reconnected));
    assert!(!rest.is_empty());
    assert_eq!(
        rest.last().unwrap().data["status"],
        "succeeded",
        "the stream ends with the final state"
    );

    // Every event after the one the client had, each once, in order.
    let ids: Vec<i64> = rest.iter().map(|e| e.id).collect();
    let expected: Vec<i64> = (left_off + 1..=left_off + ids.len() as i64).collect();
    assert_eq!(
        ids, expected,
        "missed events replayed exactly once, then live ones"
    );
    let all = read_events(&app, &path, Some(0), |_| false).await;
    assert_eq!(
        all.last().unwrap().id,
        *ids.last().unwrap(),
        "nothing was left out"
    );

    // 1,000 sampler steps became a handful of progress events: at most ~4 a second while it ran.
    let progress: Vec<&Sse> = all.iter().filter(|e| e.kind == "progress").collect();
    let running_ms = {
        let started = all
            .iter()
            .find(|e| e.data["status"] == "running")
            .map(|e| e.data["started_at"].clone());
        let finished = all.last().unwrap().data["finished_at"].clone();
        let parse =
            |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default()).ok();
        match (started.as_ref().and_then(parse), parse(&finished)) {
            (Some(a), Some(b)) => (b - a).num_milliseconds().max(1),
            _ => 1000,
        }
    };
    let allowed = (running_ms as f64 / 1000.0 * 4.0).ceil() as usize + 2;
    assert!(
        progress.len() <= allowed,
        "{} progress events in {running_ms} ms (at most {allowed})",
        progress.len()
    );
    eprintln!(
        "rejoin: first event {gap:?} after reconnecting; {} progress events for 1,000 steps over {running_ms} ms",
        progress.len()
    );

    // The global stream numbers every job's events and replays them too.
    let global = read_events(&app, "/api/events", Some(0), |events| {
        events.iter().any(|e| e.data["status"] == "succeeded")
    })
    .await;
    assert!(global.windows(2).all(|w| w[0].id < w[1].id));
    assert!(global.iter().all(|e| e.data["id"] == id.as_str()));
}

/// With `ORCH_EVENTS_MAX_SECS`, a stream ends after that long (a proxy in front would cut it anyway); the client
/// comes back with `Last-Event-ID` and gets what happened meanwhile, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_after_its_longest_time_and_resumes_where_it_left_off() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn_with(&fake.url(), |s| s.events_max_secs = "1".into()).await;
    let started = Instant::now();
    let first = read_events(&app, "/api/events", Some(0), |_| false).await;
    let lasted = started.elapsed();
    assert!(first.is_empty(), "nothing happened yet: {first:?}");
    assert!(
        lasted >= Duration::from_millis(900),
        "ended after {lasted:?}"
    );
    let path = app
        .run_workflow(testkit::fake_comfy::no_model_workflow())
        .await;
    let job = path.trim_start_matches("/api/jobs/");
    let missed = read_events(&app, "/api/events", Some(0), |_| false).await;
    assert!(
        missed
            .iter()
            .any(|e| e.data["id"] == job && e.data["status"] == "succeeded"),
        "{missed:?}"
    );
    let last = missed.last().unwrap().id;
    let again = read_events(&app, "/api/events", Some(last), |_| false).await;
    assert!(again.is_empty(), "nothing twice: {again:?}");
}

/// 200 clients follow `/api/events` while jobs run, beside one that never reads: each of the 200 gets every
/// event, in order and without a gap, and the one that stalls does not hold them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watchers_each_get_every_event_in_order() {
    use tokio::io::AsyncWriteExt;
    const WATCHERS: usize = 200;
    const JOBS: usize = 10;
    let fake = FakeComfy::start().await;
    fake.set_progress_steps(20);
    let app = TestApp::spawn(&fake.url()).await;
    let api = app.api();
    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        // Subscribed once the answer's head is here.
        streams.push(
            api.events("/api/events", None, Some(Duration::from_secs(60)))
                .await
                .expect("the stream opens"),
        );
    }
    // A client that asks and then never reads a byte.
    let mut stalled = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stalled
        .write_all(format!("GET /api/events HTTP/1.1\r\nHost: {}\r\n\r\n", app.addr).as_bytes())
        .await
        .unwrap();

    for colour in 0..JOBS {
        app.post_json(
            "/api/jobs",
            &json!({ "workflow": crate::jobs::workflow(60 + colour as u32) }),
        )
        .await;
    }
    let watch = |mut stream: orchestrator::client::Events| async move {
        let mut ids = Vec::new();
        let mut ended = std::collections::HashSet::new();
        while ended.len() < JOBS {
            let Some(event) = stream.next().await else {
                break;
            };
            let Some(id) = event.id.as_deref().and_then(|id| id.parse::<i64>().ok()) else {
                continue;
            };
            ids.push(id);
            let job = event.json().unwrap_or(Value::Null);
            if ["succeeded", "failed", "cancelled", "backend_lost"]
                .contains(&job["status"].as_str().unwrap_or(""))
            {
                ended.insert(job["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        ids
    };
    let seen: Vec<Vec<i64>> = futures_util::future::join_all(streams.into_iter().map(watch)).await;
    let first = &seen[0];
    assert!(first.len() >= JOBS * 3, "{first:?}");
    assert!(
        first.windows(2).all(|w| w[1] == w[0] + 1),
        "numbered without a gap: {first:?}"
    );
    for (watcher, ids) in seen.iter().enumerate() {
        assert_eq!(ids, first, "watcher {watcher}");
    }
    drop(stalled);
}

/// A client that stops reading while events pour in is dropped once `ORCH_EVENTS_CLIENT_BUFFER` events are held
/// for it: its stream ends (it does not hang, and the server holds no more for it), and it comes back with
/// `Last-Event-ID` to get every later event, with no gap and none twice; a client that reads meanwhile gets them
/// all. (Held here: 8 events.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_dropped_and_resumes_with_last_event_id_without_a_gap() {
    use http_body_util::BodyExt;
    const JOBS: usize = 120;
    let down = crate::support::closed_port().await;
    let app = TestApp::spawn_with(&format!("http://{down}"), |s| {
        s.events_client_buffer = "8".into();
    })
    .await;

    // The stalled client: a small receive buffer, a request, then no reading until the end.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/api/events")
        .header("host", app.addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let stalled = sender.send_request(request).await.unwrap();
    assert_eq!(stalled.status(), 200);
    // A reader that keeps up, beside it.
    let reader = {
        let mut events = app.api().events("/api/events", None, None).await.unwrap();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            while ids.len() < JOBS {
                match events.next().await {
                    Some(event) => ids.extend(event.id.and_then(|id| id.parse::<i64>().ok())),
                    None => break,
                }
            }
            ids
        })
    };

    // With ComfyUI down, each job waits in Orchestrator's queue; cancelling it is one event, the job with its
    // 64 KiB prompt: 7.5 MiB in all, more than the kernel (4 MiB at most here) and hyper buffer besides.
    let prompt = "a lighthouse at dusk, ".repeat(3000);
    for _ in 0..JOBS {
        let (status, job) = app
            .post_json(
                "/api/jobs",
                &json!({ "template": "sdxl-t2i", "params": { "prompt": prompt } }),
            )
            .await;
        assert_eq!(status, 202, "{job}");
        let cancel = format!("/api/jobs/{}/cancel", job["id"].as_str().unwrap());
        let (status, cancelled) = app.post_json(&cancel, &json!({})).await;
        assert_eq!(status, 200, "{cancelled}");
    }
    let read = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the reading client is not held back")
        .unwrap();
    assert_eq!(read.len(), JOBS);
    assert!(read.windows(2).all(|w| w[1] == w[0] + 1), "{read:?}");

    // The stalled one was let go: what was held for it arrives, then its stream ends, short of the last event.
    let body = tokio::time::timeout(Duration::from_secs(30), stalled.into_body().collect())
        .await
        .expect("the stalled client's stream ends rather than waiting for it")
        .unwrap()
        .to_bytes();
    let got: Vec<i64> = String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|line| line.strip_prefix("id:"))
        .filter_map(|id| id.trim().parse().ok())
        .collect();
    assert!(!got.is_empty() && got.len() < JOBS, "{} events", got.len());
    assert_eq!(got, read[..got.len()], "in order, from the first");

    // Back with Last-Event-ID: exactly the rest.
    let left_off = *got.last().unwrap();
    let rest = read_events(&app, "/api/events", Some(left_off), |events| {
        events.last().map(|e| e.id) == read.last().copied()
    })
    .await;
    let rest: Vec<i64> = rest.iter().map(|e| e.id).collect();
    assert_eq!(rest, read[got.len()..], "no gap, nothing twice");
    eprintln!(
        "stalled client: dropped after {} of {JOBS} events, resumed with the other {}",
        got.len(),
        rest.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_ends_its_streams_whole() {
    let fake = FakeComfy::start().await;
    let app = TestApp::spawn(&fake.url()).await;
    let streams: Vec<reqwest::Response> = futures_util::future::join_all(
        ["/api/events", "/api/events"].map(|path| app.http.get(app.url(path)).send()),
    )
    .await
    .into_iter()
    .map(|r| r.unwrap())
    .collect();
    for stream in &streams {
        assert_eq!(stream.status(), 200);
    }
    let stopped = tokio::spawn(app.stop());
    for stream in streams {
        // A body cut mid-stream is an error here; one that ended is its bytes.
        let body = tokio::time::timeout(Duration::from_secs(10), stream.bytes())
            .await
            .expect("the stream ends when the server stops");
        assert!(body.is_ok(), "{body:?}");
    }
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the server stops at once, with no stream to wait for")
        .unwrap();
}
