//! `JOB_WEBHOOK_URL`, `JOB_WEBHOOK_SECRET`, `JOB_WEBHOOK_RETRY_MS`: word of every ended job to a URL of the user's.

use std::time::Duration;

use super::{Secret, Settings, WebhookConfig};

/// The webhook settings, or `None` without a URL; each problem named by its variable.
pub(super) fn settings(
    url: Option<&str>,
    secret: Option<&str>,
    retry_ms: &str,
    problems: &mut Vec<String>,
) -> Option<WebhookConfig> {
    let url = url.map(str::trim).filter(|u| !u.is_empty())?;
    let parsed = reqwest::Url::parse(url).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if parsed.is_none() {
        problems.push(format!(
            "{}: expected an http:// or https:// URL such as https://hooks.example.com/orchestrator",
            Settings::name_of("job_webhook_url")
        ));
    }
    // Unsigned word of a job is word anyone could forge: a URL comes with a secret.
    let secret = secret.map(str::trim).filter(|s| !s.is_empty());
    if secret.is_none() {
        problems.push(format!(
            "{} is required with {}: every delivery is signed with it (HMAC-SHA256)",
            Settings::name_of("job_webhook_secret"),
            Settings::name_of("job_webhook_url")
        ));
    }
    let first_retry = match retry_ms.trim().parse::<u64>() {
        Ok(ms) if (1..=3_600_000).contains(&ms) => Duration::from_millis(ms),
        _ => {
            problems.push(format!(
                "{} = {retry_ms:?}: expected a whole number from 1 to 3600000",
                Settings::name_of("job_webhook_retry_ms")
            ));
            Duration::from_secs(1)
        }
    };
    Some(WebhookConfig {
        url: parsed?.to_string(),
        secret: Secret::new(secret?),
        first_retry,
    })
}
