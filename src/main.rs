//! The `orchestrator` command: parses the command line, binds the socket and handles signals; everything else is
//! in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orchestrator::config::{Config, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "orchestrator",
    version,
    about = "Local control plane for ComfyUI and paid image APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the panel and the API (the default).
    Serve,
    /// Validate the configuration and print it, secrets masked; exit code 2 when it is invalid.
    Config,
}

fn main() -> ExitCode {
    if let Err(problem) = load_dotenv() {
        eprintln!("invalid configuration (1 problem(s)):\n  - .env: {problem}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let config = match cli.settings.validate(std::io::stdout().is_terminal()) {
        Ok(config) => config,
        Err(problems) => {
            eprint!("{problems}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Config = command {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    orchestrator::telemetry::init(config.log_format);

    match command {
        Command::Serve => serve(config),
        Command::Config => unreachable!("handled before the server starts"),
    }
}

/// Loads `.env` from the working folder into the environment; variables already set win.
fn load_dotenv() -> Result<(), String> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(dotenvy::Error::LineParse(line, index)) => {
            Err(format!("cannot parse {line:?} (at character {index})"))
        }
        Err(other) => Err(other.to_string()),
    }
}

fn serve(config: Config) -> ExitCode {
    let workers = config.workers;
    match orchestrator::run_per_core(config, workers, shutdown_signal()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            tracing::error!(error = %message, "Orchestrator stopped");
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

// mimalloc: the gateway allocates per request (headers, body frames, futures); glibc malloc cost ~7% of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
