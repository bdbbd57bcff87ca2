//! The clock as the store keeps it: times as RFC 3339 text (UTC, microseconds), days as `YYYY-MM-DD`.

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
