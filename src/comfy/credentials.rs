//! The Comfy.org credentials a prompt can carry (`extra_data.api_key_comfy_org`, `extra_data.auth_token_comfy_org`;
//! ComfyUI's `SENSITIVE_EXTRA_DATA_KEYS`). They pay for API nodes, so they stay on the server: removed from every
//! prompt that passes the gateway and from every answer and WebSocket message that comes back (ComfyUI 0.3.64's
//! `GET /queue` returns each pending prompt's `extra_data` whole). Only Orchestrator's own `COMFY_ORG_API_KEY` goes
//! into a prompt, and only into an approved one.

use serde_json::Value;

/// The keys ComfyUI reads the credentials from.
pub const KEYS: [&str; 2] = ["api_key_comfy_org", "auth_token_comfy_org"];

/// A cheap test before parsing: both keys end so, and a text without it needs no work.
const MARK: &[u8] = b"_comfy_org";

/// Whether `bytes` may hold a credential key.
pub fn may_hold(bytes: &[u8]) -> bool {
    bytes.windows(MARK.len()).any(|w| w == MARK)
}

/// Removes both keys wherever they appear in `value`; answers whether anything was removed.
pub fn strip(value: &mut Value) -> bool {
    match value {
        Value::Object(map) => {
            let mut removed = false;
            for key in KEYS {
                removed |= map.remove(key).is_some();
            }
            for child in map.values_mut() {
                removed |= strip(child);
            }
            removed
        }
        Value::Array(items) => items.iter_mut().fold(false, |acc, v| strip(v) | acc),
        _ => false,
    }
}

/// A JSON text with the keys removed; `None` when it needs no change (or is not JSON, and so carries no key a
/// JSON client could read).
pub fn strip_text(text: &[u8]) -> Option<Vec<u8>> {
    if !may_hold(text) {
        return None;
    }
    let mut value: Value = serde_json::from_slice(text).ok()?;
    strip(&mut value).then(|| serde_json::to_vec(&value).unwrap_or_default())
}

/// ComfyUI answers that echo prompts with their `extra_data`, under either prefix: `/queue`, `/history…`, and the
/// newer `/jobs…` routes (`/api/jobs`).
pub fn answer_may_echo_prompts(route: &str) -> bool {
    let mut route = route.to_owned();
    while route.contains("//") {
        route = route.replace("//", "/");
    }
    let route = route.strip_prefix("/api").unwrap_or(&route);
    let route = route.trim_end_matches('/');
    route == "/queue"
        || route == "/history"
        || route.starts_with("/history/")
        || route == "/jobs"
        || route.starts_with("/jobs/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_go_wherever_they_are() {
        let mut queue = json!({"queue_running": [[0, "id", {}, {"client_id": "c", "api_key_comfy_org": "k",
            "auth_token_comfy_org": "t"}, ["9"]]], "queue_pending": []});
        assert!(strip(&mut queue));
        assert_eq!(queue["queue_running"][0][3], json!({"client_id": "c"}));
        assert!(!strip(&mut queue), "nothing left to remove");
    }

    #[test]
    fn texts_without_the_mark_are_left_alone() {
        assert_eq!(strip_text(br#"{"a": 1}"#), None);
        assert_eq!(strip_text(b"not json _comfy_org"), None);
        let out = strip_text(br#"{"extra_data": {"api_key_comfy_org": "secret"}}"#).unwrap();
        assert_eq!(out, br#"{"extra_data":{}}"#);
    }

    #[test]
    fn routes_that_echo_prompts() {
        for route in [
            "/queue",
            "/api/queue",
            "/history",
            "/history/abc",
            "/api/jobs",
            "/api/jobs/x",
        ] {
            assert!(answer_may_echo_prompts(route), "{route}");
        }
        for route in ["/object_info", "/view", "/api/prompt", "/system_stats"] {
            assert!(!answer_may_echo_prompts(route), "{route}");
        }
    }
}
