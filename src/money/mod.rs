//! Money, for every paid provider alike: the [`checkout`] every paid request passes, confirmation tokens
//! ([`confirm`]), `Idempotency-Key`s ([`keys`], and the claim-first protocol in [`claims`]) and why a paid request
//! was not sent ([`refusal`]). The transactions behind budgets and reservations are the store's (`store::money`).

pub mod checkout;
pub mod claims;
pub mod confirm;
pub mod keys;
pub mod refusal;

/// Dollars from the micro-dollars prices and charges are kept in.
pub fn usd(micros: i64) -> f64 {
    micros as f64 / 1_000_000.0
}

/// A person's cap on a paid run (`maxUsd`), in micro-dollars: more than nothing, at most $100,000.
pub fn cap_micros(max_usd: Option<f64>) -> Result<Option<i64>, refusal::Refusal> {
    match max_usd {
        None => Ok(None),
        Some(usd) if usd.is_finite() && usd > 0.0 && usd <= 100_000.0 => {
            Ok(Some((usd * 1_000_000.0).round() as i64))
        }
        Some(_) => Err(refusal::Refusal::invalid(
            "maxUsd",
            "must be a number of dollars above 0 and at most 100000",
        )),
    }
}
