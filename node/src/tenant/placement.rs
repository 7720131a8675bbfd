//! Where a tenant's replicas go. The decision is pure and lives in `tetrad-core`
//! (`node/core/src/placement.rs`); this path re-exports it for the node's callers, which supply
//! the live topology and the load from the directory (`Node::place_for`).

pub use tetrad_core::placement::*;
