//! tetrad's openraft type configuration and the commands every group replicates.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::runtime::TetradRuntime;
use crate::meta::state::{MetaCommand, MetaReply};
use crate::tenant::catalog::{TenantCommand, TenantReply};

/// One write, as replicated by a group's log. A tenant group carries `Tenant` commands and the
/// meta group `Meta` commands; one type keeps one log format and one network for both.
// Large only through `MetaCommand`'s records (see its allow in tetrad-core): a command lives
// from its proposal to its encoding and from decoding to apply, so boxing would add an
// allocation per command and keep nothing smaller.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Meta(MetaCommand),
    Tenant(TenantCommand),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Meta(c) => write!(f, "meta:{c:?}"),
            Command::Tenant(c) => write!(f, "tenant:{}", c.summary()),
        }
    }
}

// Large only through `MetaReply`'s records; a reply lives from apply to its caller.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// For blank and membership entries, and commands sent to the wrong kind of group.
    None,
    Meta(MetaReply),
    Tenant(TenantReply),
}

openraft::declare_raft_types!(
    /// The type configuration of every tetrad Raft group.
    pub TypeConfig:
        D = Command,
        R = Reply,
        Node = openraft::EmptyNode,
        AsyncRuntime = TetradRuntime,
        // Standard Raft: one leader per term (openraft's default, leader_id_adv, lets several nodes
        // lead one term in turn; the simulator's oracle and DESIGN.md speak of one leader per term).
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;
