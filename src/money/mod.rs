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
