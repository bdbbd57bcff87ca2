use super::*;

#[test]
fn normalises_or_refuses_paths() {
    let ok = [
        ("/system_stats", "/system_stats"),
        ("//system_stats", "/system_stats"),
        ("", "/"),
        ("/", "/"),
        ("/api/prompt", "/api/prompt"),
        (
            "/userdata/workflows%2Fa.json",
            "/userdata/workflows%2Fa.json",
        ),
        ("//evil.example/x", "/evil.example/x"),
        ("/@evil.example", "/@evil.example"),
        ("/http:/evil.example/", "/http:/evil.example/"),
        ("/extensions/", "/extensions/"),
    ];
    for (raw, want) in ok {
        assert_eq!(normalise_path(raw).as_deref(), Some(want), "{raw}");
    }
    for raw in [
        "/../etc/passwd",
        "/a/..",
        "/%2e%2e/x",
        "/%2E%2e/x",
        "/.%2e/x",
        "/a%2f..%2fb",
        "/%252e%252e/x",
        "/a\\b",
        "/a%5cb",
        "/./x",
        "/a%00b",
        "/%ff",
    ] {
        assert_eq!(normalise_path(raw), None, "{raw} should be refused");
    }
}

/// Found by `properties`: a dot encoded three times (`%25252e` decodes to `%252e`, `%2e`, `.`) passed, since
/// only two decodings were checked.
#[test]
fn dots_encoded_any_number_of_times_are_refused() {
    for raw in [
        "%25252e",
        "/a/%25252e%25252e/etc/passwd",
        "/%2525252e%2525252e",
        "/%25252f..",
        "/%25255c",
        "/%25250a",
    ] {
        assert_eq!(normalise_path(raw), None, "{raw} should be refused");
    }
    // More decodings than any real name needs: refused without decoding on.
    let deep = format!("/%{}2e", "25".repeat(20_000));
    assert_eq!(normalise_path(&deep), None);
    // A name with a literal `%25` in it (sent encoded) still passes.
    assert_eq!(
        normalise_path("/view/100%2525.png").as_deref(),
        Some("/view/100%2525.png")
    );
}

/// Found by `properties`: `..?` passed as a plain segment, and the URI built from it has the path `/..` (the
/// `?` starts the query); `#` likewise ends the path.
#[test]
fn a_raw_query_or_fragment_mark_in_the_path_is_refused() {
    for raw in ["..?", "/a/..?x", "/..#", "/a#/../b", "/x?y"] {
        assert_eq!(normalise_path(raw), None, "{raw} should be refused");
    }
    assert_eq!(
        normalise_path("/view/a%3Fb%23c.png").as_deref(),
        Some("/view/a%3Fb%23c.png")
    );
}

#[test]
fn hop_by_hop_headers_are_dropped() {
    let mut from = HeaderMap::new();
    for (k, v) in [
        ("connection", "keep-alive, x-secret-hop"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("proxy-authorization", "Basic x"),
        ("x-secret-hop", "1"),
        ("content-type", "application/json"),
        ("x-kept", "yes"),
    ] {
        from.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    remove_hop_by_hop(&mut from);
    let names: Vec<_> = from.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["content-type", "x-kept"]);
}

/// A foreign `Origin` is passed to ComfyUI as it is (its own check then refuses it), never made ComfyUI's own.
#[test]
fn only_an_origin_naming_its_host_is_rewritten() {
    let headers = |origin: &str| {
        let mut map = HeaderMap::new();
        map.insert(header::HOST, HeaderValue::from_static("127.0.0.1:3001"));
        map.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        map
    };
    assert!(origin_is_the_hosts(&headers("http://127.0.0.1:3001")));
    for foreign in [
        "http://evil.example",
        "http://127.0.0.1:3000",
        "null",
        "http://localhost:3001",
    ] {
        assert!(!origin_is_the_hosts(&headers(foreign)), "{foreign}");
    }
    assert!(!origin_is_the_hosts(&HeaderMap::new()));
}
