//! The work that outlives a request: job followers, the dispatcher, paid submits, FLUX pollers, restart
//! reconciliation.
//!
//! All of it runs on the control runtime (the one that opened the store), under one task tracker, never on a
//! serving thread: a serving thread ends when its connections have drained, and work spawned there would be dropped
//! mid-flight, a paid submit included, leaving a job that may have been charged `needs_reconcile`. On a clean stop
//! [`Background::finish`] tells the waiting work to stop (followers, pollers and the dispatcher leave their jobs for
//! the next start's reconciliation) and waits for what is in flight (a submit, an output download) to end.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap to clone; every clone spawns on the same runtime and tracker.
#[derive(Clone)]
pub struct Background {
    /// The control runtime; `None` outside one (unit tests), where work runs on whatever runtime spawns it.
    handle: Option<Handle>,
    tracker: TaskTracker,
    stopping: CancellationToken,
}

impl Default for Background {
    fn default() -> Self {
        Self::new()
    }
}

impl Background {
    /// Background work on the current runtime, which must be the one that outlives the serving threads.
    pub fn new() -> Self {
        Self {
            handle: Handle::try_current().ok(),
            tracker: TaskTracker::new(),
            stopping: CancellationToken::new(),
        }
    }

    /// Runs `work` on the control runtime, tracked: a clean stop waits for it.
    pub fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.handle {
            Some(handle) => self.tracker.spawn_on(work, handle),
            None => self.tracker.spawn(work),
        }
    }

    /// Resolves when the server is stopping: work that only waits (for a WebSocket message, the next poll, a job to
    /// dispatch) returns then, and leaves its job to the next start's reconciliation.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await;
    }

    /// The clean stop: waiting work is told to stop and what is in flight is awaited, for at most `grace`.
    /// Answers whether everything ended in time.
    pub async fn finish(&self, grace: Duration) -> bool {
        self.stopping.cancel();
        self.tracker.close();
        let ended = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !ended {
            tracing::warn!(
                left = self.tracker.len(),
                "background work still running after {grace:?}; stopping without it"
            );
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stop_waits_for_work_in_flight_and_ends_waiting_work() {
        let background = Background::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        background.spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let _ = done_tx.send(());
        });
        let waiter = background.clone();
        let waited = background.spawn(async move {
            tokio::select! {
                () = waiter.stopping() => "stopped",
                () = tokio::time::sleep(Duration::from_secs(3600)) => "slept",
            }
        });
        assert!(background.finish(Duration::from_secs(30)).await);
        assert!(done_rx.await.is_ok(), "the work in flight finished");
        assert_eq!(waited.await.unwrap(), "stopped");

        let stuck = Background::new();
        stuck.spawn(std::future::pending::<()>());
        assert!(
            !stuck.finish(Duration::from_secs(1)).await,
            "the grace period bounds the wait"
        );
    }
}
