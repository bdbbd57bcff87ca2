//! One lock per `Idempotency-Key` in flight: repeats of a request wait for the first one's answer instead of
//! racing it. Shared by FLUX and paid ComfyUI jobs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An `Idempotency-Key` as Stripe takes them: 1 to 255 visible ASCII characters.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic())
}

/// What an `Idempotency-Key` binds to: the SHA-256 of the request's canonical text, in hex.
pub fn fingerprint(canonical: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

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
