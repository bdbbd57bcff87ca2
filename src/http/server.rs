//! Accepting and serving connections.
//!
//! The binary serves the way nginx does: one single-threaded event loop per core, so a request and the pooled
//! upstream connection it uses never wake another thread (on 2 cores a work-stealing runtime spent ~50 µs of CPU
//! per proxied request, this layout ~30). One acceptor hands connections to the loops in turn, which keeps them
//! evenly loaded where `SO_REUSEPORT`'s hashing left one loop with most of a handful of connections.
//!
//! Every connection gets hyper's header-read timeout (30 s, so a client that dribbles its headers is cut off),
//! HTTP/1.1 and HTTP/2, upgrades (WebSockets), and a graceful shutdown that lets requests in flight finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::router::App;

/// How long requests in flight may run on after a shutdown signal before their connections are dropped.
const DRAIN_FOR: Duration = Duration::from_secs(10);

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer turns on hyper's header-read timeout (30 s by default).
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves one accepted connection on the current runtime until it closes.
fn spawn_connection(
    app: &App,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let app = app.clone();
    let builder = builder.clone();
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(request.map(Body::new)).await) }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        if let Err(error) = watcher.watch(connection).await {
            tracing::debug!(%peer, %error, "connection ended with an error");
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
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let builder = connection_builder();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener) => {
                if let Some((stream, peer)) = accepted {
                    spawn_connection(&app, &builder, graceful.watcher(), stream, peer);
                }
            }
        }
    }
    drop(listener);
    drain(graceful).await;
}

/// A serving thread's end of the hand-off: connections to serve, until the acceptor hangs up.
pub struct Worker {
    connections: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
}

/// The acceptor's end: hands each connection to the next worker in turn.
pub struct Dispatcher {
    workers: Vec<mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
    next: usize,
}

/// A dispatcher and `count` workers connected to it.
pub fn dispatcher(count: usize) -> (Dispatcher, Vec<Worker>) {
    let (senders, workers) = (0..count.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            (tx, Worker { connections: rx })
        })
        .unzip();
    (
        Dispatcher {
            workers: senders,
            next: 0,
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
                    // Leave this loop's reactor; the worker registers the socket with its own.
                    let Ok(stream) = stream.into_std() else { continue };
                    let worker = &self.workers[self.next % self.workers.len()];
                    self.next = self.next.wrapping_add(1);
                    let _ = worker.send((stream, peer));
                }
            }
        }
    }
}

impl Worker {
    /// Serves the connections it is handed, on the current (single-threaded) runtime, then drains.
    pub async fn run(mut self, app: App) {
        let builder = connection_builder();
        let graceful = GracefulShutdown::new();
        while let Some((stream, peer)) = self.connections.recv().await {
            match TcpStream::from_std(stream) {
                Ok(stream) => spawn_connection(&app, &builder, graceful.watcher(), stream, peer),
                Err(error) => tracing::warn!(%peer, %error, "cannot register a connection"),
            }
        }
        drain(graceful).await;
    }
}
