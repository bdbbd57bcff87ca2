//! Black Forest Labs' FLUX API as it is: the models, their request shapes, defaults and prices ([`catalog`]) and
//! the HTTP client ([`client`]). The jobs that use it are [`crate::flux`]'s.

pub mod catalog;
pub mod client;
