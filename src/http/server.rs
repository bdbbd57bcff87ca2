//! Accepting and serving connections.
//!
//! The binary serves the way nginx does: one single-threaded event loop per core, so a request and the pooled
//! upstream connection it uses never wake another thread (on 2 cores a work-stealing runtime spent ~50 µs of CPU
//! per proxied request, this layout ~30). One acceptor hands connections to the loops in turn, which keeps them
//! evenly loaded where `SO_REUSEPORT`'s hashing left one loop with most of a handful of connections.
//!
//! Every connection is served under [`Limits`] a hostile client cannot wear down:
//! - a header-read timeout (`ORCH_HEADER_READ_TIMEOUT_SECS`): hyper's for every request head, and ours for a new
//!   connection's first one, which hyper's does not cover (its HTTP/1-or-2 detection waits for a first byte with no
//!   deadline, so a client that connects and sends nothing would stay forever);
//! - a cap on open connections (`ORCH_MAX_CONNECTIONS`), counted across every serving thread. A connection past the
//!   cap is still accepted, so the accept loop never stalls: it takes the place of the oldest connection that has
//!   not sent a complete request head yet, from the client address holding the most of those, so one client
//!   dribbling headers on many sockets cannot crowd the others out. A per-address limit would not do: on a loopback
//!   bind the panel, scripts and an attacker all come from 127.0.0.1, and the panel gets in because it sends its
//!   head at once. With no such connection to shed, the newcomer is closed. Upgraded connections (WebSockets) leave
//!   the count when hyper hands them over.
//!
//! Also HTTP/1.1 and HTTP/2, upgrades, and a graceful shutdown that lets requests in flight finish.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

use super::router::App;

/// How long requests in flight may run on after a shutdown signal before their connections are dropped.
const DRAIN_FOR: Duration = Duration::from_secs(10);

/// What every connection is served under, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client's time to send a request head; a new connection's time to send its first one.
    pub header_read_timeout: Duration,
    /// Client connections open at once, across every serving thread.
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            header_read_timeout: config.header_read_timeout,
            max_connections: config.max_connections,
        }
    }
}

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer turns on hyper's header-read timeout; it also runs while a kept-alive connection waits for its next
    // request, so an idle one is closed after the same time.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Open connections, counted across every serving thread, and those still waiting for their first request head.
struct Tracker {
    max: usize,
    state: Mutex<TrackerState>,
    shed: AtomicU64,
    refused: AtomicU64,
}

#[derive(Default)]
struct TrackerState {
    open: usize,
    next_id: u64,
    /// Connections that have sent no complete request head yet, oldest first, by client address; notifying one
    /// closes it.
    waiting: HashMap<IpAddr, BTreeMap<u64, Arc<Notify>>>,
}

impl TrackerState {
    fn stop_waiting(&mut self, ip: IpAddr, id: u64) -> bool {
        let Some(entries) = self.waiting.get_mut(&ip) else {
            return false;
        };
        let found = entries.remove(&id).is_some();
        if entries.is_empty() {
            self.waiting.remove(&ip);
        }
        found
    }
}

impl Tracker {
    fn new(max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max_connections.max(1),
            state: Mutex::default(),
            shed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection from `ip`, shedding a waiting one at the cap; `None` when every open connection
    /// has sent a request (the newcomer is then closed).
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut state = self.lock();
        if state.open >= self.max {
            let victim = state
                .waiting
                .iter()
                .max_by_key(|(_, entries)| entries.len())
                .map(|(ip, _)| *ip);
            let Some(victim) = victim else {
                drop(state);
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        max_connections = self.max,
                        refused,
                        "connection cap reached and every connection is busy; new connections closed"
                    );
                }
                return None;
            };
            let entries = state.waiting.get_mut(&victim).expect("picked from the map");
            let (_, notify) = entries.pop_first().expect("no empty list is kept");
            if entries.is_empty() {
                state.waiting.remove(&victim);
            }
            notify.notify_one();
            // Its place is this newcomer's now; its slot knows not to give it back again.
            state.open -= 1;
            let shed = self.shed.fetch_add(1, Ordering::Relaxed) + 1;
            if shed.is_power_of_two() {
                tracing::warn!(
                    max_connections = self.max,
                    client = %victim,
                    shed,
                    "connection cap reached; closing the oldest connection that sent no request"
                );
            }
        }
        state.open += 1;
        let id = state.next_id;
        state.next_id += 1;
        let shed = Arc::new(Notify::new());
        state
            .waiting
            .entry(ip)
            .or_default()
            .insert(id, shed.clone());
        Some(Slot {
            tracker: self.clone(),
            id,
            ip,
            shed,
            answered: AtomicBool::new(false),
        })
    }
}

/// A connection's place in the count, given back when dropped.
struct Slot {
    tracker: Arc<Tracker>,
    id: u64,
    ip: IpAddr,
    /// Notified when a newer connection takes this one's place.
    shed: Arc<Notify>,
    /// Set, under the tracker's lock, when the first request head arrives: from then on it is never shed.
    answered: AtomicBool,
}

impl Slot {
    fn request_arrived(&self) {
        if self.answered.load(Ordering::Relaxed) {
            return;
        }
        let mut state = self.tracker.lock();
        if state.stop_waiting(self.ip, self.id) {
            self.answered.store(true, Ordering::Relaxed);
        }
    }

    /// Resolves, with the reason, when the connection should be closed for want of a first request: none within
    /// `within`, or its place taken. Never resolves once a request has arrived.
    async fn first_request_missed(&self, within: Duration) -> &'static str {
        let why = tokio::select! {
            () = tokio::time::sleep(within) => "no complete request head in time",
            () = self.shed.notified() => "shed at the connection cap",
        };
        if self.answered.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        why
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.tracker.lock();
        // A shed connection's place was handed on when it was shed.
        if state.stop_waiting(self.ip, self.id) || self.answered.load(Ordering::Relaxed) {
            state.open -= 1;
        }
    }
}

/// The connection cap, lowered when the process may not open enough files for it: each client connection can
/// hold two descriptors (its own and an upstream one). The soft limit is raised to the hard one first, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do; at the limit, `accept` fails and no one gets in, not even the
/// clients the cap would let in by shedding.
fn effective_limits(limits: Limits) -> Limits {
    #[cfg(unix)]
    {
        const RESERVE: libc::rlim_t = 128;
        let wanted = limits.max_connections as libc::rlim_t * 2 + RESERVE;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read or write the one struct passed by pointer.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return limits;
        }
        if limit.rlim_cur < wanted {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max.min(wanted),
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit.rlim_cur = raised.rlim_cur;
            }
        }
        let files = limit.rlim_cur;
        if files < wanted {
            let max_connections = (files.saturating_sub(RESERVE) / 2).max(1) as usize;
            tracing::warn!(
                configured = limits.max_connections,
                max_connections,
                open_files = files,
                "ORCH_MAX_CONNECTIONS lowered to what the open-file limit allows"
            );
            return Limits {
                max_connections,
                ..limits
            };
        }
    }
    limits
}

/// Serves one accepted connection on the current runtime until it closes.
fn spawn_connection(
    app: &App,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    accepted: (TcpStream, SocketAddr, Slot),
    first_request_within: Duration,
) {
    let (stream, peer, slot) = accepted;
    let _ = stream.set_nodelay(true);
    let app = app.clone();
    let builder = builder.clone();
    let slot = Arc::new(slot);
    tokio::spawn(async move {
        let seen = slot.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            seen.request_arrived();
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(request.map(Body::new)).await) }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::select! {
            biased;
            result = watcher.watch(connection) => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
            }
            why = slot.first_request_missed(first_request_within) => {
                tracing::debug!(%peer, why, "connection closed before its first request");
            }
        }
    });
}

async fn drain(graceful: GracefulShutdown) {
    if tokio::time::timeout(DRAIN_FOR, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {DRAIN_FOR:?}; closing their connections");
    }
}

async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => Some(accepted),
        Err(error) => {
            // Out of file descriptors and the like: wait a moment instead of spinning on the error.
            tracing::warn!(%error, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// Accepts and serves on the current runtime until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: App,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limits = effective_limits(limits);
    let tracker = Tracker::new(limits.max_connections);
    let builder = connection_builder(&limits);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener) => {
                let Some((stream, peer)) = accepted else { continue };
                // Past the cap with nothing to shed: dropping the stream closes it.
                let Some(slot) = tracker.admit(peer.ip()) else { continue };
                spawn_connection(
                    &app,
                    &builder,
                    graceful.watcher(),
                    (stream, peer, slot),
                    limits.header_read_timeout,
                );
            }
        }
    }
    drop(listener);
    drain(graceful).await;
}

/// A connection on its way to a serving thread, with its place in the count.
type HandOff = (std::net::TcpStream, SocketAddr, Slot);

/// A serving thread's end of the hand-off: connections to serve, until the acceptor hangs up.
pub struct Worker {
    connections: mpsc::UnboundedReceiver<HandOff>,
    limits: Limits,
}

/// The acceptor's end: hands each connection to the next worker in turn.
pub struct Dispatcher {
    workers: Vec<mpsc::UnboundedSender<HandOff>>,
    next: usize,
    tracker: Arc<Tracker>,
}

/// A dispatcher and `count` workers connected to it, sharing one connection count.
pub fn dispatcher(count: usize, limits: Limits) -> (Dispatcher, Vec<Worker>) {
    let limits = effective_limits(limits);
    let (senders, workers) = (0..count.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            (
                tx,
                Worker {
                    connections: rx,
                    limits,
                },
            )
        })
        .unzip();
    (
        Dispatcher {
            workers: senders,
            next: 0,
            tracker: Tracker::new(limits.max_connections),
        },
        workers,
    )
}

impl Dispatcher {
    /// Accepts until `shutdown` resolves; dropping the dispatcher then tells every worker to drain.
    pub async fn run(mut self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = accept(&listener) => {
                    let Some((stream, peer)) = accepted else { continue };
                    // Past the cap with nothing to shed: dropping the stream closes it.
                    let Some(slot) = self.tracker.admit(peer.ip()) else { continue };
                    // Leave this loop's reactor; the worker registers the socket with its own.
                    let Ok(stream) = stream.into_std() else { continue };
                    let worker = &self.workers[self.next % self.workers.len()];
                    self.next = self.next.wrapping_add(1);
                    let _ = worker.send((stream, peer, slot));
                }
            }
        }
    }
}

impl Worker {
    /// Serves the connections it is handed, on the current (single-threaded) runtime, then drains.
    pub async fn run(mut self, app: App) {
        let builder = connection_builder(&self.limits);
        let graceful = GracefulShutdown::new();
        while let Some((stream, peer, slot)) = self.connections.recv().await {
            match TcpStream::from_std(stream) {
                Ok(stream) => spawn_connection(
                    &app,
                    &builder,
                    graceful.watcher(),
                    (stream, peer, slot),
                    self.limits.header_read_timeout,
                ),
                Err(error) => tracing::warn!(%peer, %error, "cannot register a connection"),
            }
        }
        drain(graceful).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn open(tracker: &Tracker) -> usize {
        tracker.lock().open
    }

    #[test]
    fn at_the_cap_the_oldest_waiting_connection_of_the_busiest_client_goes() {
        let tracker = Tracker::new(3);
        let a1 = tracker.admit(A).unwrap();
        let a2 = tracker.admit(A).unwrap();
        let b1 = tracker.admit(B).unwrap();
        assert_eq!(open(&tracker), 3);
        // B's connection is the oldest one from B, but A holds more waiting connections: A's oldest is shed.
        let b2 = tracker.admit(B).unwrap();
        assert_eq!(open(&tracker), 3);
        use futures_util::FutureExt;
        assert!(
            a1.shed.notified().now_or_never().is_some(),
            "a1 told to close"
        );
        assert!(a2.shed.notified().now_or_never().is_none());
        assert!(b1.shed.notified().now_or_never().is_none());
        assert_eq!(tracker.lock().waiting[&A].len(), 1);
        assert_eq!(tracker.lock().waiting[&B].len(), 2);
        // Dropping the shed connection gives nothing back twice.
        drop(a1);
        assert_eq!(open(&tracker), 3);
        drop(b2);
        assert_eq!(open(&tracker), 2);
    }

    #[test]
    fn connections_that_sent_a_request_are_never_shed() {
        let tracker = Tracker::new(2);
        let first = tracker.admit(A).unwrap();
        let second = tracker.admit(A).unwrap();
        first.request_arrived();
        second.request_arrived();
        assert!(tracker.admit(A).is_none(), "nothing to shed: refused");
        assert_eq!(open(&tracker), 2);
        drop(first);
        assert_eq!(open(&tracker), 1);
        let third = tracker.admit(B).unwrap();
        assert_eq!(open(&tracker), 2);
        drop((second, third));
        assert_eq!(open(&tracker), 0);
        assert!(tracker.lock().waiting.is_empty());
    }
}
