//! The clock as the store keeps it: times as RFC 3339 text (UTC, microseconds), days as `YYYY-MM-DD`; and the
//! doubling wait between tries.

/// How long to wait after the `attempts`-th try of something: `first`, doubled each time, at most `longest`.
pub fn backoff(
    first: std::time::Duration,
    attempts: i64,
    longest: std::time::Duration,
) -> std::time::Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 31)).unwrap_or(31);
    first
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(longest)
}

/// The UTC day a charge counts against, `YYYY-MM-DD`.
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// The current time as stored: RFC 3339, UTC, microseconds, so that text order is time order.
pub fn now() -> String {
    timestamp(chrono::Utc::now())
}

/// A time as the store keeps them (RFC 3339, UTC, microseconds): such strings sort as the times do.
pub fn timestamp(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
