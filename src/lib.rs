//! Orchestrator: the local control plane for AI image generation.
//!
//! Layout of the crate (each module's own `//!` says more; ARCHITECTURE.md has the map):
//! - [`config`]: settings from flags, environment and `.env`, validated at once; secrets redacted.
//! - [`paths`]: every filesystem location, derived from the configuration.
//! - [`fs_safe`]: names from elsewhere (a client, ComfyUI) turned into paths that stay inside their folder, links
//!   included; atomic writes.
//! - [`address`]: a `Host` header split into name and port; the editor's URL as a browser on the panel reaches it.
//! - [`codes`]: every code a client can see, in one enum; how a job's `error` is shaped.
//! - [`problems`]: failure shapes several domains share (a bad request, wrong fields, a missing key, an upstream
//!   API's failure) and the JSON error body.
//! - [`error`]: the one API error type: the domains' errors mapped to statuses; only `http` and `ui` name it.
//! - [`http`]: the router, the guard (Host allowlist, token, CSRF), the gateway, the handlers and the request log.
//!   Only `http` and [`ui`] know axum.
//! - [`ui`]: the panel's pages (askama), in English and Russian, as one router.
//! - [`comfy`]: ComfyUI as Orchestrator talks to it (HTTP and WebSocket), its model lists and node catalog,
//!   `extra_model_paths.yaml`.
//! - [`model`]: what a job is, as the API and the store see it; [`clock`]: times and days as the store keeps them.
//! - [`jobs`]: generation jobs: the money gate, templates and the runner.
//! - [`money`]: confirmation tokens, dollars, `Idempotency-Key`s and refusals, for every paid provider.
//! - [`bfl`]: Black Forest Labs' FLUX API as it is: models, request shapes, prices, the client.
//! - [`flux`]: FLUX jobs over [`bfl`]: recorded, reserved, submitted and polled.
//! - [`outbound`]: the HTTP clients for APIs Orchestrator calls (one TLS set-up, no redirects).
//! - [`v0`]: the v0 Platform API gateway.
//! - [`store`]: the durable store; all SQL lives there.
//! - [`assets`]: the Comfy API v2's assets: records over blobs named by their blake3 hash, and the `core/ASSET`
//!   references of a workflow, uploaded to the ComfyUI a job is sent to.
//! - [`service`]: ComfyUI as a service (supervised, systemd, Windows); the only code that starts processes.
//! - [`status`]: the health report.
//! - [`background`]: the work that outlives a request, under one tracker, stopped cleanly.
//! - [`client`]: the API as its clients (CLI, MCP, tests) call it.
//! - [`cli`]: the terminal commands; [`mcp`]: the MCP server.
//! - [`telemetry`]: log set-up.
//!
//! [`run`] serves on a listener the caller bound, so tests pass `127.0.0.1:0`; [`run_per_core`] is what the
//! binary runs: one single-threaded runtime per core.

pub mod address;
pub mod assets;
pub mod background;
pub mod bfl;
pub mod cli;
pub mod client;
pub mod clock;
pub mod codes;
pub mod comfy;
pub mod config;
pub mod error;
pub mod flux;
pub mod fs_safe;
pub mod http;
pub mod jobs;
pub mod mcp;
pub mod model;
pub mod money;
pub mod outbound;
pub mod paths;
pub mod problems;
pub mod service;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod ui;
pub mod v0;

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use tokio::net::TcpListener;

use comfy::models::ModelCache;
use comfy::proxy::{ComfyGateway, http_client};
use config::Config;
use paths::DataPaths;
use store::{Store, StoreError};

/// Shared state of the running server; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub config: Arc<Config>,
    pub store: Store,
    /// The gateway to the first configured ComfyUI. Each serving thread has its own, so that a request and the
    /// pooled upstream connection it uses never wake another thread.
    pub gateway: ComfyGateway,
    pub models: Arc<ModelCache>,
    /// How ComfyUI is run: one for the process (the supervisor's task lives on the runtime that created it).
    pub service: Arc<service::ServiceControl>,
    pub templates: Arc<jobs::templates::Templates>,
    /// Jobs: one for the process (its event stream and followers are shared by every serving thread).
    pub jobs: jobs::runner::Jobs,
    /// Paid FLUX generation; one for the process, so idempotency locks are shared.
    pub flux: flux::service::Flux,
    pub v0: v0::V0Gateway,
    /// One for the process, so a client cannot multiply its allowance by the number of serving threads.
    pub paid_limiter: Arc<http::rate_limit::PaidLimiter>,
    /// The same pace for paid prompts parked from the gateway, counted apart: a script flooding them does not
    /// lock its user out of confirming.
    pub parked_limiter: Arc<http::rate_limit::PaidLimiter>,
    pub status_cache: Arc<status::StatusCache>,
    /// The fleet's token, shown by an instance that fetches an output this one holds (PostgreSQL only), and the
    /// client for such fetches.
    pub fleet_token: Option<config::Secret>,
    pub fleet_client: reqwest::Client,
    /// The address the server really listens on (known once bound), for the MCP tools' calls back to the API.
    pub local_addr: Arc<std::sync::OnceLock<SocketAddr>>,
    /// The address ComfyUI's editor really listens on, once bound.
    pub editor_local_addr: Arc<std::sync::OnceLock<SocketAddr>>,
    /// Cancelled when the server is told to stop, before it drains: event streams end cleanly then (their clients
    /// reconnect with `Last-Event-ID`) rather than being cut when the drain gives up on them.
    pub closing: tokio_util::sync::CancellationToken,
    /// Cancelled when another live process turns out to run under this instance's name (two started at once): the
    /// younger stops, and says why ([`RunError::InstanceInUse`]).
    pub name_taken: tokio_util::sync::CancellationToken,
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(config: Config, paths: DataPaths, store: Store) -> Self {
        Self::with_fleet(config, paths, store, None)
    }

    /// [`AppState::new`] with the fleet's shared secrets (PostgreSQL): confirmation tokens are signed with its key
    /// rather than a key drawn now, and other instances are fetched from with its token.
    pub fn with_fleet(
        config: Config,
        paths: DataPaths,
        store: Store,
        fleet: Option<FleetSecrets>,
    ) -> Self {
        let (token_key, fleet_token) = match fleet {
            Some(secrets) => (Some(secrets.token_key), Some(secrets.fleet_token)),
            None => (None, None),
        };
        let token_key = token_key.as_deref();
        // With a webhook, every job's final change owes it a delivery, in the same transaction.
        let store = match &config.webhook {
            Some(_) => store.owing_webhooks(),
            None => store,
        };
        let config = Arc::new(config);
        let gateway = Self::new_gateway(&config);
        let service = Arc::new(service::control::for_config(&config));
        let backends = config
            .comfy
            .backends
            .iter()
            .map(|backend| {
                ComfyGateway::new(
                    http_client(config.comfy.connect_timeout),
                    backend.clone(),
                    config.comfy.clone(),
                )
            })
            .collect();
        // One confirmation key for FLUX and paid ComfyUI nodes: one set of token rules.
        let ttl = config.flux.confirm_ttl;
        let confirmer = Arc::new(match token_key {
            Some(key) => money::confirm::Confirmer::with_key(ttl, key),
            None => money::confirm::Confirmer::new(ttl),
        });
        let models: Arc<ModelCache> = Arc::default();
        // One background for jobs and the checkout: a clean stop waits for paid submits and followers alike.
        let background = background::Background::new();
        let checkout = Arc::new(money::checkout::Checkout::new(
            store.clone(),
            confirmer.clone(),
            background.clone(),
            config.flux.daily_budget_micros,
        ));
        let money = jobs::paid::Money {
            models: models.clone(),
            gate: jobs::gate::Gate::new(
                confirmer.clone(),
                config.flux.allow_generation,
                config.comfy_org.paid_node_max_micros,
            ),
            api_key: config.comfy_org.api_key.clone(),
            checkout: checkout.clone(),
        };
        let assets = assets::Assets::new(paths.assets(), paths.outputs(), store.clone());
        let mut jobs = jobs::runner::Jobs::new(
            store.clone(),
            backends,
            paths.outputs(),
            money,
            assets,
            background,
        );
        if let (Some(supervisor), Some(first)) =
            (service.supervisor(), config.comfy.backends.first())
        {
            jobs = jobs.with_supervised(first.origin(), supervisor.subscribe());
        }
        if let Some(webhook) = &config.webhook {
            jobs = jobs.with_webhooks(jobs::webhooks::Webhooks::new(store.clone(), webhook));
        }
        let templates = Arc::new(load_templates(&config));
        let flux = flux::service::Flux::new(config.flux.clone(), jobs.clone(), checkout);
        let v0 = v0::V0Gateway::new(config.v0.clone());
        let paid_limiter = Arc::new(http::rate_limit::PaidLimiter::new(config.paid_rate_limit));
        let parked_limiter = Arc::new(http::rate_limit::PaidLimiter::new(config.paid_rate_limit));
        Self(Arc::new(AppInner {
            config,
            store,
            gateway,
            models,
            service,
            templates,
            jobs,
            flux,
            v0,
            paid_limiter,
            parked_limiter,
            status_cache: Arc::default(),
            fleet_token,
            fleet_client: fleet_client(),
            local_addr: Arc::default(),
            editor_local_addr: Arc::default(),
            closing: tokio_util::sync::CancellationToken::new(),
            name_taken: tokio_util::sync::CancellationToken::new(),
        }))
    }

    /// Every secret's value, the configuration's and the fleet's token (kept in the store), for masking text from
    /// elsewhere (ComfyUI's log).
    pub fn secret_values(&self) -> Vec<String> {
        let mut values = self.config.secret_values();
        values.extend(self.fleet_token.as_ref().map(|t| t.expose().to_owned()));
        values
    }

    /// The same shared state with a gateway (and connection pool) of its own, for another serving thread.
    pub fn for_another_thread(&self) -> Self {
        Self(Arc::new(AppInner {
            config: self.config.clone(),
            store: self.store.clone(),
            gateway: Self::new_gateway(&self.config),
            models: self.models.clone(),
            service: self.service.clone(),
            templates: self.templates.clone(),
            jobs: self.jobs.clone(),
            flux: self.flux.clone(),
            v0: self.v0.clone(),
            paid_limiter: self.paid_limiter.clone(),
            parked_limiter: self.parked_limiter.clone(),
            status_cache: self.status_cache.clone(),
            fleet_token: self.fleet_token.clone(),
            fleet_client: self.fleet_client.clone(),
            local_addr: self.local_addr.clone(),
            editor_local_addr: self.editor_local_addr.clone(),
            closing: self.closing.clone(),
            name_taken: self.name_taken.clone(),
        }))
    }

    /// Where ComfyUI's editor is served: the bound address once known, else the configured one; `None` when off.
    pub fn editor_addr(&self) -> Option<SocketAddr> {
        self.config.editor_bind?;
        self.editor_local_addr
            .get()
            .copied()
            .or(self.config.editor_bind)
    }

    fn new_gateway(config: &Config) -> ComfyGateway {
        let client = http_client(config.comfy.connect_timeout);
        ComfyGateway::new(client, config.primary_comfy().clone(), config.comfy.clone())
    }
}

/// The secrets a fleet's instances share, from the store.
pub struct FleetSecrets {
    pub token_key: Vec<u8>,
    pub fleet_token: config::Secret,
}

/// The client an instance fetches another's outputs with: no proxy (instances reach each other directly), a
/// bounded connect.
fn fleet_client() -> reqwest::Client {
    outbound::install_crypto_provider();
    // No redirect is followed: the fleet's token goes to the instance named in the store and nowhere else.
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

fn load_templates(config: &Config) -> jobs::templates::Templates {
    let Some(dir) = &config.templates_dir else {
        return jobs::templates::Templates::builtin();
    };
    let (templates, problems) = jobs::templates::Templates::with_folder(dir);
    for problem in problems {
        tracing::warn!(%problem, "a template was not loaded");
    }
    templates
}

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
    if let Some(webhooks) = state.jobs.webhooks() {
        background.spawn(webhooks.clone().run(background.clone()));
    }
    if state.store.engine() == config::Engine::Postgres {
        // Read before anything is served: an event stored while the pump is still connecting is sent, not lost.
        let from = state.store.last_event().await.unwrap_or(0);
        background.spawn(
            state
                .jobs
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
