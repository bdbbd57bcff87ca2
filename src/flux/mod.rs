//! FLUX by Black Forest Labs: the model and price table ([`catalog`]), confirmation tokens ([`confirm`]), the HTTP
//! client ([`client`]) and the guarded service that records, reserves, submits and polls ([`service`]).

pub mod catalog;
pub mod client;
pub mod confirm;
pub mod error;
pub mod service;
