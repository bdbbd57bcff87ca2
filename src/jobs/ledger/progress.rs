//! Progress coalescing: a 1,000-step sampler reports about every step; listeners hear of it a few times a second.

use std::time::Duration;

use super::Ledger;
use crate::model::EventKind;
use crate::store::JobChange;

/// At most this often a progress event per job: a 1,000-step sampler sends about 4 a second, not 1,000.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl Ledger {
    /// Progress is written at most once per [`PROGRESS_EVERY`] per job: a progress change that comes sooner is held
    /// (the newest replacing the one held) and written when the time is up; a state change takes the held
    /// progress along. Answers the change to write now, if any.
    pub(super) fn coalesce(
        &self,
        id: &str,
        kind: EventKind,
        mut change: JobChange,
    ) -> Option<JobChange> {
        let mut pending = self
            .pending_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if kind != EventKind::Progress {
            if let Some(held) = pending.remove(id) {
                change.progress = change.progress.or(held.progress);
                change.current_node = change.current_node.or(held.current_node);
            }
            return Some(change);
        }
        let last = self.last_progress.lock().unwrap_or_else(|p| p.into_inner());
        let wait = last
            .get(id)
            .and_then(|at| PROGRESS_EVERY.checked_sub(at.elapsed()))
            .filter(|wait| !wait.is_zero());
        let Some(wait) = wait else {
            pending.remove(id);
            return Some(change);
        };
        if pending.insert(id.to_owned(), change).is_none() {
            let (ledger, id) = (self.clone(), id.to_owned());
            self.background.spawn(async move {
                tokio::time::sleep(wait).await;
                let held = ledger
                    .pending_progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(held) = held {
                    // Boxed: `change` awaits `coalesce`'s flush, which calls `change`.
                    Box::pin(ledger.change(&id, EventKind::Progress, held)).await;
                }
            });
        }
        None
    }
}
