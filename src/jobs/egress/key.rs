//! A job's own key for the Comfy.org egress: 32 random bytes, put into its approved prompt's `extra_data` and kept
//! in the store only as its BLAKE3 hash, so neither the store nor a backup opens the egress.

use base64::Engine;
use http::{HeaderMap, header};
use ring::rand::{SecureRandom, SystemRandom};

/// What every job key starts with: it tells a person reading ComfyUI's log that this is not a Comfy.org key.
const PREFIX: &str = "orch-job-";

/// A key a job's calls carry.
pub struct JobKey(String);

impl JobKey {
    pub fn new() -> Self {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random source works");
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Self(format!("{PREFIX}{text}"))
    }

    /// The key a call came with: `X-API-KEY` (what ComfyUI sends for `api_key_comfy_org`), else a bearer token.
    pub fn presented(headers: &HeaderMap) -> Option<Self> {
        let from_header = headers
            .get(super::API_KEY_HEADER)
            .and_then(|v| v.to_str().ok());
        let bearer = || {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        };
        let key = from_header.or_else(bearer)?.trim();
        (key.starts_with(PREFIX) && key.len() <= 128).then(|| Self(key.to_owned()))
    }

    /// What the store keeps and looks keys up by.
    pub fn hash(&self) -> String {
        blake3::hash(self.0.as_bytes()).to_hex().to_string()
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Default for JobKey {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobKey(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_in_either_header_and_hashed_the_same() {
        let key = JobKey::new();
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", key.expose().parse().unwrap());
        assert_eq!(JobKey::presented(&headers).unwrap().hash(), key.hash());
        let mut headers = HeaderMap::new();
        let bearer = format!("Bearer {}", key.expose());
        headers.insert(header::AUTHORIZATION, bearer.parse().unwrap());
        assert_eq!(JobKey::presented(&headers).unwrap().hash(), key.hash());
        assert_ne!(JobKey::new().hash(), key.hash());
    }

    #[test]
    fn anything_else_is_no_key() {
        let mut headers = HeaderMap::new();
        assert!(JobKey::presented(&headers).is_none());
        headers.insert("x-api-key", "comfyui-a-real-comfy-org-key".parse().unwrap());
        assert!(JobKey::presented(&headers).is_none());
    }
}
