//! `Idempotency-Key`s, one rule for every route that takes one (v1's jobs and confirmations, FLUX, the v2 API):
//! what a key may be, how long it is remembered, what it binds to, and one lock per key in flight, so repeats of a
//! request wait for the first one's answer instead of racing it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::TimeDelta;

/// How long a key is remembered: a day, as Stripe keeps them and as the Comfy API v2's contract says.
pub const WINDOW: TimeDelta = TimeDelta::hours(24);

/// What a key may be, as a refusal says it.
pub const RULE: &str =
    "must be 1 to 255 printable ASCII characters, spaces included (a UUID is a good key)";

/// A key that breaks [`RULE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{RULE}")]
pub struct BadKey;

/// A request's `Idempotency-Key`, checked on every route that takes one, before anything else about the request:
/// 1 to 255 bytes of printable ASCII, the space included (Stripe limits only the length, to 255; an HTTP field
/// value may hold a space).
pub fn key_of(headers: &http::HeaderMap) -> Result<Option<String>, BadKey> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.as_bytes();
    if (1..=255).contains(&key.len()) && key.iter().all(|b| (0x20..=0x7e).contains(b)) {
        Ok(Some(String::from_utf8_lossy(key).into_owned()))
    } else {
        Err(BadKey)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(value: &[u8]) -> Result<Option<String>, BadKey> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "idempotency-key",
            http::HeaderValue::from_bytes(value).unwrap(),
        );
        key_of(&headers)
    }

    #[test]
    fn one_to_255_printable_ascii_characters_spaces_included() {
        assert_eq!(key_of(&http::HeaderMap::new()), Ok(None));
        assert_eq!(key(b"order 42"), Ok(Some("order 42".into())));
        assert_eq!(key(b"~"), Ok(Some("~".into())));
        assert!(key(&[b'a'; 255]).unwrap().is_some());
        for bad in [
            &b""[..],
            &[b'a'; 256],
            &[b'a'; 300],
            b"tab\there",
            "é".as_bytes(),
        ] {
            assert_eq!(key(bad), Err(BadKey), "{bad:?}");
        }
    }
}
