//! What a near-sync leader does when its lag gate closes: hold the ack (`block`) or commit the
//! switch to degraded and ack as async (`degrade`). DESIGN.md, "Lag gate".

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A near-sync tenant's choice at the lag gate.
///
/// It was a `String` ("block" or "degrade") before it was an enum, and records in the meta
/// group's log and snapshots hold it that way: it still encodes as that string, in postcard and
/// in JSON alike, and reads back only from one of the two spellings.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum OnLag {
    /// Writes wait at the gate (back pressure) until an older write is durable elsewhere.
    #[default]
    Block,
    /// The switch to degraded is committed first; the tenant then acks as async.
    Degrade,
}

/// A spelling of `on_lag` that is neither `block` nor `degrade`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("on_lag must be block or degrade, not {0:?}")]
pub struct BadOnLag(pub String);

impl OnLag {
    pub const ALL: [OnLag; 2] = [OnLag::Block, OnLag::Degrade];

    pub fn as_str(self) -> &'static str {
        match self {
            OnLag::Block => "block",
            OnLag::Degrade => "degrade",
        }
    }

    /// Reads a user's or a record's spelling.
    pub fn parse(s: &str) -> Result<OnLag, BadOnLag> {
        OnLag::ALL.into_iter().find(|o| o.as_str() == s).ok_or_else(|| BadOnLag(s.to_string()))
    }
}

impl std::fmt::Display for OnLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Debug shows the spelling in quotes, as the `String` it replaced did, so that logs and the
/// simulator's reports read as before.
impl std::fmt::Debug for OnLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Serialize for OnLag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OnLag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OnLag, D::Error> {
        // Owned: postcard can lend the bytes, serde_json cannot when the string has escapes.
        let s = String::deserialize(d)?;
        OnLag::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_others_are_refused() {
        for o in OnLag::ALL {
            assert_eq!(OnLag::parse(o.as_str()), Ok(o));
            assert_eq!(o.to_string(), o.as_str());
        }
        assert_eq!(OnLag::parse("Degrade"), Err(BadOnLag("Degrade".into())));
        assert_eq!(BadOnLag("x".into()).to_string(), "on_lag must be block or degrade, not \"x\"");
        assert_eq!(format!("{:?}", OnLag::Degrade), "\"degrade\"");
    }
}
