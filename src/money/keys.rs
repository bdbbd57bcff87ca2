//! `Idempotency-Key`s, one rule for every route that takes one (v1's jobs and confirmations, FLUX, the v2 API):
//! what a key may be, how long it is remembered and what it binds to. How a key is claimed and answered is
//! [`super::claims`].

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
