//! The Comfy.org credentials a prompt can carry (`extra_data.api_key_comfy_org`, `extra_data.auth_token_comfy_org`;
//! ComfyUI's `SENSITIVE_EXTRA_DATA_KEYS`). They pay for API nodes, so they stay on the server: removed from every
//! prompt that passes the gateway and from every answer and WebSocket message that comes back (ComfyUI 0.3.64's
//! `GET /queue` returns each pending prompt's `extra_data` whole). Only an approved prompt carries one, the key of
//! its own job for Orchestrator's Comfy.org egress (`jobs::egress`); wherever a credential comes back (a failed
//! node's `current_inputs` in `execution_error` and `/history` carry hidden inputs, which V1 API nodes name
//! `comfy_api_key` and `auth_token`), it is removed, and the server's own key's value is masked.

use serde_json::Value;

/// The keys ComfyUI reads the credentials from.
pub const KEYS: [&str; 2] = ["api_key_comfy_org", "auth_token_comfy_org"];

/// A V1 API node's hidden input that ComfyUI fills with the Comfy.org key (`comfy_api_key`).
const V1_KEY_INPUT: &str = "comfy_api_key";

/// A cheap test before parsing: both keys end so, and a text without it needs no work.
const MARK: &[u8] = b"_comfy_org";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether `bytes` may hold a credential: one of the keys, the V1 input, or the server's own key's value.
pub fn may_hold(bytes: &[u8], secret: Option<&str>) -> bool {
    contains(bytes, MARK)
        || contains(bytes, V1_KEY_INPUT.as_bytes())
        || secret.is_some_and(|s| contains(bytes, s.as_bytes()))
}

/// Removes both keys (and the V1 input) wherever they appear in `value`, and masks the server's key wherever its
/// value is; answers whether anything changed.
pub fn strip(value: &mut Value, secret: Option<&str>) -> bool {
    match value {
        Value::Object(map) => {
            let mut removed = false;
            for key in KEYS.iter().chain([&V1_KEY_INPUT]) {
                removed |= map.remove(*key).is_some();
            }
            for child in map.values_mut() {
                removed |= strip(child, secret);
            }
            removed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |acc, v| strip(v, secret) | acc),
        Value::String(text) => match secret.filter(|s| !s.is_empty() && text.contains(*s)) {
            Some(secret) => {
                *text = text.replace(secret, "***");
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// A text with every credential removed or masked; `None` when it needs no change. A text that may hold one but
/// is not JSON has the server's key masked as plain text.
pub fn strip_text(text: &[u8], secret: Option<&str>) -> Option<Vec<u8>> {
    if !may_hold(text, secret) {
        return None;
    }
    match serde_json::from_slice::<Value>(text) {
        Ok(mut value) => {
            strip(&mut value, secret).then(|| serde_json::to_vec(&value).unwrap_or_default())
        }
        Err(_) => {
            let secret = secret.filter(|s| !s.is_empty())?;
            let text = String::from_utf8_lossy(text);
            text.contains(secret)
                .then(|| text.replace(secret, "***").into_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_go_wherever_they_are() {
        let mut queue = json!({"queue_running": [[0, "id", {}, {"client_id": "c", "api_key_comfy_org": "k",
            "auth_token_comfy_org": "t"}, ["9"]]], "queue_pending": []});
        assert!(strip(&mut queue, None));
        assert_eq!(queue["queue_running"][0][3], json!({"client_id": "c"}));
        assert!(!strip(&mut queue, None), "nothing left to remove");
    }

    #[test]
    fn the_servers_key_is_masked_wherever_its_value_is() {
        // A failed V1 API node: execution_error echoes its inputs, the hidden ones included.
        let mut error = json!({"type": "execution_error", "data": {"current_inputs": {
            "comfy_api_key": ["server-secret"], "auth_token": ["server-secret"], "prompt": ["a"]},
            "exception_message": "refused for key server-secret"}});
        assert!(strip(&mut error, Some("server-secret")));
        let text = error.to_string();
        assert!(!text.contains("server-secret"), "{text}");
        assert!(!text.contains("comfy_api_key"));
        assert_eq!(error["data"]["current_inputs"]["prompt"], json!(["a"]));
        assert_eq!(
            strip_text(b"plain server-secret text", Some("server-secret")).unwrap(),
            b"plain *** text"
        );
    }

    #[test]
    fn texts_without_the_mark_are_left_alone() {
        assert_eq!(strip_text(br#"{"a": 1}"#, None), None);
        assert_eq!(strip_text(b"not json _comfy_org", None), None);
        let out = strip_text(br#"{"extra_data": {"api_key_comfy_org": "secret"}}"#, None).unwrap();
        assert_eq!(out, br#"{"extra_data":{}}"#);
    }
}
