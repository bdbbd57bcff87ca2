//! Confirmation tokens: a dry run hands one out, and a paid call needs it back for the very same payload and price.
//!
//! A token is `v1.<expiry unix seconds>.<random id>.<HMAC-SHA256>` over the expiry, the id, the price and the
//! canonical payload, keyed with a secret drawn at start-up (on PostgreSQL, the fleet's, kept in the store, so a
//! token made by one instance is honoured by any). Any change to the payload or the price, an expired token or (on
//! SQLite) a token from before a restart is refused; the comparison is constant-time (ring's `hmac::verify`). The
//! store records the id of a token that paid, in the transaction that records the job, so a token pays once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Why a token was refused; each becomes a 409 with its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    Missing,
    Expired,
    /// Not a token this server issued for this payload and price.
    Mismatch,
    /// It already paid for a job.
    Used,
}

impl TokenProblem {
    pub fn code(self) -> crate::codes::Code {
        use crate::codes::Code;
        match self {
            Self::Missing => Code::ConfirmationRequired,
            Self::Expired => Code::ConfirmationExpired,
            Self::Mismatch => Code::ConfirmationMismatch,
            Self::Used => Code::ConfirmationUsed,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => {
                "A paid call needs the confirmToken of a dry run of this exact request: send it without dryRun first"
            }
            Self::Expired => {
                "The confirmToken has expired: run the dry run again and confirm the new one"
            }
            Self::Mismatch => {
                "The confirmToken does not match this request (the payload or its price changed, or the server \
                 restarted): run the dry run again"
            }
            Self::Used => {
                "This confirmToken already paid for a job; a token confirms one payment. Run the dry run again to \
                 pay for another image (or retry under the same Idempotency-Key to get the first answer back)"
            }
        }
    }
}

pub struct Confirmer {
    key: hmac::Key,
    ttl: Duration,
}

impl Confirmer {
    pub fn new(ttl: Duration) -> Self {
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .expect("the operating system's random source works");
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            ttl,
        }
    }

    /// With a given key: the fleet's, which every instance on one store shares.
    pub fn with_key(ttl: Duration, secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Before when a used token's record guards nothing and may be forgotten: a token used then has expired by
    /// now, its whole lifetime and an hour (the clocks of a fleet differ a little) having passed.
    pub fn forget_used_before(&self) -> String {
        let guarded = self.ttl + Duration::from_secs(3600);
        (chrono::Utc::now() - guarded).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    /// A token for `canonical` at `price_micros`, valid for the configured time from now.
    pub fn issue(&self, canonical: &str, price_micros: i64) -> String {
        let expiry = unix_now() + self.ttl.as_secs();
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the operating system's random source works");
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let tag = hmac::sign(
            &self.key,
            message(expiry, &nonce, canonical, price_micros).as_bytes(),
        );
        format!(
            "v1.{expiry}.{nonce}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// Checks a token; answers its id, which the store records so the token pays only once.
    pub fn check(
        &self,
        token: Option<&str>,
        canonical: &str,
        price_micros: i64,
    ) -> Result<String, TokenProblem> {
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(TokenProblem::Missing)?;
        let mut parts = token.splitn(4, '.');
        let (Some("v1"), Some(expiry), Some(nonce), Some(tag)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenProblem::Mismatch);
        };
        let expiry: u64 = expiry.parse().map_err(|_| TokenProblem::Mismatch)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenProblem::Mismatch)?;
        hmac::verify(
            &self.key,
            message(expiry, nonce, canonical, price_micros).as_bytes(),
            &tag,
        )
        .map_err(|_| TokenProblem::Mismatch)?;
        if unix_now() > expiry {
            return Err(TokenProblem::Expired);
        }
        Ok(nonce.to_owned())
    }
}

fn message(expiry: u64, nonce: &str, canonical: &str, price_micros: i64) -> String {
    format!("orchestrator-flux-confirm\n{expiry}\n{nonce}\n{price_micros}\n{canonical}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_confirms_only_its_own_payload_and_price() {
        let confirmer = Confirmer::new(Duration::from_secs(600));
        let token = confirmer.issue("flux-pro-1.1\n{\"prompt\":\"a\"}", 40_000);
        let id = confirmer
            .check(Some(&token), "flux-pro-1.1\n{\"prompt\":\"a\"}", 40_000)
            .unwrap();
        let again = confirmer.issue("flux-pro-1.1\n{\"prompt\":\"a\"}", 40_000);
        assert_ne!(
            token, again,
            "every token has an id of its own, so each pays once"
        );
        let other_id = confirmer
            .check(Some(&again), "flux-pro-1.1\n{\"prompt\":\"a\"}", 40_000)
            .unwrap();
        assert_ne!(id, other_id);
        for (payload, price) in [
            ("flux-pro-1.1\n{\"prompt\":\"b\"}", 40_000),
            ("flux-pro-1.1\n{\"prompt\":\"a\"}", 60_000),
        ] {
            assert_eq!(
                confirmer.check(Some(&token), payload, price),
                Err(TokenProblem::Mismatch)
            );
        }
        assert_eq!(confirmer.check(None, "x", 1), Err(TokenProblem::Missing));
        assert_eq!(
            confirmer.check(Some("v1.99999999999.AAAA.AAAA"), "x", 1),
            Err(TokenProblem::Mismatch)
        );
        // Another server (or this one after a restart) has another key.
        let other = Confirmer::new(Duration::from_secs(600));
        assert_eq!(
            other.check(Some(&token), "flux-pro-1.1\n{\"prompt\":\"a\"}", 40_000),
            Err(TokenProblem::Mismatch)
        );
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let confirmer = Confirmer::new(Duration::from_secs(600));
        let expiry = unix_now() - 1;
        let tag = hmac::sign(&confirmer.key, message(expiry, "n", "p", 5).as_bytes());
        let token = format!("v1.{expiry}.n.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(
            confirmer.check(Some(&token), "p", 5),
            Err(TokenProblem::Expired)
        );
    }
}
