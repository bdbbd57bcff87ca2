//! Generation jobs. Only [`store`] runs SQL.

pub mod store;
