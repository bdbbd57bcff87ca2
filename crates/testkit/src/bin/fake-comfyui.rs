//! A fake ComfyUI as a program: for the benchmark, the browser tests, and as the child process the service tests
//! supervise (the integration tests also run it in-process).
//!
//! `fake-comfyui [ADDR] [--startup-delay-ms N] [--exit-immediately CODE] [--ignore-sigterm] [--spawn-child]
//! [--comfy-api-base URL] [--front-end-root DIR]` (`--comfy-api-base`: where paid API nodes call, as ComfyUI's
//! own flag) (`--front-end-root`: the folder of ComfyUI's frontend, e.g. `comfyui_frontend_package/static`, served
//! at `/` as ComfyUI does with its own flag of that name)
//! (`--spawn-child`: starts a long `sleep` of its own and prints its pid, as ComfyUI's custom nodes start helper
//! processes, so tests can see that ending ComfyUI ends its whole tree)
//! (`--model FOLDER/NAME`, repeatable: a model file installed, as `checkpoints/tiny-sd15.safetensors`)
//! (`--step-delay-ms N`: the pause between two replayed events of a run, so a page can watch it)
//! (`--pictures`: SaveImage writes a real 256×256 picture per run instead of a 1×1 PNG, for screenshots)
//! (default address `127.0.0.1:8188`). Switches at `POST /__fake/control {"hang": bool, "step_delay_ms": n,
//! "exit": code}`.

use std::time::Duration;

use testkit::fake_comfy::FakeComfy;

#[tokio::main]
async fn main() {
    let mut addr = "127.0.0.1:8188".to_owned();
    let (mut delay_ms, mut exit_code, mut ignore_sigterm) = (0u64, None::<i32>, false);
    let mut spawn_child = false;
    let mut comfy_api_base = None::<String>;
    let mut front_end_root = None::<std::path::PathBuf>;
    let (mut models, mut step_delay_ms) = (Vec::<(String, String)>::new(), 0u64);
    let mut pictures = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--startup-delay-ms" => {
                delay_ms = args.next().and_then(|v| v.parse().ok()).unwrap_or(0)
            }
            "--exit-immediately" => exit_code = args.next().and_then(|v| v.parse().ok()),
            "--ignore-sigterm" => ignore_sigterm = true,
            "--spawn-child" => spawn_child = true,
            "--comfy-api-base" => comfy_api_base = args.next(),
            "--front-end-root" => front_end_root = args.next().map(Into::into),
            "--model" => {
                let model = args.next().unwrap_or_default();
                match model.split_once('/') {
                    Some((folder, name)) => models.push((folder.to_owned(), name.to_owned())),
                    None => {
                        eprintln!("fake-comfyui: --model takes FOLDER/NAME, not {model:?}");
                        std::process::exit(2);
                    }
                }
            }
            "--pictures" => pictures = true,
            "--step-delay-ms" => {
                step_delay_ms = args.next().and_then(|v| v.parse().ok()).unwrap_or(0)
            }
            other => addr = other.to_owned(),
        }
    }
    // What ComfyUI prints first, so a log viewer has something to show.
    println!("Starting server (fake-comfyui, pid {})", std::process::id());
    if let Some(code) = exit_code {
        eprintln!("fake-comfyui: crashing at start-up with code {code}");
        std::process::exit(code);
    }
    // Kept for the life of the process: dropping a std Child neither kills nor waits for it.
    let _helper = spawn_child.then(|| {
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("fake-comfyui: cannot start its helper process");
        println!("fake-comfyui: helper process pid {}", child.id());
        child
    });
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("fake-comfyui: cannot listen on {addr}: {error}");
            std::process::exit(1);
        }
    };
    let installed: Vec<(&str, &str)> = models
        .iter()
        .map(|(folder, name)| (folder.as_str(), name.as_str()))
        .collect();
    let fake = FakeComfy::start_on_with_models(listener, &installed);
    fake.set_step_delay(Duration::from_millis(step_delay_ms));
    fake.set_pictures(pictures);
    fake.allow_exit_on_request();
    if let Some(base) = &comfy_api_base {
        fake.set_comfy_api_base(base);
    }
    if let Some(root) = front_end_root {
        // As ComfyUI's argument parser, which takes only an existing folder (exit code 2).
        if !root.is_dir() {
            eprintln!(
                "fake-comfyui: argument --front-end-root: invalid directory: {}",
                root.display()
            );
            std::process::exit(2);
        }
        println!("[Prompt Server] web root: {}", root.display());
        fake.set_front_end_root(root);
    }
    println!("To see the GUI go to: {}", fake.url());
    wait_for_stop(ignore_sigterm).await;
}

#[cfg(unix)]
async fn wait_for_stop(ignore_sigterm: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => {
                if !ignore_sigterm {
                    println!("fake-comfyui: SIGTERM, stopping");
                    return;
                }
                println!("fake-comfyui: SIGTERM ignored");
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_stop(_ignore_sigterm: bool) {
    let _ = tokio::signal::ctrl_c().await;
}
