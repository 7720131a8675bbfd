//! A node's durable store: append-only files for every group's Raft log, one redb database for
//! votes, purge markers and state machines, plus content-addressed chunk files for WAL bytes, all
//! through the disk seam.

pub mod byte_buf;
pub mod chunks;
pub mod log_files;
pub mod raft_log;
pub mod store;
pub mod versioned;

pub use store::{Store, StoreError};
