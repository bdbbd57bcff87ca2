//! The studio's people: accounts with a role, a password kept as an argon2id hash, disabled and enabled again.
//! The CLI (`orchestrator users …`) works on them through here, on the configured store, whether or not a server
//! runs; the store keeps them (`store::people`). With nobody added, Orchestrator stays as it was: one person on
//! their own machine, no sign-in on loopback.

pub mod password;

use crate::model::{Person, Role};
use crate::store::{Changed, Store, StoreError};

/// Why a change of the people was not made.
#[derive(Debug, thiserror::Error)]
pub enum PeopleError {
    #[error(
        "a name is 1 to 64 letters, digits, '.', '_', '-' or '@', starting with a letter or a digit"
    )]
    BadName,
    #[error("{name:?} is taken (names are the same whatever their case)")]
    Taken { name: String },
    #[error("nobody is called {name:?}")]
    NoSuchPerson { name: String },
    #[error(transparent)]
    Password(#[from] password::PasswordError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `name` can name a person: what a sign-in form, a log line and a URL carry without surprises.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_alphanumeric())
        && name.chars().count() <= 64
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// Adds a person with a password.
pub async fn add(
    store: &Store,
    name: &str,
    role: Role,
    password: &str,
) -> Result<Person, PeopleError> {
    if !valid_name(name) {
        return Err(PeopleError::BadName);
    }
    let hash = password::hash(password)?;
    store
        .add_person(name, role, Some(&hash))
        .await?
        .ok_or_else(|| PeopleError::Taken {
            name: name.to_owned(),
        })
}

pub async fn set_role(store: &Store, name: &str, role: Role) -> Result<(), PeopleError> {
    found(name, store.set_role(name, role).await?)
}

/// Disables a person (`true`) or enables them again.
pub async fn set_disabled(store: &Store, name: &str, disabled: bool) -> Result<(), PeopleError> {
    found(name, store.set_disabled(name, disabled).await?)
}

pub async fn reset_password(store: &Store, name: &str, password: &str) -> Result<(), PeopleError> {
    let hash = password::hash(password)?;
    found(name, store.set_password_hash(name, &hash).await?)
}

fn found(name: &str, changed: Changed) -> Result<(), PeopleError> {
    match changed {
        Changed::Done => Ok(()),
        Changed::NoSuchPerson => Err(PeopleError::NoSuchPerson {
            name: name.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_words() {
        for good in ["alice", "Bob.Smith", "li-wei_2", "ivan@studio", "Анна"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", " alice", "a b", "-x", "a/b", "a\u{0}", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn roles_are_ordered_and_read_in_any_case() {
        assert!(Role::Viewer < Role::Generator && Role::Approver < Role::Admin);
        assert_eq!(Role::parse("Approver"), Some(Role::Approver));
        assert_eq!(Role::parse("root"), None);
    }
}
