//! The paid providers' settings: whether generation is allowed, FLUX (Black Forest Labs), Comfy.org's paid nodes
//! and v0.

use std::time::Duration;

use super::Limits;
use crate::config::{ComfyOrgConfig, FluxConfig, Secret, Settings, V0Config};

impl Settings {
    /// FLUX's, Comfy.org's and v0's settings; their problems pushed in the order of the fields.
    pub(super) fn providers(
        &self,
        limits: &Limits,
        problems: &mut Vec<String>,
    ) -> (FluxConfig, ComfyOrgConfig, V0Config) {
        let allow_generation = match self.allow_generation.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" | "" => false,
            other => {
                problems.push(format!(
                    "{} = {other:?}: expected true or false",
                    Settings::name_of("allow_generation")
                ));
                false
            }
        };
        let daily_budget_micros = dollars(
            "flux_daily_budget_usd",
            &self.flux_daily_budget_usd,
            "5 or 2.50",
            problems,
        );
        let paid_node_max_micros = dollars(
            "comfy_paid_node_max_usd",
            &self.comfy_paid_node_max_usd,
            "1 or 0.50",
            problems,
        );
        let bfl_base_url =
            api_base("bfl_base_url", &self.bfl_base_url, problems).unwrap_or_default();
        let v0_base_url = api_base("v0_base_url", &self.v0_base_url, problems)
            // The version is part of the forwarded path (`/api/v0/v2/…` reaches v2), so a base given with
            // `/v1` is taken without it.
            .map(|url| url.strip_suffix("/v1").map(str::to_owned).unwrap_or(url))
            .unwrap_or_default();
        let flux = FluxConfig {
            allow_generation,
            api_key: optional_secret(&self.bfl_api_key),
            base_url: bfl_base_url,
            daily_budget_micros,
            confirm_ttl: Duration::from_secs(limits.confirm_ttl_secs),
            submit_timeout: Duration::from_secs(limits.submit_timeout_secs),
            poll_interval: Duration::from_millis(limits.poll_interval_ms),
            poll_timeout: Duration::from_secs(limits.poll_timeout_secs),
        };
        let comfy_org = ComfyOrgConfig {
            api_key: optional_secret(&self.comfy_org_api_key),
            base_url: api_base("comfy_org_api_base", &self.comfy_org_api_base, problems)
                .unwrap_or_default(),
            paid_node_max_micros,
        };
        let v0 = V0Config {
            api_key: optional_secret(&self.v0_api_key),
            base_url: v0_base_url,
            timeout: Duration::from_secs(limits.v0_timeout_secs),
        };
        (flux, comfy_org, v0)
    }
}

/// Dollars from 0 to 100000 (`raw` as given), in millionths of a dollar; `example` is what the problem suggests.
fn dollars(field: &str, raw: &str, example: &str, problems: &mut Vec<String>) -> i64 {
    match raw.trim().parse::<f64>() {
        Ok(usd) if usd.is_finite() && (0.0..=100_000.0).contains(&usd) => {
            (usd * 1_000_000.0).round() as i64
        }
        _ => {
            problems.push(format!(
                "{} = {raw:?}: expected dollars from 0 to 100000, such as {example}",
                Settings::name_of(field)
            ));
            0
        }
    }
}

/// An API's base URL checked by [`parse_api_base`]; `None`, and a problem, when it is not one.
fn api_base(field: &str, raw: &str, problems: &mut Vec<String>) -> Option<String> {
    match parse_api_base(raw) {
        Ok(url) => Some(url),
        Err(why) => {
            problems.push(format!("{} = {raw:?}: {why}", Settings::name_of(field)));
            None
        }
    }
}

/// An HTTP(S) API's base URL, checked and without a trailing slash, query or fragment.
fn parse_api_base(raw: &str) -> Result<String, &'static str> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|_| "expected a URL such as https://api.example.com")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("expected an http:// or https:// URL");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host");
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("expected no query, fragment or user name");
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A key, or `None` when it is unset or blank.
fn optional_secret(value: &Option<String>) -> Option<Secret> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(Secret::new)
}
