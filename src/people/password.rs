//! Passwords, kept as argon2id hashes in PHC form (the `argon2` crate's defaults: OWASP's recommended cost),
//! checked in constant time; a password is 10 to 1024 characters.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use ring::rand::{SecureRandom, SystemRandom};

/// Why a password was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("a password is at least 10 characters")]
    TooShort,
    #[error("a password is at most 1024 characters")]
    TooLong,
    #[error("the password could not be hashed")]
    Hash,
}

/// The argon2id hash of `password`, with a salt of its own.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let length = password.chars().count();
    if length < 10 {
        return Err(PasswordError::TooShort);
    }
    if length > 1024 {
        return Err(PasswordError::TooLong);
    }
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PasswordError::Hash)?;
    let salt = SaltString::encode_b64(&bytes).map_err(|_| PasswordError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| PasswordError::Hash)
}

/// Whether `password` is the one `hash` was made from (a malformed hash matches nothing).
pub fn verify(hash: &str, password: &str) -> bool {
    if password.len() > 4096 {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_matches_its_hash_and_nothing_else() {
        let hash = hash("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify(&hash, "correct horse battery"));
        assert!(!verify(&hash, "correct horse battery "));
        assert!(!verify("not a hash", "correct horse battery"));
        assert_ne!(
            hash,
            super::hash("correct horse battery").unwrap(),
            "a salt each"
        );
    }

    #[test]
    fn a_short_password_is_refused() {
        assert!(matches!(hash("short"), Err(PasswordError::TooShort)));
    }
}
