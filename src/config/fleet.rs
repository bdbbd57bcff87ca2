//! `ORCH_INSTANCE_ID`, `ORCH_PUBLIC_URL`: this instance's name and address in a fleet of Orchestrators on one store.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{Engine, FleetConfig, Settings};

/// This instance's name and address in a fleet. A name is what a claim on a job records: 1 to 64 letters, digits,
/// `.`, `_` or `-`; by default the host's name and a hash of the data folder and the address it listens on: the
/// same after a restart, and different for two instances on one machine even when they share a data folder (two
/// processes cannot listen on one address).
pub(super) fn settings(
    instance_id: Option<&str>,
    public_url: Option<&str>,
    lease: Duration,
    (data_dir, bind): (&Path, &str),
    problems: &mut Vec<String>,
) -> FleetConfig {
    let valid = |id: &str| {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    let instance_id = match instance_id.map(str::trim).filter(|id| !id.is_empty()) {
        Some(id) if valid(id) => id.to_owned(),
        Some(id) => {
            problems.push(format!(
                "{} = {id:?}: 1 to 64 letters, digits, '.', '_' or '-'",
                Settings::name_of("instance_id")
            ));
            String::new()
        }
        None => {
            let host: String = whoami::hostname()
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .take(40)
                .collect();
            let place = format!("{}\n{bind}", data_dir.to_string_lossy());
            let digest = ring::digest::digest(&ring::digest::SHA256, place.as_bytes());
            let hash: String = digest.as_ref()[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if host.is_empty() {
                format!("orchestrator-{hash}")
            } else {
                format!("{host}-{hash}")
            }
        }
    };
    let public_url = match public_url.map(str::trim).filter(|u| !u.is_empty()) {
        None => None,
        Some(url) => match url.parse::<http::Uri>() {
            Ok(parsed)
                if matches!(parsed.scheme_str(), Some("http" | "https"))
                    && parsed.authority().is_some() =>
            {
                Some(url.trim_end_matches('/').to_owned())
            }
            _ => {
                problems.push(format!(
                    "{} = {url:?}: expected an http:// or https:// URL",
                    Settings::name_of("public_url")
                ));
                None
            }
        },
    };
    FleetConfig {
        instance_id,
        public_url,
        lease,
    }
}

/// The others reach an instance at its public URL, else at the address it listens on: an unspecified one
/// (0.0.0.0, ::) would send them, with the fleet's token, to their own port. `raw_bind` is `ORCH_BIND` as given.
pub(super) fn require_public_url(
    fleet: &FleetConfig,
    database_url: &str,
    bind: Option<SocketAddr>,
    raw_bind: &str,
    problems: &mut Vec<String>,
) {
    if Engine::of_url(database_url) == Some(Engine::Postgres)
        && fleet.public_url.is_none()
        && bind.is_some_and(|b| b.ip().is_unspecified())
    {
        problems.push(format!(
            "{}: required when a fleet (DATABASE_URL=postgres://…) listens on every address ({} = {}): \
             the other instances would reach this one, with the fleet's token, at their own address; set it to \
             the URL they reach this one at (e.g. http://10.0.0.5:3000)",
            Settings::name_of("public_url"),
            Settings::name_of("bind"),
            raw_bind
        ));
    }
}
