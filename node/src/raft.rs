//! The thin layer over openraft: the only module that names openraft's types directly.
//!
//! An openraft upgrade (its 0.10 alphas break the API often) should touch only files under
//! `raft/`. The rest of the node talks to [`GroupRaft`] handles, [`types::Command`] and
//! [`types::Reply`].

pub mod group;
pub mod log_store;
pub mod network;
pub mod peers;
pub mod runtime;
pub mod state_machine;
pub mod types;
pub mod wire;

pub use types::{Command, Reply, TypeConfig};
