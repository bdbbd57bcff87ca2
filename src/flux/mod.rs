//! FLUX jobs: the guarded service that records, reserves, submits and polls ([`service`]) over BFL's API
//! ([`crate::bfl`]).

pub mod error;
pub mod service;
