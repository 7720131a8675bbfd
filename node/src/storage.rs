//! A node's durable store: one redb database for every group's Raft log, vote and state, plus
//! content-addressed chunk files for WAL bytes, all through the disk seam.

pub mod byte_buf;
pub mod chunks;
pub mod store;

pub use store::{Store, StoreError};
