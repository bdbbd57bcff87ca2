//! A fake ComfyUI on a port, for the benchmarks and the browser tests (the integration tests run it in-process).
//!
//! `fake-comfyui [ADDR]` (default `127.0.0.1:8188`); switches at `POST /__fake/control {"hang": bool,
//! "step_delay_ms": n}`.

use orchestrator::testkit::fake_comfy::FakeComfy;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8188".to_owned());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("fake-comfyui: cannot listen on {addr}: {error}");
            std::process::exit(1);
        }
    };
    let fake = FakeComfy::start_on(listener);
    println!("fake-comfyui listening on {}", fake.url());
    let _ = tokio::signal::ctrl_c().await;
}
