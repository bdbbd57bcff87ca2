//! One WebSocket per ComfyUI backend, shared by every job sent there.
//!
//! ComfyUI sends a prompt's events to the socket of the client id the prompt was posted with, and its queue status
//! to every open socket on every change: one socket per job would cost it N² messages for N queued jobs. So each
//! backend has one link, opened once (greeting awaited once), reopened with back-off when it drops, under one
//! client id stable across restarts. Orchestrator picks each prompt's id itself and registers it before the prompt
//! is posted, so not even the first event of a run can arrive unrouted. Messages are routed by `prompt_id`; one
//! for a prompt nobody registered (the editor's own, another tool's) is dropped. Binary frames (previews, API
//! nodes' progress text) carry no prompt id: they belong to the prompt ComfyUI runs now, the one whose
//! `execution_start` came last.
//!
//! When the link drops, every registered job hears [`Heard::Lost`] and settles itself through `/history` and
//! `/queue`. When the link stays open but says nothing for `COMFY_SILENCE_SECS` (ComfyUI's reconnect hazard can
//! unregister a socket silently), the link asks `/queue` once and tells each registered prompt ComfyUI no
//! longer holds to look at its history ([`Heard::Check`]): one request per silence, not one per job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::background::Background;
use crate::comfy::error::ComfyError;
use crate::comfy::proxy::ComfyGateway;
use crate::comfy::ws;

/// Pauses between attempts to reopen a lost link; the last one repeats.
const BACKOFF: [Duration; 6] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// How long opening a link, and its greeting, may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// What a registered prompt hears from its backend's link.
#[derive(Debug)]
pub(super) enum Heard {
    /// A JSON message about this prompt (or, without a prompt id, about the prompt running now).
    Event(Value),
    /// A binary frame sent while this prompt ran.
    Binary(Bytes),
    /// The link dropped: what happened to the prompt meanwhile is for `/history` and `/queue` to say.
    Lost,
    /// The link has been silent, and ComfyUI's queue no longer holds this prompt: its history may say it ended.
    Check,
}

/// The state of a backend's link, as [`Link::state`] publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Not connected (yet, or any more); `failed` counts the attempts since it was last up.
    Down { failed: usize },
    /// Connected and greeted; `generation` counts the connections made.
    Up { generation: u64 },
}

/// Every backend's link, by origin; a link is opened the first time a job needs it.
#[derive(Clone, Default)]
pub(super) struct Links(Arc<Mutex<HashMap<String, Arc<Link>>>>);

impl Links {
    /// The link to `gateway`'s ComfyUI, its task started if it is not running yet.
    pub(super) fn of(
        &self,
        gateway: &ComfyGateway,
        client_id: &str,
        background: &Background,
    ) -> Arc<Link> {
        let origin = gateway.backend().origin();
        let mut links = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let link = links
            .entry(origin)
            .or_insert_with(|| Arc::new(Link::new(gateway.clone(), client_id.to_owned())))
            .clone();
        if !link.started.swap(true, Ordering::SeqCst) {
            background.spawn(link.clone().run(background.clone()));
        }
        link
    }

    /// Whether the link to the ComfyUI at `origin` is up; `None` when no job has needed it yet.
    pub(super) fn is_up(&self, origin: &str) -> Option<bool> {
        let links = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let link = links.get(origin)?;
        Some(matches!(*link.state.borrow(), State::Up { .. }))
    }
}

/// One backend's shared WebSocket and the prompts listening on it.
pub(super) struct Link {
    gateway: ComfyGateway,
    /// The client id every prompt sent to this backend is posted with.
    pub(super) client_id: String,
    routes: Mutex<HashMap<String, mpsc::UnboundedSender<Heard>>>,
    /// The prompt ComfyUI runs now, for the binary frames that name none.
    running: Mutex<Option<String>>,
    state: watch::Sender<State>,
    /// Cuts the back-off short: a job wants the link now (its backend answered a probe).
    retry: tokio::sync::Notify,
    started: AtomicBool,
}

impl Link {
    fn new(gateway: ComfyGateway, client_id: String) -> Self {
        Self {
            gateway,
            client_id,
            routes: Mutex::default(),
            running: Mutex::default(),
            state: watch::channel(State::Down { failed: 0 }).0,
            retry: tokio::sync::Notify::new(),
            started: AtomicBool::new(false),
        }
    }

    /// Waits until the link is up, for at most `within`. A link in its back-off is tried at once; when that try
    /// fails too, the answer says so rather than waiting out the back-off.
    pub(super) async fn ready(&self, within: Duration) -> Result<u64, ComfyError> {
        let mut state = self.state.subscribe();
        let failed_before = match *state.borrow_and_update() {
            State::Up { generation } => return Ok(generation),
            State::Down { failed } => failed,
        };
        if failed_before > 0 {
            self.retry.notify_one();
        }
        let settled = state.wait_for(|s| match s {
            State::Up { .. } => true,
            State::Down { failed } => *failed > failed_before,
        });
        let unreachable = || ComfyError::Unreachable {
            upstream: self.gateway.backend().origin(),
        };
        match tokio::time::timeout(within, settled).await {
            Ok(Ok(state)) => match *state {
                State::Up { generation } => Ok(generation),
                State::Down { .. } => Err(unreachable()),
            },
            Ok(Err(_)) => Err(unreachable()),
            Err(_) => Err(ComfyError::Timeout {
                upstream: self.gateway.backend().origin(),
                seconds: within.as_secs_f64(),
            }),
        }
    }

    /// Waits until the link is up again after `generation`, for at most `within`; answers whether it is.
    pub(super) async fn reopened(&self, generation: u64, within: Duration) -> bool {
        let mut state = self.state.subscribe();
        tokio::time::timeout(
            within,
            state.wait_for(|s| matches!(s, State::Up { generation: g } if *g > generation)),
        )
        .await
        .is_ok_and(|up| up.is_ok())
    }

    /// The generation of the link now, up or not.
    pub(super) fn generation(&self) -> u64 {
        match *self.state.borrow() {
            State::Up { generation } => generation,
            State::Down { .. } => 0,
        }
    }

    /// Starts routing `prompt_id`'s messages to the answer; a second registration replaces the first.
    pub(super) fn register(&self, prompt_id: &str) -> mpsc::UnboundedReceiver<Heard> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(prompt_id.to_owned(), tx);
        rx
    }

    pub(super) fn unregister(&self, prompt_id: &str) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(prompt_id);
    }

    fn registered(&self) -> Vec<String> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.keys().cloned().collect()
    }

    fn tell(&self, prompt_id: &str, heard: Heard) -> bool {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .get(prompt_id)
            .is_some_and(|tx| tx.send(heard).is_ok())
    }

    fn tell_all(&self, heard: impl Fn() -> Heard) {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        for tx in routes.values() {
            let _ = tx.send(heard());
        }
    }

    /// Keeps the link open until Orchestrator stops: connect, greet, route, and after a drop start over.
    async fn run(self: Arc<Self>, background: Background) {
        let mut failed = 0;
        let mut generation = 0;
        loop {
            let opened = tokio::select! {
                opened = self.open() => opened,
                () = background.stopping() => return,
            };
            match opened {
                Ok(socket) => {
                    failed = 0;
                    generation += 1;
                    self.state.send_replace(State::Up { generation });
                    tracing::debug!(upstream = %self.gateway.backend().origin(), generation, "ComfyUI link up");
                    let stopped = self.route(socket, &background).await;
                    self.state.send_replace(State::Down { failed: 0 });
                    *self.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    if stopped {
                        return;
                    }
                    tracing::info!(upstream = %self.gateway.backend().origin(), "ComfyUI link lost");
                    self.tell_all(|| Heard::Lost);
                }
                Err(error) => {
                    failed += 1;
                    self.state.send_replace(State::Down { failed });
                    tracing::debug!(upstream = %self.gateway.backend().origin(), %error, "ComfyUI link not opened");
                }
            }
            let pause = BACKOFF[failed.min(BACKOFF.len() - 1)];
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.retry.notified() => {}
                () = background.stopping() => return,
            }
        }
    }

    async fn open(&self) -> Result<ws::UpstreamSocket, ComfyError> {
        let query = format!("clientId={}", self.client_id);
        let uri = self.gateway.upstream_uri("/ws", Some(&query))?;
        let mut socket = ws::connect_upstream(self.gateway.backend(), &uri, CONNECT_WITHIN).await?;
        if !ws::wait_for_greeting(&mut socket, CONNECT_WITHIN).await {
            return Err(ComfyError::BadResponse(
                "ComfyUI's WebSocket sent no greeting".into(),
            ));
        }
        Ok(socket)
    }

    /// Routes one connection's messages until it ends; answers whether it ended because Orchestrator stops.
    async fn route(&self, mut socket: ws::UpstreamSocket, background: &Background) -> bool {
        let mut heard_at = tokio::time::Instant::now();
        let silence = self.gateway.silence_check();
        loop {
            let message = tokio::select! {
                () = background.stopping() => return true,
                message = socket.next() => message,
                () = tokio::time::sleep_until(heard_at + silence) => {
                    self.check_silent().await;
                    heard_at = tokio::time::Instant::now();
                    continue;
                }
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if self.on_event(event) {
                        heard_at = tokio::time::Instant::now();
                    }
                }
                Some(Ok(Message::Binary(frame))) => {
                    let running = self
                        .running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    if let Some(prompt_id) = running {
                        self.tell(&prompt_id, Heard::Binary(frame));
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return false,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Routes one JSON message; answers whether it was about a registered prompt.
    fn on_event(&self, event: Value) -> bool {
        let data = &event["data"];
        if event["type"] == "status" {
            return false;
        }
        let named = data["prompt_id"].as_str().map(str::to_owned);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if event["type"] == "execution_start" {
            running.clone_from(&named);
        }
        // `executing` without a prompt id (the greeting of a socket whose prompt runs) is the running one's.
        let Some(prompt_id) = named.or_else(|| running.clone()) else {
            return false;
        };
        if event["type"] == "executing"
            && data["node"].is_null()
            && running.as_deref() == Some(&prompt_id)
        {
            *running = None;
        }
        drop(running);
        self.tell(&prompt_id, Heard::Event(event))
    }

    /// The link said nothing for a while: the registered prompts ComfyUI's queue no longer holds are told to look
    /// at their history.
    async fn check_silent(&self) {
        let registered = self.registered();
        if registered.is_empty() {
            return;
        }
        let Ok(queue) = self.gateway.queue().await else {
            return;
        };
        for prompt_id in registered.iter().filter(|p| !queue.holds(p)) {
            self.tell(prompt_id, Heard::Check);
        }
    }
}
