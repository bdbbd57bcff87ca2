//! HTTP clients for the APIs Orchestrator calls out to (BFL, v0, webhooks): one TLS set-up, no redirects.

use std::time::Duration;

/// rustls needs one process-wide crypto provider; ring is the one compiled in.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client for a paid or remote API: no redirects followed, no proxy from the environment for loopback.
pub fn api_client(connect_timeout: Duration) -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("orchestrator/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS back-end initialises")
}

pub mod relay;
