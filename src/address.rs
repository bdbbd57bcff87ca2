//! Addresses as a browser names them: a `Host` header split into name and port, and the editor's URL as a
//! browser on the panel reaches it. Used by the guard, the gateway and the panel alike.

use std::net::SocketAddr;

/// `host[:port]` → (host, port), accepting bracketed IPv6 literals. `None` when the value is malformed.
pub fn split_host_port(value: &str) -> Option<(&str, Option<u16>)> {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((ip, port));
    }
    match value.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => Some((name, Some(port.parse().ok()?))),
        Some(_) => None,
        None => Some((value, None)),
    }
}

/// The editor's address as a browser on the panel reaches it: the name the panel was opened under when the
/// editor listens there too (loopback, or every address), else the editor's own address.
pub fn editor_url(addr: SocketAddr, request_host: &str) -> String {
    let ip = addr.ip();
    let requested = split_host_port(request_host)
        .map(|(name, _)| name)
        .filter(|name| !name.is_empty());
    let loopback_name = |name: &str| {
        name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|i| i.is_loopback())
    };
    let name = match requested {
        Some(name) if ip.is_unspecified() || (ip.is_loopback() && loopback_name(name)) => {
            name.to_owned()
        }
        _ => ip.to_string(),
    };
    let name = if name.contains(':') {
        format!("[{name}]")
    } else {
        name
    };
    format!("http://{name}:{}/", addr.port())
}

/// Whether the browser's `Origin` names the same scheme-less authority the request was sent to.
pub fn same_origin(origin: &str, host: &str) -> bool {
    let Ok(uri) = origin.parse::<http::Uri>() else {
        return false;
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return false;
    };
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let Some((host_name, host_port)) = split_host_port(host) else {
        return false;
    };
    let origin_port = authority.port_u16().unwrap_or(default_port);
    let origin_host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    origin_host.eq_ignore_ascii_case(host_name) && origin_port == host_port.unwrap_or(default_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_editor_is_named_as_the_panel_was_reached() {
        let loopback: SocketAddr = "127.0.0.1:3001".parse().unwrap();
        assert_eq!(
            editor_url(loopback, "localhost:3000"),
            "http://localhost:3001/"
        );
        assert_eq!(
            editor_url(loopback, "127.0.0.1:3000"),
            "http://127.0.0.1:3001/"
        );
        assert_eq!(
            editor_url(loopback, "studio.lan:3000"),
            "http://127.0.0.1:3001/"
        );
        let every: SocketAddr = "0.0.0.0:3001".parse().unwrap();
        assert_eq!(
            editor_url(every, "studio.lan:3000"),
            "http://studio.lan:3001/"
        );
        let lan: SocketAddr = "192.168.1.5:3001".parse().unwrap();
        assert_eq!(
            editor_url(lan, "localhost:3000"),
            "http://192.168.1.5:3001/"
        );
        let v6: SocketAddr = "[::1]:3001".parse().unwrap();
        assert_eq!(editor_url(v6, "[::1]:3000"), "http://[::1]:3001/");
    }
}
