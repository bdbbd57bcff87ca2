//! The event pump (PostgreSQL): a fleet's events, stored by any instance, handed to this instance's listeners.

use std::time::Duration;

use super::{JobEvent, Ledger};
use crate::model::Job;

impl Ledger {
    /// The event pump (PostgreSQL): every event stored, by any instance, handed to this instance's listeners in
    /// the order of its number. Woken by the store's notification (and by this instance's own events), it reads
    /// what is new from the events table, which is the truth; it also looks every few seconds, so a notification
    /// lost with a dropped connection delays an event, never loses it. `from`: the last event number when the server
    /// began serving, read before it did.
    pub async fn pump_events(self, database_url: String, from: i64) {
        let mut listener = match crate::store::EventWakeups::listen(&database_url).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for the fleet's events: looking every few seconds");
                None
            }
        };
        let mut last = from;
        loop {
            last = self.pump_once(last).await;
            let notified = async {
                match listener.as_mut() {
                    Some(listener) => listener.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = notified => {}
                () = self.event_wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
                () = self.background.stopping() => return,
            }
        }
    }

    /// Sends the listeners every stored event after `last`; answers the last number sent.
    async fn pump_once(&self, mut last: i64) -> i64 {
        const BATCH: u32 = 1000;
        loop {
            let events = match self.store.events_after(last, BATCH).await {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the fleet's events");
                    return last;
                }
            };
            let full = events.len() == BATCH as usize;
            for stored in events {
                last = stored.seq;
                let Ok(job) = serde_json::from_value::<Job>(stored.job) else {
                    continue;
                };
                let _ = self.events.send(JobEvent {
                    kind: stored.kind,
                    job,
                    seq: stored.seq,
                    job_seq: stored.job_seq,
                });
            }
            if !full {
                return last;
            }
        }
    }
}
