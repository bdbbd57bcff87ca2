//! ComfyUI's routes as its router (aiohttp) matches them: which one a gateway path is, and what each kind is
//! (the prompt route, the answers that echo prompts, the JSON routes, the file route). Orchestrator's own calls are
//! [`super::api`]'s.

/// The route ComfyUI's router (aiohttp) matches for `path` (below `/api/comfy`, as the client sent it): decoded,
/// `//` collapsed, without the `/api` prefix every route also answers under. An ordinary path is borrowed as it is.
pub fn comfy_route(path: &str) -> std::borrow::Cow<'_, str> {
    let mut route = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    while route.contains("//") {
        route = route.replace("//", "/").into();
    }
    match route {
        std::borrow::Cow::Borrowed(r) => r.strip_prefix("/api").unwrap_or(r).into(),
        std::borrow::Cow::Owned(r) => r.strip_prefix("/api").unwrap_or(&r).to_owned().into(),
    }
}

/// ComfyUI answers that echo prompts with their `extra_data`: `/queue`, `/history…`, and the newer `/jobs…` routes
/// (`/api/jobs`), and its log (`/internal/logs…`). `route` is a [`comfy_route`].
pub fn answer_may_echo_prompts(route: &str) -> bool {
    let route = route.trim_end_matches('/');
    // ComfyUI's own log (its editor's log panel) shows what nodes print: the server's key must not be in it.
    route == "/internal/logs"
        || route == "/internal/logs/raw"
        || route == "/queue"
        || route == "/history"
        || route.starts_with("/history/")
        || route == "/jobs"
        || route.starts_with("/jobs/")
}

/// ComfyUI's prompt route. `route` is a [`comfy_route`].
pub fn is_prompt_route(route: &str) -> bool {
    route.trim_end_matches('/') == "/prompt"
}

/// ComfyUI routes whose bodies are JSON; a browser can only send a cross-site body of another type. `route` is a
/// [`comfy_route`].
pub fn takes_json(route: &str) -> bool {
    matches!(
        route.trim_end_matches('/'),
        "/prompt" | "/queue" | "/history" | "/interrupt" | "/free"
    )
}

/// ComfyUI's file route (`/view`): inputs, outputs and temporary previews. `route` is a [`comfy_route`].
pub fn is_file_route(route: &str) -> bool {
    route.trim_end_matches('/') == "/view"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_that_echo_prompts() {
        for path in [
            "/queue",
            "/api/queue",
            "//queue",
            "/history",
            "/history/abc",
            "/api/jobs",
            "/api/jobs/x",
        ] {
            assert!(answer_may_echo_prompts(&comfy_route(path)), "{path}");
        }
        for path in ["/object_info", "/view", "/api/prompt", "/system_stats"] {
            assert!(!answer_may_echo_prompts(&comfy_route(path)), "{path}");
        }
    }

    #[test]
    fn every_spelling_of_the_prompt_route() {
        for path in [
            "/prompt",
            "/api/prompt",
            "/prompt/",
            "//prompt",
            "/%70rompt",
            "/ap%69/prompt",
        ] {
            assert!(is_prompt_route(&comfy_route(path)), "{path}");
        }
        for path in ["/queue", "/prompts", "/api/prompt/x", "/history"] {
            assert!(!is_prompt_route(&comfy_route(path)), "{path}");
        }
        assert!(matches!(
            comfy_route("/object_info"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn json_routes_and_the_file_route() {
        for path in ["/prompt", "/api/queue", "/history/", "/interrupt", "/free"] {
            assert!(takes_json(&comfy_route(path)), "{path}");
        }
        assert!(!takes_json(&comfy_route("/upload/image")));
        assert!(
            is_file_route(&comfy_route("/api/view")) && !is_file_route(&comfy_route("/viewer"))
        );
    }
}
