//! Generation jobs. Only [`store`] runs SQL.

pub mod model;
pub mod runner;
pub mod store;
pub mod templates;
