//! What one failed attempt to talk to a node means: the error kinds of tetrad's API contract
//! (proto/tetrad.proto) and the decision each failure leads to. Pure: no I/O.
//!
//! Only a node's own answer is definitive, and a node's answer always carries the `tetrad-error`
//! metadata. A status without it came from the transport (a reset stream, a dropped connection,
//! an HTTP/2 error) or from something that is not a tetrad node, so it is retried like a lost
//! connection, never taken as an answer about the data.

use std::fmt;

use tetrad_proto::{ERROR_KIND_KEY, LEADER_API_KEY};
use tonic::Code;

use crate::route::Decision;

/// The `tetrad-error` metadata values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    UnknownTenant,
    UnknownSegment,
    UnknownRecord,
    SegmentConflict,
    BadRequest,
    NotLeader,
    Unavailable,
    OutcomeUnknown,
    Internal,
    /// The caller's certificate carries no readable role.
    Unauthenticated,
    /// The caller's role does not allow the request.
    PermissionDenied,
    /// A value this tetradctl does not know (a newer server): handled as `internal`.
    Unrecognized(String),
}

impl ErrorKind {
    pub fn parse(s: &str) -> Self {
        match s {
            "unknown-tenant" => Self::UnknownTenant,
            "unknown-segment" => Self::UnknownSegment,
            "unknown-record" => Self::UnknownRecord,
            "segment-conflict" => Self::SegmentConflict,
            "bad-request" => Self::BadRequest,
            "not-leader" => Self::NotLeader,
            "unavailable" => Self::Unavailable,
            "outcome-unknown" => Self::OutcomeUnknown,
            "internal" => Self::Internal,
            "unauthenticated" => Self::Unauthenticated,
            "permission-denied" => Self::PermissionDenied,
            other => Self::Unrecognized(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::UnknownTenant => "unknown-tenant",
            Self::UnknownSegment => "unknown-segment",
            Self::UnknownRecord => "unknown-record",
            Self::SegmentConflict => "segment-conflict",
            Self::BadRequest => "bad-request",
            Self::NotLeader => "not-leader",
            Self::Unavailable => "unavailable",
            Self::OutcomeUnknown => "outcome-unknown",
            Self::Internal => "internal",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission-denied",
            Self::Unrecognized(s) => s,
        }
    }
}

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No connection could be made, so nothing was sent.
    Connect { addr: String, reason: String },
    /// The attempt's own time limit passed; the node may be hung.
    AttemptTimeout { addr: String },
    /// A node answered with one of tetrad's errors.
    Node { addr: String, kind: ErrorKind, leader: Option<String>, message: String },
    /// The transport failed, or a status arrived without tetrad's metadata.
    Transport { addr: String, code: Code, message: String },
    /// The node's reply broke the protocol (e.g. a fetch whose bytes do not match its header).
    BadReply { addr: String, reason: String },
}

impl Failure {
    pub fn from_status(addr: &str, status: &tonic::Status) -> Self {
        let meta = status.metadata();
        let text = |key: &str| meta.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
        match text(ERROR_KIND_KEY) {
            Some(kind) => Failure::Node {
                addr: addr.to_owned(),
                kind: ErrorKind::parse(&kind),
                leader: text(LEADER_API_KEY).filter(|l| !l.is_empty()),
                message: status.message().to_owned(),
            },
            None => {
                Failure::Transport { addr: addr.to_owned(), code: status.code(), message: status.message().to_owned() }
            }
        }
    }

    pub fn addr(&self) -> &str {
        match self {
            Failure::Connect { addr, .. }
            | Failure::AttemptTimeout { addr }
            | Failure::Node { addr, .. }
            | Failure::Transport { addr, .. }
            | Failure::BadReply { addr, .. } => addr,
        }
    }

    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Failure::Node { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// What to do next. Every operation tetradctl sends with [`crate::client::Session::unary`] is
    /// idempotent (a push of the same name and bytes included), so anything short of a definitive
    /// answer is retried. The two that are not (switchover, manual failover) go through
    /// [`crate::client::Session::unary_at_most_once`], which also consults
    /// [`Failure::may_have_stored`] and stops where this would retry.
    pub fn decision(&self) -> Decision {
        match self {
            Failure::Connect { .. } | Failure::AttemptTimeout { .. } | Failure::BadReply { .. } => {
                Decision::TryElsewhere
            }
            // `unimplemented` means the peer does not speak this API; asking again will not help.
            Failure::Transport { code: Code::Unimplemented, .. } => Decision::Stop,
            Failure::Transport { .. } => Decision::TryElsewhere,
            Failure::Node { kind, leader, .. } => match kind {
                ErrorKind::NotLeader => match leader {
                    Some(addr) => Decision::Redirect(addr.clone()),
                    None => Decision::TryElsewhere,
                },
                // The right node, but it cannot serve now (e.g. an election is running).
                ErrorKind::Unavailable | ErrorKind::OutcomeUnknown => Decision::Backoff,
                ErrorKind::UnknownTenant
                | ErrorKind::UnknownSegment
                | ErrorKind::UnknownRecord
                | ErrorKind::SegmentConflict
                | ErrorKind::BadRequest
                | ErrorKind::Internal
                | ErrorKind::Unauthenticated
                | ErrorKind::PermissionDenied
                | ErrorKind::Unrecognized(_) => Decision::Stop,
            },
        }
    }

    /// Whether a write (or any request that changes something) whose whole request was sent may
    /// have taken effect despite this failure. Only answers that say the node did nothing rule it
    /// out.
    pub fn may_have_stored(&self) -> bool {
        !matches!(
            self.kind(),
            Some(
                ErrorKind::NotLeader
                    | ErrorKind::BadRequest
                    | ErrorKind::UnknownTenant
                    | ErrorKind::SegmentConflict
                    | ErrorKind::UnknownSegment
                    | ErrorKind::UnknownRecord
                    | ErrorKind::Unauthenticated
                    | ErrorKind::PermissionDenied
            )
        ) && !matches!(self, Failure::Connect { .. })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect { addr, reason } => write!(f, "cannot connect to {addr}: {reason}"),
            Failure::AttemptTimeout { addr } => write!(f, "{addr} did not answer in time"),
            Failure::Node { addr, kind, leader, message } => {
                write!(f, "{addr} answered {}: {message}", kind.as_str())?;
                if let Some(l) = leader {
                    write!(f, " (leader: {l})")?;
                }
                Ok(())
            }
            Failure::Transport { addr, code, message } => {
                write!(f, "connection to {addr} failed ({code:?}): {message}")
            }
            Failure::BadReply { addr, reason } => write!(f, "{addr} sent a bad reply: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, kind: Option<&str>, leader: Option<&str>) -> tonic::Status {
        let mut s = tonic::Status::new(code, "msg");
        if let Some(k) = kind {
            s.metadata_mut().insert(ERROR_KIND_KEY, k.parse().expect("ascii"));
        }
        if let Some(l) = leader {
            s.metadata_mut().insert(LEADER_API_KEY, l.parse().expect("ascii"));
        }
        s
    }

    #[test]
    fn not_leader_with_a_hint_redirects_there() {
        let f = Failure::from_status("a:1", &status(Code::FailedPrecondition, Some("not-leader"), Some("b:2")));
        assert_eq!(f.decision(), Decision::Redirect("b:2".into()));
    }

    #[test]
    fn not_leader_without_a_hint_tries_elsewhere() {
        let f = Failure::from_status("a:1", &status(Code::FailedPrecondition, Some("not-leader"), None));
        assert_eq!(f.decision(), Decision::TryElsewhere);
        let f = Failure::from_status("a:1", &status(Code::FailedPrecondition, Some("not-leader"), Some("")));
        assert_eq!(f.decision(), Decision::TryElsewhere, "an empty hint is no hint");
    }

    #[test]
    fn a_status_without_tetrad_metadata_is_the_transport_even_when_its_code_looks_final() {
        for code in [Code::NotFound, Code::Internal, Code::Unknown, Code::Unavailable, Code::InvalidArgument] {
            let f = Failure::from_status("a:1", &status(code, None, None));
            assert!(matches!(f, Failure::Transport { .. }), "{code:?}");
            assert_eq!(f.decision(), Decision::TryElsewhere, "{code:?}");
            assert!(f.may_have_stored(), "{code:?}");
        }
        let f = Failure::from_status("a:1", &status(Code::Unimplemented, None, None));
        assert_eq!(f.decision(), Decision::Stop);
    }

    #[test]
    fn every_error_kind_has_its_decision() {
        let cases = [
            ("unknown-tenant", Decision::Stop, false),
            ("unknown-segment", Decision::Stop, false),
            ("segment-conflict", Decision::Stop, false),
            ("bad-request", Decision::Stop, false),
            ("not-leader", Decision::TryElsewhere, false),
            ("unavailable", Decision::Backoff, true),
            ("outcome-unknown", Decision::Backoff, true),
            ("internal", Decision::Stop, true),
            ("something-new", Decision::Stop, true),
        ];
        for (kind, decision, maybe) in cases {
            let f = Failure::from_status("a:1", &status(Code::Aborted, Some(kind), None));
            assert_eq!(f.kind().map(|k| k.as_str()), Some(kind));
            assert_eq!(f.decision(), decision, "{kind}");
            assert_eq!(f.may_have_stored(), maybe, "{kind}");
        }
    }

    #[test]
    fn a_refused_connection_sent_nothing() {
        let f = Failure::Connect { addr: "a:1".into(), reason: "refused".into() };
        assert!(!f.may_have_stored());
        assert_eq!(f.decision(), Decision::TryElsewhere);
    }
}
