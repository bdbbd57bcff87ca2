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
    /// Submit a job (a template or a workflow file), follow it with a progress bar, print its output paths.
    Generate {
        /// `comfy` (a template or workflow on ComfyUI) or `flux` (a paid FLUX image: shows the dry run and its
        /// price, and asks before paying).
        #[arg(long, default_value = "comfy")]
        backend: String,
        /// The FLUX model, e.g. flux-pro-1.1 (the default) or flux-pro-1.1-ultra.
        #[arg(long)]
        model: Option<String>,
        /// Pay without being asked (a FLUX image, or a workflow with paid API nodes).
        #[arg(long)]
        yes: bool,
        /// The most a workflow with paid API nodes may spend, in dollars: needed when the graph does not fix how
        /// many times a paid node runs; Orchestrator stops the run there.
        #[arg(long)]
        max_usd: Option<f64>,
        /// A template name (see GET /api/templates), e.g. sdxl-t2i.
        #[arg(long, conflicts_with = "workflow")]
        template: Option<String>,
        /// An API-format workflow file instead of a template.
        #[arg(long)]
        workflow: Option<std::path::PathBuf>,
        /// The prompt (the template's `prompt` parameter).
        #[arg(long)]
        prompt: Option<String>,
        /// Another parameter, key=value (repeatable), e.g. --param steps=20.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// An input image for img2img and video templates, or the image a FLUX Kontext model edits.
        #[arg(long)]
        image: Option<std::path::PathBuf>,
    },
    /// The job store: list, show, cancel.
    Jobs {
        #[command(subcommand)]
        action: orchestrator::cli::JobsAction,
    },
    /// The studio's people: add, list, set-role, disable, enable, reset-password (on the configured store, whether
    /// or not a server runs).
    Users {
        #[command(subcommand)]
        action: orchestrator::cli::UsersAction,
    },
    /// The MCP server on stdin/stdout, for agents (Claude Desktop, IDEs); it calls the running server.
    Mcp,
    /// Print the health report: ComfyUI, its service, models, database, external APIs (exit code 1 when down).
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// ComfyUI's extra_model_paths.yaml (in COMFY_DIR): check it, write a default one, or put a backup back.
    Paths {
        #[command(subcommand)]
        action: orchestrator::cli::PathsAction,
    },
    /// ComfyUI as a service: install, uninstall, start, stop, status, logs.
    Service {
        /// Print the exact commands or unit file instead of carrying them out.
        #[arg(long, global = true)]
        dry_run: bool,
        #[command(subcommand)]
        action: orchestrator::cli::ServiceAction,
    },
    /// Print the API's OpenAPI 3.1 document (what GET /api/openapi.json serves); `--write` puts it in a file.
    Openapi {
        /// Write it to this file (e.g. docs/openapi.json) instead of printing it.
        #[arg(long, value_name = "FILE")]
        write: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let before: std::collections::HashSet<std::ffi::OsString> =
        std::env::vars_os().map(|(key, _)| key).collect();
    if let Err(problem) = load_dotenv() {
        eprintln!("invalid configuration (1 problem(s)):\n  - .env: {problem}");
        return ExitCode::from(2);
    }
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // The document is the same whatever the configuration, so it is printed even where no valid one exists.
    if let Some(Command::Openapi { write }) = &cli.command {
        return print_openapi(write.as_deref());
    }
    let config = match cli.settings.validate(std::io::stdout().is_terminal()) {
        Ok(mut config) => {
            config.sources = sources(&matches, &before);
            config
        }
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
    if let Command::Serve = command {
        orchestrator::telemetry::init(config.log_format);
    }
    run(command, config)
}

/// The OpenAPI document, on stdout or in the file `write`.
fn print_openapi(write: Option<&std::path::Path>) -> ExitCode {
    let document =
        orchestrator::http::openapi::to_json(orchestrator::http::router::openapi_document());
    match write {
        None => {
            // A reader that stops early (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), document.as_bytes());
            ExitCode::SUCCESS
        }
        Some(path) => match std::fs::write(path, document) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cannot write {}: {error}", path.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs the command with a valid configuration.
fn run(command: Command, config: Config) -> ExitCode {
    match command {
        Command::Serve => serve(config),
        Command::Config | Command::Openapi { .. } => {
            unreachable!("handled before the server starts")
        }
        Command::Service { action, dry_run } => {
            terminal(orchestrator::cli::service(&config, action, dry_run))
        }
        Command::Generate {
            backend,
            model,
            yes,
            max_usd,
            template,
            workflow,
            prompt,
            params,
            image,
        } => {
            let request = orchestrator::cli::GenerateRequest {
                backend: Some(backend),
                model,
                yes,
                max_usd,
                template,
                workflow_file: workflow,
                prompt,
                params,
                image,
            };
            terminal(orchestrator::cli::generate(&config, request))
        }
        Command::Mcp => terminal(async {
            orchestrator::mcp::serve_stdio(&config)
                .await
                .map(|()| String::new())
        }),
        Command::Doctor { json } => terminal(orchestrator::cli::doctor(&config, json)),
        Command::Paths { action } => terminal(async { orchestrator::cli::paths(&config, action) }),
        Command::Jobs { action } => terminal(orchestrator::cli::jobs(&config, action)),
        Command::Users { action } => terminal(orchestrator::cli::users(&config, action)),
    }
}

/// Runs a terminal command to its end: its answer on stdout (exit 0), or its error on stderr (exit 1).
fn terminal(command: impl std::future::Future<Output = Result<String, String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(text) => {
            // A command with nothing to say prints nothing: `orchestrator mcp` owns stdout for its messages, and
            // even a blank line there is a malformed MCP message.
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Where each setting came from: the command line, the environment, the `.env` file (a variable that was not in
/// the environment before `.env` was loaded), or nowhere (its default, not listed).
fn sources(
    matches: &clap::ArgMatches,
    before: &std::collections::HashSet<std::ffi::OsString>,
) -> std::collections::BTreeMap<String, &'static str> {
    use clap::parser::ValueSource;
    let command = <Cli as clap::CommandFactory>::command();
    let mut sources = std::collections::BTreeMap::new();
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        let id = arg.get_id().as_str();
        // A global flag given after the subcommand is recorded in the subcommand's matches.
        let found = std::iter::successors(Some(matches), |m| m.subcommand().map(|(_, sub)| sub))
            .filter_map(|m| m.try_get_raw(id).ok().flatten().and(m.value_source(id)))
            .find(|source| *source != ValueSource::DefaultValue);
        let source = match found {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) if !before.contains(std::ffi::OsStr::new(env)) => {
                "dotenv"
            }
            Some(ValueSource::EnvVariable) => "env",
            _ => continue,
        };
        sources.insert(env.to_owned(), source);
    }
    sources
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
