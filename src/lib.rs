//! Orchestrator: the local control plane for AI image generation.
//!
//! Layout of the crate (each module's own `//!` says more; ARCHITECTURE.md has the map):
//! - [`config`]: settings from flags, environment and `.env`, validated at once; secrets redacted.
//! - [`paths`]: every filesystem location, derived from the configuration.
//! - [`fs_safe`]: names from elsewhere (a client, ComfyUI) turned into paths that stay inside their folder, links
//!   included; atomic writes.
//! - [`app`]: the application's shared state (`AppState`) wired from the configuration, and the health report.
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
//! - [`people`]: the studio's people: accounts, roles, argon2id passwords.
//! - [`assets`]: the Comfy API v2's assets: records over blobs named by their blake3 hash, and the `core/ASSET`
//!   references of a workflow, uploaded to the ComfyUI a job is sent to.
//! - [`service`]: ComfyUI as a service (supervised, systemd, Windows); the only code that starts processes.
//! - [`background`]: the work that outlives a request, under one tracker, stopped cleanly.
//! - [`client`]: the API as its clients (CLI, MCP, tests) call it.
//! - [`cli`]: the terminal commands; [`mcp`]: the MCP server.
//! - [`serve`]: the process's life: the store opened, background work started, the fleet joined, the listeners
//!   served, a clean stop.
//! - [`telemetry`]: log set-up.
//!
//! [`run`] serves on a listener the caller bound, so tests pass `127.0.0.1:0`; [`run_per_core`] is what the
//! binary runs: one single-threaded runtime per core.

pub use serve::{RunError, run, run_per_core, run_with_editor};

pub mod address;
pub mod app;
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
pub mod people;
pub mod problems;
pub mod serve;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod ui;
pub mod v0;
