//! A tenant's replication mode (DESIGN.md, "Replication modes") and its spelling.

use serde::{Deserialize, Serialize};

/// How a tenant replicates. The serde encoding is the variant (postcard: its index; JSON: its
/// name); users see [`Mode::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    Sync,
    NearSync,
    Async,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Sync, Mode::NearSync, Mode::Async];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::NearSync => "near-sync",
            Mode::Async => "async",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
        assert_eq!(Mode::parse("near-sync"), Some(Mode::NearSync));
        assert_eq!(Mode::parse("nearsync"), None);
    }
}
