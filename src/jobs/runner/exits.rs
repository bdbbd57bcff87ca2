//! Crash forensics: the exit of the supervised ComfyUI that took a job down, for the job's error.

use std::time::Duration;

use tokio::sync::watch;

use super::Jobs;
use crate::service::{ExitRecord, ServiceState, ServiceStatus};

/// The supervised ComfyUI's address and its live status.
#[derive(Clone)]
pub(super) struct SupervisedBackend {
    pub(super) origin: String,
    pub(super) status: watch::Receiver<ServiceStatus>,
}

/// How long a lost job waits for the supervisor to record the exit that took it down.
const EXIT_RECORD_WAIT: Duration = Duration::from_secs(4);

impl Jobs {
    /// The exit of the supervised ComfyUI that ended this job's run, if it was one: waits a moment for the
    /// supervisor, which records an exit only after the process and its output are gone.
    pub(in crate::jobs) async fn exit_that_ended(&self, id: &str) -> Option<ExitRecord> {
        let supervised = self.supervised.as_ref()?;
        let job = self.store().job(id).await.ok()??;
        if job.backend_url.as_deref() != Some(supervised.origin.as_str()) {
            return None;
        }
        let began = job.started_at.as_deref().unwrap_or(&job.created_at);
        let began = chrono::DateTime::parse_from_rfc3339(began).ok()?.to_utc();
        let ended_it = |status: &ServiceStatus| {
            status
                .last_exit
                .as_ref()
                .filter(|exit| exit.at >= began)
                .cloned()
        };
        let now = supervised.status.borrow().clone();
        if let Some(exit) = ended_it(&now) {
            return Some(exit);
        }
        let same_run_alive = now.status == ServiceState::Running
            && now
                .since
                .as_deref()
                .and_then(|since| chrono::DateTime::parse_from_rfc3339(since).ok())
                .is_some_and(|since| since.to_utc() <= began);
        let never_ran = now.status == ServiceState::Stopped && now.last_exit.is_none();
        // "Running since before the job" may be the supervisor not having seen the exit yet (the job's socket closed
        // first): only a ComfyUI that still answers is the same run, alive, and took nothing down.
        if never_ran || (same_run_alive && self.answers(&supervised.origin).await) {
            return None;
        }
        let mut status = supervised.status.clone();
        let found = tokio::time::timeout(
            EXIT_RECORD_WAIT,
            status.wait_for(|status| ended_it(status).is_some()),
        )
        .await;
        match found {
            Ok(Ok(status)) => ended_it(&status),
            _ => None,
        }
    }
}

impl Jobs {
    /// Whether the backend at `origin` answers within a second.
    async fn answers(&self, origin: &str) -> bool {
        match self
            .backends
            .iter()
            .find(|b| b.backend().origin() == origin)
        {
            Some(backend) => backend.probe(Duration::from_secs(1)).await,
            None => false,
        }
    }
}

/// "was killed by signal 9 after 12.3 s", for a job's error message.
pub(super) fn describe_exit(exit: &ExitRecord) -> String {
    let how = match (exit.cause, exit.signal, exit.code) {
        (crate::service::ExitCause::Unresponsive, _, _) => {
            "stopped answering and was ended".to_owned()
        }
        (_, Some(signal), _) => format!("was killed by signal {signal}"),
        (_, None, Some(code)) => format!("exited with code {code}"),
        (_, None, None) => "exited".to_owned(),
    };
    format!("{how} after {:.1} s", exit.uptime_ms as f64 / 1000.0)
}
