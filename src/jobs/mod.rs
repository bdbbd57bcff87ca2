//! Generation jobs: the ledger, the money gate, templates and the runner. Their SQL is in [`crate::store`].

pub mod egress;
pub mod gate;
pub mod intake;
pub mod ledger;
pub mod paid;
pub mod recovery;
pub mod runner;
pub mod submit;
pub mod templates;
pub mod webhooks;
