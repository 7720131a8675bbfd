//! Exit codes and the error every command returns.
//!
//! Exit codes are part of tetradctl's interface: PostgreSQL's `archive_command` and
//! `restore_command` act on them, so each command maps its failures to a code explicitly and
//! never lets a generic error fall through to a default.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | `wal fetch` only: the segment certainly does not exist; `record get`: the key does not exist |
//! | 2 | bad usage or input, unknown tenant, refused request (e.g. a segment conflict) |
//! | 3 | no answer: the cluster could not be reached, or a push's outcome is unknown |
//! | 4 | `verify`: a member is unreachable, or holds a missing or damaged chunk no healthy copy could repair; `record put`/`delete`: the version condition failed |
//! | 128 | `wal fetch` only: anything else (so that PostgreSQL aborts recovery rather than ending it) |

use std::fmt;

use crate::client::GaveUp;
use crate::failure::{ErrorKind, Failure};

pub const OK: u8 = 0;
/// `wal fetch` only: the cluster answered that the segment does not exist.
pub const FETCH_NOT_FOUND: u8 = 1;
/// Bad usage or input, or a request the cluster refused for a reason the caller must fix.
pub const USAGE: u8 = 2;
/// No answer: the cluster could not be reached, or a write's outcome is unknown.
pub const NO_ANSWER: u8 = 3;
/// `verify` only: the verification ran, and a member was unreachable or holds a missing or
/// damaged chunk that could not be repaired.
pub const VERIFY_FAILED: u8 = 4;
/// `record put` and `record delete` only: the write's version condition did not hold (nothing
/// changed; the current version is printed).
pub const CONDITION_FAILED: u8 = 4;
/// `record get` only: the cluster answered that the key does not exist.
pub const RECORD_NOT_FOUND: u8 = 1;
/// `wal fetch` only: any failure other than "does not exist" and bad usage. PostgreSQL's
/// `restore_command` aborts recovery on a status above 125 instead of taking it as "not found"
/// and ending recovery early.
pub const FETCH_ABORT: u8 = 128;

/// Which command failed; the same failure maps to different codes for different commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Push,
    Fetch,
    /// Every other command (status, tenant, wal list, cluster).
    Other,
}

/// A command's failure: the message for the operator and the exit code.
#[derive(Debug)]
pub struct CmdError {
    pub code: u8,
    pub error: anyhow::Error,
}

pub type CmdResult<T = ()> = Result<T, CmdError>;

impl CmdError {
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        assert_ne!(code, OK, "a failure never exits 0");
        Self { code, error: error.into() }
    }

    pub fn msg(code: u8, message: impl fmt::Display + fmt::Debug + Send + Sync + 'static) -> Self {
        Self::new(code, anyhow::anyhow!("{message}"))
    }
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#} (exit code {})", self.error, self.code)
    }
}

/// Attaches an exit code to any error, for `?` in commands.
pub trait OrExit<T> {
    fn or_exit(self, code: u8) -> CmdResult<T>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for Result<T, E> {
    fn or_exit(self, code: u8) -> CmdResult<T> {
        self.map_err(|e| CmdError::new(code, e))
    }
}

/// The exit code for a command that gave up talking to the cluster. A push that gave up at the
/// deadline exits 3 whether or not it may have been stored; only its message differs.
pub fn code_for(op: Op, gave_up: &GaveUp) -> u8 {
    match gave_up {
        GaveUp::Refused(failure) => code_for_refusal(op, failure),
        GaveUp::Deadline { .. } | GaveUp::OutcomeUnknown(_) => match op {
            Op::Fetch => FETCH_ABORT,
            Op::Push | Op::Other => NO_ANSWER,
        },
    }
}

/// The exit code for an attempt whose failure stopped the command (see
/// [`crate::failure::Failure::decision`]).
fn code_for_refusal(op: Op, failure: &Failure) -> u8 {
    let kind = match failure {
        Failure::Node { kind, .. } => kind,
        // Transport failures and malformed replies are retried, so they only stop a command when
        // the node speaks a different API (e.g. `unimplemented`): not an answer about the data.
        _ => {
            return match op {
                Op::Fetch => FETCH_ABORT,
                Op::Push | Op::Other => NO_ANSWER,
            }
        }
    };
    match (op, kind) {
        (Op::Fetch, ErrorKind::UnknownSegment) => FETCH_NOT_FOUND,
        (Op::Fetch, ErrorKind::UnknownTenant | ErrorKind::BadRequest) => USAGE,
        (Op::Fetch, _) => FETCH_ABORT,
        (
            Op::Push | Op::Other,
            ErrorKind::UnknownTenant
            | ErrorKind::BadRequest
            | ErrorKind::SegmentConflict
            | ErrorKind::UnknownSegment
            | ErrorKind::UnknownRecord
            | ErrorKind::Unauthenticated
            | ErrorKind::PermissionDenied,
        ) => USAGE,
        (Op::Push | Op::Other, _) => NO_ANSWER,
    }
}

/// The error for a command that gave up: `what` says what was being done.
pub fn gave_up(op: Op, what: &str, gave_up: GaveUp) -> CmdError {
    let code = code_for(op, &gave_up);
    match &gave_up {
        GaveUp::Deadline { .. } => {
            CmdError::msg(code, format!("{what}: no node of the cluster answered in time ({gave_up})"))
        }
        GaveUp::Refused(_) => CmdError::msg(code, format!("{what}: {gave_up}")),
        GaveUp::OutcomeUnknown(_) => {
            CmdError::msg(code, format!("{what}: {gave_up}: it may or may not have happened; it was not sent again"))
        }
    }
}

#[cfg(test)]
mod tests {
    use tetrad_proto::{ERROR_KIND_KEY, LEADER_API_KEY};
    use tonic::Code;

    use super::*;
    use crate::route::Decision;

    /// What a command ends with when every attempt fails with `status`: the exit code, or None
    /// when the status is retried (the command then ends at its deadline).
    fn final_code(op: Op, code: Code, kind: Option<&str>) -> Option<u8> {
        let mut status = tonic::Status::new(code, "m");
        if let Some(k) = kind {
            status.metadata_mut().insert(ERROR_KIND_KEY, k.parse().expect("ascii"));
            status.metadata_mut().insert(LEADER_API_KEY, "127.0.0.1:9".parse().expect("ascii"));
        }
        let failure = Failure::from_status("a:1", &status);
        match failure.decision() {
            Decision::Stop => Some(code_for(op, &GaveUp::Refused(failure))),
            _ => None,
        }
    }

    #[test]
    fn exit_codes_for_every_error_kind_and_command() {
        use Op::*;
        let c = Code::FailedPrecondition;
        let table: &[(Op, Code, Option<&str>, Option<u8>)] = &[
            (Push, c, Some("unknown-tenant"), Some(USAGE)),
            (Push, c, Some("segment-conflict"), Some(USAGE)),
            (Push, c, Some("bad-request"), Some(USAGE)),
            (Push, c, Some("internal"), Some(NO_ANSWER)),
            (Push, c, Some("not-leader"), None),
            (Push, c, Some("unavailable"), None),
            (Push, c, Some("outcome-unknown"), None),
            (Push, Code::Unavailable, None, None),
            (Push, Code::Internal, None, None),
            (Push, Code::Unimplemented, None, Some(NO_ANSWER)),
            (Fetch, Code::NotFound, Some("unknown-segment"), Some(FETCH_NOT_FOUND)),
            (Fetch, Code::NotFound, Some("unknown-tenant"), Some(USAGE)),
            (Fetch, c, Some("bad-request"), Some(USAGE)),
            (Fetch, c, Some("internal"), Some(FETCH_ABORT)),
            (Fetch, c, Some("segment-conflict"), Some(FETCH_ABORT)),
            (Fetch, c, Some("a-future-kind"), Some(FETCH_ABORT)),
            // A NotFound without tetrad's metadata is not an answer about the segment.
            (Fetch, Code::NotFound, None, None),
            (Fetch, Code::Unimplemented, None, Some(FETCH_ABORT)),
            (Other, c, Some("unknown-tenant"), Some(USAGE)),
            (Other, c, Some("bad-request"), Some(USAGE)),
            (Other, c, Some("internal"), Some(NO_ANSWER)),
            (Other, c, Some("not-leader"), None),
        ];
        for (op, code, kind, want) in table {
            assert_eq!(final_code(*op, *code, *kind), *want, "{op:?} {code:?} {kind:?}");
        }
    }

    #[test]
    fn at_the_deadline_fetch_aborts_recovery_and_the_others_report_no_answer() {
        let end = GaveUp::Deadline { last: None };
        assert_eq!(code_for(Op::Fetch, &end), FETCH_ABORT);
        assert_eq!(code_for(Op::Push, &end), NO_ANSWER);
        assert_eq!(code_for(Op::Other, &end), NO_ANSWER);
    }

    #[test]
    fn no_failure_maps_to_exit_code_1_except_a_fetch_of_a_missing_segment() {
        let kinds = [
            "unknown-tenant",
            "unknown-segment",
            "segment-conflict",
            "bad-request",
            "internal",
            "not-leader",
            "unavailable",
            "outcome-unknown",
            "x",
        ];
        for op in [Op::Push, Op::Fetch, Op::Other] {
            for kind in kinds {
                if let Some(code) = final_code(op, Code::Aborted, Some(kind)) {
                    assert_eq!(code == FETCH_NOT_FOUND, op == Op::Fetch && kind == "unknown-segment", "{op:?} {kind}");
                }
            }
        }
    }
}
