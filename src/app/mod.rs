//! The application: [`AppState`], what every request and background task shares, wired from the configuration
//! (the store, the gateways, jobs, the checkout, FLUX, v0, the service, the limits); [`status`], the health report
//! over all of it; [`limits`], the paid routes' per-client pace.

pub mod limits;
pub mod status;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use crate::comfy::models::ModelCache;
use crate::comfy::proxy::{ComfyGateway, http_client};
use crate::config::{self, Config};
use crate::paths::DataPaths;
use crate::store::Store;
use crate::{assets, background, flux, jobs, money, outbound, service, v0};

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
    /// Paid FLUX generation.
    pub flux: flux::service::Flux,
    pub v0: v0::V0Gateway,
    /// One for the process, so a client cannot multiply its allowance by the number of serving threads.
    pub paid_limiter: Arc<limits::PaidLimiter>,
    /// The same pace for paid prompts parked from the gateway, counted apart: a script flooding them does not
    /// lock its user out of confirming.
    pub parked_limiter: Arc<limits::PaidLimiter>,
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
        let money = jobs::gate::Money {
            models: models.clone(),
            gate: jobs::gate::Gate::new(
                confirmer.clone(),
                config.flux.allow_generation,
                config.comfy_org.paid_node_max_micros,
            ),
            egress: jobs::egress::Egress::new(store.clone(), &config.comfy_org),
            checkout: checkout.clone(),
        };
        let assets = assets::Assets::new(paths.assets(), paths.outputs(), store.clone());
        // One ledger for every backend's jobs: one order of events, one webhook sender.
        let mut ledger =
            jobs::ledger::Ledger::new(store.clone(), background, config.comfy_org.api_key.clone());
        if let Some(webhook) = &config.webhook {
            ledger = ledger.with_webhooks(jobs::webhooks::Webhooks::new(store.clone(), webhook));
        }
        let mut jobs =
            jobs::runner::Jobs::new(ledger.clone(), backends, paths.outputs(), money, assets);
        if let (Some(supervisor), Some(first)) =
            (service.supervisor(), config.comfy.backends.first())
        {
            jobs = jobs.with_supervised(first.origin(), supervisor.subscribe());
        }
        let templates = Arc::new(load_templates(&config));
        let flux = flux::service::Flux::new(config.flux.clone(), ledger, paths.outputs(), checkout);
        let v0 = v0::V0Gateway::new(config.v0.clone());
        let paid_limiter = Arc::new(limits::PaidLimiter::new(config.paid_rate_limit));
        let parked_limiter = Arc::new(limits::PaidLimiter::new(config.paid_rate_limit));
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
