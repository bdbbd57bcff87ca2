//! Ignite: one action that brings ComfyUI up. Check whether it already answers (then nothing is started, so a
//! ComfyUI started by hand is used as it is), otherwise start the service and wait until `/system_stats` answers
//! or the deadline passes. Each phase is reported as it begins, for the panel's progress bar.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use super::ServiceControl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Checking,
    Starting,
    Waiting,
    Online,
    Error,
}

/// One progress report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Progress {
    pub phase: Phase,
    pub elapsed_ms: u64,
    /// Rough completion for a progress bar, 0 to 100.
    pub percent: u8,
    pub message: String,
}

/// What Ignite ended with.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = IgniteOutcome)]
pub struct Outcome {
    /// `online` or `offline`.
    #[schema(value_type = String)]
    pub comfy: &'static str,
    /// `service` when Orchestrator itself runs under a service manager, `dev` when started by hand.
    #[schema(value_type = String)]
    pub panel: &'static str,
    /// No separate worker process exists yet.
    #[schema(value_type = String)]
    pub worker: &'static str,
    pub elapsed_ms: u64,
    /// Whether Ignite started ComfyUI (false when it was already answering).
    pub started: bool,
    /// Why it is offline, when it is.
    pub error: Option<String>,
}

/// Runs Ignite. `probe` answers whether ComfyUI responds now; progress goes to `progress` (ignored when closed).
pub async fn ignite<P, F>(
    service: &ServiceControl,
    probe: P,
    deadline: Duration,
    progress: mpsc::UnboundedSender<Progress>,
) -> Outcome
where
    P: Fn() -> F,
    F: Future<Output = bool>,
{
    let started_at = Instant::now();
    let report = |phase: Phase, percent: u8, message: String| {
        let _ = progress.send(Progress {
            phase,
            elapsed_ms: started_at.elapsed().as_millis() as u64,
            percent,
            message,
        });
    };
    let outcome = |comfy, started, error: Option<String>| Outcome {
        comfy,
        panel: panel_mode(),
        worker: "n/a",
        elapsed_ms: started_at.elapsed().as_millis() as u64,
        started,
        error,
    };

    report(
        Phase::Checking,
        5,
        "Checking whether ComfyUI answers".into(),
    );
    if probe().await {
        report(Phase::Online, 100, "ComfyUI is already running".into());
        return outcome("online", false, None);
    }
    report(
        Phase::Starting,
        15,
        format!("Starting ComfyUI ({} backend)", service.name()),
    );
    if let Err(error) = service.start().await {
        report(Phase::Error, 100, error.to_string());
        return outcome("offline", false, Some(error.to_string()));
    }
    report(Phase::Waiting, 25, "Waiting for ComfyUI to answer".into());
    let mut next_report = Instant::now();
    while started_at.elapsed() < deadline {
        if probe().await {
            report(Phase::Online, 100, "ComfyUI is online".into());
            return outcome("online", true, None);
        }
        if next_report <= Instant::now() {
            // The bar moves towards 95% as the deadline nears; it never claims done before ComfyUI answers.
            let fraction = started_at.elapsed().as_secs_f64() / deadline.as_secs_f64();
            report(
                Phase::Waiting,
                25 + (70.0 * fraction.min(1.0)) as u8,
                "Waiting for ComfyUI to answer".into(),
            );
            next_report = Instant::now() + Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let message = format!(
        "ComfyUI did not answer within {} s; see its log",
        deadline.as_secs()
    );
    report(Phase::Error, 100, message.clone());
    outcome("offline", true, Some(message))
}

/// Whether Orchestrator runs under a service manager (systemd sets INVOCATION_ID; ORCH_AS_SERVICE for others).
fn panel_mode() -> &'static str {
    if std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("ORCH_AS_SERVICE").is_some()
    {
        "service"
    } else {
        "dev"
    }
}
