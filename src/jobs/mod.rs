//! Generation jobs. Only [`store`] runs SQL.

pub mod gate;
pub mod key_locks;
pub mod model;
pub mod paid;
pub mod price;
pub mod runner;
pub mod store;
pub mod templates;
