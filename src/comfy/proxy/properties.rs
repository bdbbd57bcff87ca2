//! Property tests: whatever path and query a client sends, the upstream URI has the configured scheme and authority
//! and a path that no decoding turns into a climb.

use super::*;
use http::uri::{Authority, Scheme};
use proptest::prelude::*;

/// Every decoding of `text` until it stops changing (lossy, as a server that decodes again would read it).
fn decodings(text: &str) -> Vec<String> {
    let mut all = vec![text.to_owned()];
    loop {
        let next = percent_decode_str(all.last().unwrap())
            .decode_utf8_lossy()
            .into_owned();
        if &next == all.last().unwrap() {
            return all;
        }
        all.push(next);
    }
}

/// Fragments that have broken path normalisers, mixed with arbitrary text.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "..", ".", "%2e", "%2E", "%252e", "%25252e", "%2525252e", "%c0%ae", "/", "//", "\\", "%2f", "%2F",
            "%252f", "%5c", "%5C", "%255c", "@", "#", "?", ":", "%00", "%0a", "%", "%ff", "%25", "evil.example",
            "http:", "//evil.example:80", "a", "prompt", "é", "\u{202e}", "\n", "\r", "\t", "\0", "\u{7f}",
            "\u{85}", "\u{ff0e}", "~", "%3f", "%23", "%40", ";", "&", "=",
        ])
        .prop_map(str::to_owned),
        1 => "[ -~]{0,6}",
        1 => any::<String>(),
    ]
}

fn hostile_path() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 0..12).prop_map(|parts| parts.concat())
}

fn configured() -> impl Strategy<Value = ComfyBackend> {
    prop::sample::select(vec![
        "127.0.0.1:8188",
        "localhost:8188",
        "[::1]:8188",
        "comfy.internal:80",
    ])
    .prop_map(|authority| ComfyBackend {
        scheme: Scheme::HTTP,
        authority: authority.parse::<Authority>().unwrap(),
    })
}

/// A gateway to `backend` with short deadlines, for tests (its ComfyUI need not run).
pub(crate) fn gateway(backend: ComfyBackend) -> ComfyGateway {
    let settings = ComfyConfig {
        backends: vec![backend.clone()],
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_body_bytes: 1024,
        silence_check: Duration::from_secs(15),
    };
    ComfyGateway::new(http_client(Duration::from_secs(1)), backend, settings)
}

/// The checks every accepted URI passes.
fn assert_confined(uri: &Uri, backend: &ComfyBackend, raw: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(uri.scheme(), Some(&backend.scheme), "{:?}", raw);
    prop_assert_eq!(uri.authority(), Some(&backend.authority), "{:?}", raw);
    // What goes on the wire, read back by whoever reads it next, names the same server and path.
    let reparsed: Uri = uri.to_string().parse().expect("a built URI parses");
    prop_assert_eq!(reparsed.authority(), Some(&backend.authority), "{:?}", raw);
    prop_assert_eq!(reparsed.path(), uri.path());
    let path = uri.path();
    prop_assert!(
        path.starts_with('/') && !path.starts_with("//"),
        "{raw:?} -> {path:?}"
    );
    for segment in path.split('/') {
        for decoded in decodings(segment) {
            prop_assert!(
                !decoded
                    .split(['/', '\\'])
                    .any(|part| part == "." || part == ".."),
                "{raw:?} -> {path:?}: {decoded:?} climbs"
            );
            prop_assert!(!decoded.contains('\\'), "{raw:?} -> {path:?}: backslash");
            prop_assert!(
                !decoded.chars().any(char::is_control),
                "{raw:?} -> {path:?}: control character"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn the_upstream_is_the_configured_one_and_the_path_stays_below_it(
        backend in configured(),
        raw in hostile_path(),
        query in prop::option::of(hostile_path()),
    ) {
        let gateway = gateway(backend.clone());
        match gateway.upstream_uri(&raw, query.as_deref()) {
            Ok(uri) => {
                assert_confined(&uri, &backend, &raw)?;
                // The path sent is the normalised one: nothing in it was read as a query or fragment.
                prop_assert_eq!(Some(uri.path().to_owned()), normalise_path(&raw), "{:?}", raw);
            }
            Err(ComfyError::Request(crate::problems::RequestError::InvalidPath { .. })) => {}
            Err(other) => prop_assert!(false, "{raw:?}: unexpected {other:?}"),
        }
    }

    /// A path that is already clean comes back unchanged, so the normaliser refuses only what it must.
    #[test]
    fn clean_paths_pass_unchanged(
        segments in prop::collection::vec("[A-Za-z0-9_\\-]{1,8}(\\.[a-z]{1,4})?", 0..6),
    ) {
        let path = format!("/{}", segments.join("/"));
        prop_assert_eq!(normalise_path(&path), Some(path.clone()));
    }

    /// Normalising is idempotent: a normalised path is its own normal form.
    #[test]
    fn normalising_twice_changes_nothing(raw in hostile_path()) {
        if let Some(once) = normalise_path(&raw) {
            prop_assert_eq!(normalise_path(&once), Some(once.clone()), "{:?}", raw);
        }
    }
}
