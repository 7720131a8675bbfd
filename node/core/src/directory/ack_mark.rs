//! Where a tenant's log ends, as a leader reports its acks and a sealed replica its durable log.

use serde::{Deserialize, Serialize};

use crate::LogPos;

/// A position in a tenant's log with the writes counted up to it. Positions compare by
/// (term, index), never by bare index ([`AckMark::position`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckMark {
    pub term: u64,
    pub index: u64,
    /// Writes (segment puts) in the tenant's history up to and including this entry.
    pub writes: u64,
    /// The leader's wall clock when it proposed the entry (ms).
    pub proposed_at_ms: u64,
}

impl AckMark {
    pub fn position(&self) -> LogPos {
        LogPos { term: self.term, index: self.index }
    }
}
