//! One lock per `Idempotency-Key` in flight: repeats of a request wait for the first one's answer instead of
//! racing it. Shared by FLUX and paid ComfyUI jobs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct KeyLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl KeyLocks {
    /// Runs `work` with the key's lock held; the lock is forgotten once nobody waits for it.
    pub async fn with<T>(&self, key: &str, work: impl Future<Output = T>) -> T {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone();
        let answer = {
            let _held = lock.lock().await;
            work.await
        };
        drop(lock);
        let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if locks
            .get(key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(key);
        }
        answer
    }
}
