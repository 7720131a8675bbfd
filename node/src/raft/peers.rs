//! Which storage incarnation each peer is known by, as the meta directory records it.
//!
//! Requests already carry the sender's incarnation and receivers refuse a stranger. Replies
//! must be checked too: a node whose disk was wiped comes back empty under its old id, and a
//! candidate that counted its vote *reply* could win an election without an entry that a quorum
//! had made durable. [`PeerBook`] is the node's copy of the directory's incarnations, learned
//! from the meta group's state machine on every apply, and read (without waiting) by every Raft
//! RPC client on the node.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::seams::net::NodeId;

#[derive(Clone, Default, Debug)]
pub struct PeerBook(Arc<RwLock<BTreeMap<NodeId, u64>>>);

impl PeerBook {
    /// Records the incarnations the directory knows; a node's registered incarnation never
    /// changes, so later entries only add.
    pub fn learn(&self, known: impl IntoIterator<Item = (NodeId, u64)>) {
        let mut book = self.0.write().expect("peer book lock");
        for (node, inc) in known {
            book.insert(node, inc);
        }
    }

    pub fn known(&self, node: NodeId) -> Option<u64> {
        self.0.read().expect("peer book lock").get(&node).copied()
    }

    /// Whether an answer from `node` speaking as `incarnation` may be believed. A node the
    /// directory does not know yet is believed (it is joining); a known node is believed only
    /// under its registered incarnation.
    pub fn check(&self, node: NodeId, incarnation: u64) -> Result<(), String> {
        if crate::planted::on(crate::planted::Bug::WipedNodeVotes) {
            return Ok(());
        }
        match self.known(node) {
            Some(k) if k != incarnation => Err(format!(
                "node {node} answered with storage incarnation {incarnation:016x}, but the directory knows it as {k:016x}: its storage was wiped; answer ignored"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_node_is_believed_only_under_its_registered_incarnation() {
        let b = PeerBook::default();
        assert!(b.check(3, 9).is_ok(), "unknown nodes are joining and are believed");
        b.learn([(3, 7)]);
        assert!(b.check(3, 7).is_ok());
        let e = b.check(3, 9).unwrap_err();
        assert!(e.contains("wiped"), "{e}");
        let shared = b.clone();
        shared.learn([(4, 1)]);
        assert_eq!(b.known(4), Some(1), "clones share one book");
    }
}
