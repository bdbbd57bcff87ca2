//! Generation jobs: the model, the money gate, templates and the runner. Their SQL is in [`crate::store`].

pub mod gate;
pub mod key_locks;
pub mod model;
pub mod paid;
pub mod price;
pub mod refusal;
pub mod runner;
pub mod templates;
pub mod webhooks;
