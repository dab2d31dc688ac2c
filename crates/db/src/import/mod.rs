//! `pgbackman db import-pgbackman`: [`read`] reads a PgBackMan 1.x catalog, [`apply`] writes it
//! here through the API functions (the decisions are `pgbackman_core::import`).

pub mod apply;
mod hosts;
pub mod read;

pub use apply::{Counts, ImportReport};
pub use read::{OldCatalog, read};
