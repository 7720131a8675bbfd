//! Tenants: the WAL catalog each tenant group replicates and where its replicas go.

pub mod catalog;
pub mod epoch;
pub mod group_state;
pub mod placement;
