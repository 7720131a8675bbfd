//! tetrad-core: the decisions of a tetrad node as plain values in, decisions out.
//!
//! Everything here is deterministic and performs no I/O: no clock is read (times are passed in),
//! nothing is sent or stored, no task is spawned. The node (`tetrad-node`) reads its clocks, disks
//! and peers, hands the values to these functions and carries out what they decide; the
//! simulator runs the same decisions through the node. The crate depends on serde and thiserror
//! only, so the compiler keeps it that way (`cargo tree -p tetrad-core`).

pub mod audit_buffer;
pub mod catalog;
pub mod control_plan;
pub mod directory;
pub mod lag_gate;
pub mod lease;
pub mod liveness_view;
pub mod log_pos;
pub mod membership_plan;
pub mod paging;
pub mod placement;
pub mod promotion;
pub mod records;
pub mod takeover_schedule;

pub use log_pos::LogPos;

/// A node's id in the cluster (the same type as the node's `seams::net::NodeId`).
pub type NodeId = u64;

/// A blake3 digest (the same type as the node's `storage::chunks::Hash`).
pub type Hash = [u8; 32];
