//! The process's life: the store opened and the folders made, the background work started (recovery, the
//! dispatcher, webhooks, the event pump), the fleet joined, the panel's and the editor's listeners served, and a
//! clean stop that finishes what is in flight.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::app::{AppState, FleetSecrets, status};
use crate::config::{self, Config};
use crate::paths::DataPaths;
use crate::store::{Store, StoreError};
use crate::{http, jobs, service};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create the data folder {path}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a serving thread")]
    Thread(#[source] std::io::Error),
    #[error(
        "another Orchestrator is running as instance {id:?} on this store (its heartbeat goes on): each instance of a \
         fleet needs a name of its own; set ORCH_INSTANCE_ID"
    )]
    InstanceInUse { id: String },
}

/// Opens the store and creates the folders: everything the server needs before it accepts a request.
async fn prepare(config: Config) -> Result<AppState, RunError> {
    let paths = DataPaths::new(&config.data_dir);
    paths.ensure().map_err(|source| RunError::DataDir {
        path: paths.root().display().to_string(),
        source,
    })?;
    let store = Store::open(config.database_url.expose())
        .await?
        .for_instance(&config.fleet.instance_id, config.fleet.lease);
    if store.engine() == config::Engine::Postgres {
        ensure_alone(&store, &config.fleet).await?;
    }
    // A fleet's instances share the key of confirmation tokens, so a token one of them made pays once through
    // any; alone on SQLite, the key is drawn at start-up (a restart voids the tokens handed out before it).
    let fleet = match store.engine() {
        config::Engine::Postgres => Some(FleetSecrets {
            token_key: store
                .fleet_secret("confirmation-tokens")
                .await?
                .into_bytes(),
            fleet_token: config::Secret::new(store.fleet_secret("fleet-token").await?),
        }),
        config::Engine::Sqlite => None,
    };
    let state = AppState::with_fleet(config, paths, store, fleet);
    let background = state.jobs.background();
    background.spawn(state.jobs.clone().dispatch());
    if let Some(webhooks) = state.jobs.ledger().webhooks() {
        background.spawn(webhooks.clone().run(background.clone()));
    }
    if state.store.engine() == config::Engine::Postgres {
        // Read before anything is served: an event stored while the pump is still connecting is sent, not lost.
        let from = state.store.last_event().await.unwrap_or(0);
        background.spawn(
            state
                .jobs
                .ledger()
                .clone()
                .pump_events(state.config.database_url.expose().to_owned(), from),
        );
    }
    // One loop settles every backend's jobs nobody follows: after this restart, and those of instances that died.
    let drivers: Vec<Arc<dyn jobs::recovery::Driver>> =
        vec![Arc::new(state.jobs.driver()), Arc::new(state.flux.driver())];
    background.spawn(jobs::recovery::Recovery::new(state.jobs.clone(), drivers).run());
    if state.service.supervisor().is_some() {
        let watching = state.clone();
        let stop = background.clone();
        background.spawn(async move {
            tokio::select! {
                () = watch_for_hangs(watching) => {}
                () = stop.stopping() => {}
            }
        });
    }
    Ok(state)
}

/// Refuses to start as an instance another live process already is: each would take the other's jobs for its own
/// (none would be taken over when one died) and the other's events for its own. A heartbeat within a lease may be a
/// process that just died (a restart after a crash): a live one beats again within a third of a lease, so the
/// start waits that long before it decides.
async fn ensure_alone(store: &Store, fleet: &config::FleetConfig) -> Result<(), RunError> {
    let last_beat = || async {
        Ok::<_, RunError>(
            store
                .instances()
                .await?
                .into_iter()
                .find(|i| i.id == fleet.instance_id),
        )
    };
    let Some(beat) = last_beat()
        .await?
        .filter(|i| !i.is_stale(fleet.lease))
        .map(|i| i.heartbeat_at)
    else {
        return Ok(());
    };
    tracing::info!(instance = %fleet.instance_id, "this instance's name beat within a lease: waiting a heartbeat to tell whether another process has it");
    tokio::time::sleep(fleet.lease / 3 + std::time::Duration::from_secs(1)).await;
    if last_beat()
        .await?
        .is_some_and(|again| again.heartbeat_at != beat)
    {
        return Err(RunError::InstanceInUse {
            id: fleet.instance_id.clone(),
        });
    }
    Ok(())
}

/// Registers this instance in the fleet, once its address is known, and keeps its heartbeat: the other instances
/// reach it at `ORCH_PUBLIC_URL`, else at the address it listens on.
fn join_fleet(state: &AppState) {
    let url = state
        .config
        .fleet
        .public_url
        .clone()
        .or_else(|| state.local_addr.get().map(|addr| format!("http://{addr}")))
        .unwrap_or_default();
    let background = state.jobs.background();
    background.spawn(state.jobs.clone().keep_fleet(url, state.name_taken.clone()));
}

/// How a server that served ends: cleanly, or stopped because its instance's name is another live process's.
fn ended(state: &AppState) -> Result<(), RunError> {
    if state.name_taken.is_cancelled() {
        return Err(RunError::InstanceInUse {
            id: state.config.fleet.instance_id.clone(),
        });
    }
    Ok(())
}

/// Opens the store and serves the panel and API on `listener`, and ComfyUI's editor on `ORCH_COMFY_BIND`, in the
/// caller's runtime, until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let editor = bind_editor(&config).await?;
    run_with_editor(config, listener, editor, shutdown).await
}

/// Binds the editor's listener, when it is not `off`.
async fn bind_editor(config: &Config) -> Result<Option<TcpListener>, RunError> {
    let Some(addr) = config.editor_bind else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| RunError::Bind { addr, source })
}

/// `shutdown` (or the discovery that this instance's name is taken), which also tells the state's event streams to
/// end.
fn closing(
    state: &AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let (closing, taken) = (state.closing.clone(), state.name_taken.clone());
    async move {
        tokio::select! {
            () = shutdown => {}
            () = taken.cancelled() => {}
        }
        closing.cancel();
    }
}

/// A shutdown signal every listener can wait on.
type Shutdown = futures_util::future::Shared<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>;

fn shared(shutdown: impl Future<Output = ()> + Send + 'static) -> Shutdown {
    futures_util::FutureExt::shared(Box::pin(shutdown) as std::pin::Pin<Box<_>>)
}

/// Serves ComfyUI's editor on its own listener until `shutdown` resolves (nothing when there is no listener).
async fn serve_editor(state: AppState, editor: Option<TcpListener>, shutdown: Shutdown) {
    let Some(listener) = editor else {
        return;
    };
    if let Ok(addr) = listener.local_addr() {
        let _ = state.editor_local_addr.set(addr);
        tracing::info!(%addr, "ComfyUI's editor listening on its own origin");
    }
    let limits = http::server::Limits::from_config(&state.config);
    http::server::serve(listener, http::router::App::editor(state), limits, shutdown).await;
}

/// [`run`] with the editor's listener bound by the caller (tests bind `127.0.0.1:0`), or none.
pub async fn run_with_editor(
    config: Config,
    listener: TcpListener,
    editor: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let state = prepare(config).await?;
    if let Ok(addr) = listener.local_addr() {
        let _ = state.local_addr.set(addr);
        tracing::info!(%addr, comfy = %state.gateway.backend().origin(), threads = 1, "Orchestrator listening");
    }
    join_fleet(&state);
    let limits = http::server::Limits::from_config(&state.config);
    let shutdown = shared(closing(&state, shutdown));
    tokio::join!(
        http::server::serve(
            listener,
            http::router::App::new(state.clone()),
            limits,
            shutdown.clone(),
        ),
        serve_editor(state.clone(), editor, shutdown),
    );
    finish_background(&state).await;
    stop_supervised(&state).await;
    state.store.close().await;
    ended(&state)
}

/// Serves like [`run`], with one single-threaded event loop per serving thread and one acceptor handing them
/// connections in turn (see [`http::server`] for why). Blocks until `shutdown` resolves and every loop has drained.
pub fn run_per_core(
    config: Config,
    threads: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Thread)?;
    let bind = config.bind;
    let listener = control
        .block_on(TcpListener::bind(bind))
        .map_err(|source| RunError::Bind { addr: bind, source })?;
    let editor = control.block_on(bind_editor(&config))?;
    let state = control.block_on(prepare(config))?;
    let addr = listener.local_addr().unwrap_or(bind);
    let _ = state.local_addr.set(addr);
    control.block_on(async { join_fleet(&state) });
    tracing::info!(%addr, comfy = %state.gateway.backend().origin(), threads, "Orchestrator listening");

    let limits = http::server::Limits::from_config(&state.config);
    let (dispatcher, workers) = http::server::dispatcher(threads, limits);
    // A serving thread keeps its runtime (and the upstream connections it opened) alive until the background work
    // has ended: a paid submit in flight may be using one of them.
    let (release, released) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    for (index, worker) in workers.into_iter().enumerate() {
        let state = if index == 0 {
            state.clone()
        } else {
            state.for_another_thread()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RunError::Thread)?;
        let mut released = released.clone();
        let handle = std::thread::Builder::new()
            .name(format!("orchestrator-http-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    worker.run(http::router::App::new(state)).await;
                    let _ = released.wait_for(|done| *done).await;
                })
            })
            .map_err(RunError::Thread)?;
        handles.push(handle);
    }

    // The editor is one person's browser: the control loop serves it, with a gateway of its own.
    let shutdown = shared(closing(&state, shutdown));
    control.block_on(async {
        tokio::join!(
            dispatcher.run(listener, shutdown.clone()),
            serve_editor(state.for_another_thread(), editor, shutdown),
        )
    });
    // Accepting has stopped (the serving threads drain their requests meanwhile): the background work ends next.
    control.block_on(finish_background(&state));
    let _ = release.send(true);
    for handle in handles {
        if handle.join().is_err() {
            tracing::error!("a serving thread panicked");
        }
    }
    control.block_on(async {
        stop_supervised(&state).await;
        state.store.close().await;
    });
    ended(&state)
}

/// How long a clean stop waits for background work in flight: a paid submit has its own deadline (the FLUX submit
/// timeout, ComfyUI's write and read timeouts), an output download its own; this bounds the sum.
const FINISH_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// Ends the background work: waiting work stops, a submit or download in flight is awaited and recorded.
async fn finish_background(state: &AppState) {
    state.jobs.background().finish(FINISH_WITHIN).await;
}

/// Probes a supervised ComfyUI while it runs; one that stays alive without answering for `COMFY_HUNG_SECS` is
/// reported unresponsive and its process tree ended, and the restart policy brings it back.
async fn watch_for_hangs(state: AppState) {
    let Some(supervisor) = state.service.supervisor().cloned() else {
        return;
    };
    let hung_after = state.config.service.hung_after;
    let every = (hung_after / 4).clamp(
        std::time::Duration::from_millis(500),
        std::time::Duration::from_secs(5),
    );
    let mut watched: Option<(u32, std::time::Instant)> = None;
    loop {
        tokio::time::sleep(every).await;
        let status = supervisor.status();
        let pid = match (status.status, status.pid) {
            (service::ServiceState::Running, Some(pid)) => pid,
            _ => {
                watched = None;
                continue;
            }
        };
        if watched.is_none_or(|(seen, _)| seen != pid) {
            // A new run: it gets the whole grace period (ComfyUI takes a while to load its nodes).
            watched = Some((pid, std::time::Instant::now()));
        }
        if state.gateway.probe(status::PROBE_WITHIN).await {
            watched = Some((pid, std::time::Instant::now()));
        } else if let Some((_, answered)) = watched
            && answered.elapsed() >= hung_after
        {
            supervisor.kill_hung(pid).await;
            watched = None;
        }
    }
}

/// A ComfyUI that Orchestrator runs as its child is stopped politely with it (OS-service backends keep running).
async fn stop_supervised(state: &AppState) {
    if let Some(supervisor) = state.service.supervisor()
        && let Err(error) = supervisor.stop().await
    {
        tracing::warn!(%error, "could not stop ComfyUI");
    }
}
