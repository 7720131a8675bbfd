//! A position in a Raft log as tetrad compares them: by (term, index), never by bare index.
//! openraft's `LogId` stays inside the node's raft layer; decisions use this.

use serde::{Deserialize, Serialize};

/// A log position. The derived order compares the term first, then the index (field order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPos {
    pub term: u64,
    pub index: u64,
}

impl LogPos {
    pub fn new(term: u64, index: u64) -> Self {
        LogPos { term, index }
    }
}

impl std::fmt::Display for LogPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.term, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_term_wins_over_a_higher_index() {
        assert!(LogPos::new(4, 8) > LogPos::new(3, 12));
        assert!(LogPos::new(3, 12) > LogPos::new(3, 10));
        assert_eq!(LogPos::new(3, 10).max(LogPos::new(3, 10)), LogPos::new(3, 10));
    }

    proptest::proptest! {
        #[test]
        fn orders_as_the_term_index_pair(a: (u64, u64), b: (u64, u64)) {
            proptest::prop_assert_eq!(LogPos::new(a.0, a.1).cmp(&LogPos::new(b.0, b.1)), a.cmp(&b));
        }
    }
}
