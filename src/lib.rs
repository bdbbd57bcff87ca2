//! Orchestrator: the local control plane for AI image generation.
//!
//! Layout of the crate:
//! - [`config`]: settings from flags, environment and `.env`, validated at once; secrets redacted.
//! - [`paths`]: every filesystem location, derived from the configuration.
//! - [`error`]: the one API error type and its JSON body.
//! - [`http`]: the router, the guard (Host allowlist, token, CSRF) and the request log. Only `http` knows axum's
//!   routing.
//! - [`comfy`]: the ComfyUI gateway (HTTP and WebSocket) and the model lists.
//! - [`jobs`]: the durable store; all SQL lives in `jobs::store`.
//! - [`telemetry`]: log set-up.
//!
//! [`run`] serves on a listener the caller bound, so tests pass `127.0.0.1:0`.

pub mod comfy;
pub mod config;
pub mod error;
pub mod http;
pub mod jobs;
pub mod paths;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use tokio::net::TcpListener;

use comfy::models::ModelCache;
use comfy::proxy::{ComfyGateway, http_client};
use config::Config;
use jobs::store::{Store, StoreError};
use paths::DataPaths;

/// Shared state of the running server; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub config: Config,
    pub paths: DataPaths,
    pub store: Store,
    /// The gateway to the first configured ComfyUI.
    pub gateway: ComfyGateway,
    pub models: ModelCache,
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(config: Config, paths: DataPaths, store: Store) -> Self {
        let client = http_client(config.comfy.connect_timeout);
        let gateway =
            ComfyGateway::new(client, config.primary_comfy().clone(), config.comfy.clone());
        Self(Arc::new(AppInner {
            config,
            paths,
            store,
            gateway,
            models: ModelCache::default(),
        }))
    }
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
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
}

/// Opens the store and serves the panel and API on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let paths = DataPaths::new(&config.data_dir);
    paths.ensure().map_err(|source| RunError::DataDir {
        path: paths.root().display().to_string(),
        source,
    })?;
    let store = Store::open(config.database_url.expose()).await?;
    let state = AppState::new(config, paths, store);
    let app = http::router::router(state.clone());

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, comfy = %state.gateway.backend().origin(), "Orchestrator listening");
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(RunError::Serve)?;
    state.store.close().await;
    Ok(())
}
