//! `wal push`: streams one segment (header, then 1 MiB data messages) and waits for the ack.
//!
//! A push is idempotent (same name, same bytes), so every failure short of a definitive answer is
//! retried, on the leader a node names or on the next node, until the command's deadline. What
//! the command can promise when it gives up depends on whether any attempt handed the whole
//! segment to the transport without a definitive refusal: then the segment may be stored, and
//! the answer is "outcome unknown", exit 3.

use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures::{Stream, StreamExt};
use tetrad_proto::v1::push_wal_request::Msg;
use tetrad_proto::v1::{PushHeader, PushWalReply, PushWalRequest};
use tokio::time::timeout_at;

use super::{CHUNK_BYTES, MAX_SEGMENT_BYTES};
use crate::client::{GaveUp, Session};
use crate::exit::{code_for, CmdError, CmdResult, Op, NO_ANSWER, USAGE};
use crate::failure::{ErrorKind, Failure};

/// A segment read from disk, ready to push (possibly several times).
#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    pub data: Arc<Vec<u8>>,
    /// blake3 of `data`, lowercase hex.
    pub blake3: String,
}

impl Segment {
    pub fn new(name: String, data: Vec<u8>) -> Self {
        let blake3 = blake3::hash(&data).to_hex().to_string();
        Self { name, data: Arc::new(data), blake3 }
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }
}

/// Reads the segment file; any problem is bad input (exit 2) and nothing is sent.
pub fn read_segment(path: &Path) -> CmdResult<Segment> {
    let bad = |why: String| CmdError::msg(USAGE, format!("cannot push {}: {why}; nothing was sent", path.display()));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("its file name is not valid UTF-8 text".into()))?
        .to_owned();
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("it is not a regular file".into()));
    }
    if meta.len() > MAX_SEGMENT_BYTES {
        return Err(bad(format!(
            "it is {} bytes, more than the largest WAL segment ({MAX_SEGMENT_BYTES})",
            meta.len()
        )));
    }
    let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    // The file may have changed between the two calls; the check must hold for what was read.
    if data.len() as u64 > MAX_SEGMENT_BYTES {
        return Err(bad("it grew beyond the largest WAL segment while being read".into()));
    }
    Ok(Segment::new(name, data))
}

/// The request stream: header, then the data in [`CHUNK_BYTES`] messages, copied one at a time.
/// `sent_all` becomes true once the transport has asked past the last message, i.e. the whole
/// segment was handed over and may reach the node.
fn request_stream(
    tenant: &str,
    seg: &Segment,
    sent_all: Arc<AtomicBool>,
) -> Pin<Box<dyn Stream<Item = PushWalRequest> + Send>> {
    let header = PushWalRequest {
        msg: Some(Msg::Header(PushHeader {
            tenant: tenant.to_owned(),
            name: seg.name.clone(),
            size: seg.size(),
            blake3: seg.blake3.clone(),
        })),
    };
    let data = Arc::clone(&seg.data);
    let chunks = data.len().div_ceil(CHUNK_BYTES);
    let body = futures::stream::iter(0..chunks).map(move |i| {
        let start = i * CHUNK_BYTES;
        let end = (start + CHUNK_BYTES).min(data.len());
        PushWalRequest { msg: Some(Msg::Data(data[start..end].to_vec())) }
    });
    let end = futures::stream::poll_fn(move |_| {
        sent_all.store(true, Ordering::SeqCst);
        Poll::Ready(None)
    });
    Box::pin(futures::stream::iter([header]).chain(body).chain(end))
}

/// Pushes until a node acks or refuses, or the deadline passes.
pub async fn push(session: &mut Session, tenant: &str, seg: &Segment) -> CmdResult<PushWalReply> {
    let mut maybe_stored = false;
    loop {
        let (addr, mut client) = match session.connect().await {
            Ok(c) => c,
            Err(g) => return Err(give_up(tenant, seg, g, maybe_stored)),
        };
        let sent_all = Arc::new(AtomicBool::new(false));
        let result =
            timeout_at(session.deadline(), client.push_wal(request_stream(tenant, seg, Arc::clone(&sent_all)))).await;
        let whole = sent_all.load(Ordering::SeqCst);
        match result {
            Ok(Ok(reply)) => {
                session.succeeded(&addr);
                let reply = reply.into_inner();
                check_ack(seg, &reply)?;
                return Ok(reply);
            }
            Ok(Err(status)) => {
                let failure = Failure::from_status(&addr, &status);
                maybe_stored |= whole && failure.may_have_stored();
                if let Err(g) = session.failed(failure) {
                    return Err(give_up(tenant, seg, g, maybe_stored));
                }
            }
            Err(_) => {
                maybe_stored |= whole;
                let g = session.deadline_passed();
                return Err(give_up(tenant, seg, g, maybe_stored));
            }
        }
    }
}

/// An ack for other bytes than ours would be a server bug; it must not pass as success.
fn check_ack(seg: &Segment, reply: &PushWalReply) -> CmdResult<()> {
    let hash_differs = !reply.blake3.is_empty() && !reply.blake3.eq_ignore_ascii_case(&seg.blake3);
    if reply.size != seg.size() || hash_differs {
        return Err(CmdError::msg(
            NO_ANSWER,
            format!(
                "the cluster acknowledged {} as {} bytes with blake3 {}, but the file has {} bytes with blake3 {}; outcome unknown (this is a bug in the server)",
                seg.name, reply.size, reply.blake3, seg.size(), seg.blake3
            ),
        ));
    }
    Ok(())
}

fn give_up(tenant: &str, seg: &Segment, g: GaveUp, maybe_stored: bool) -> CmdError {
    let code = code_for(Op::Push, &g);
    let name = &seg.name;
    let message = match &g {
        GaveUp::Refused(f) => match f {
            Failure::Node { kind: ErrorKind::SegmentConflict, .. } => format!(
                "segment {name} already exists in tenant {tenant} with different contents; the existing segment differs from {name} and nothing was changed"
            ),
            Failure::Node { kind: ErrorKind::UnknownTenant, .. } => {
                format!("tenant {tenant} does not exist; nothing was stored (create it with `tetradctl tenant create`)")
            }
            Failure::Node { kind: ErrorKind::BadRequest | ErrorKind::UnknownSegment, message, .. } => {
                format!("the cluster refused {name}: {message}; nothing was stored")
            }
            other => format!("outcome unknown: retry the same push; it is idempotent ({other})"),
        },
        GaveUp::OutcomeUnknown(_) => format!("outcome unknown: retry the same push; it is idempotent ({g})"),
        GaveUp::Deadline { .. } if maybe_stored => {
            format!("outcome unknown: retry the same push; it is idempotent ({g})")
        }
        GaveUp::Deadline { .. } => {
            format!("could not push {name}: {g}; no node received the whole segment, so it was not stored")
        }
    };
    CmdError::msg(code, message)
}

/// The one-line confirmation printed on success.
pub fn confirmation(tenant: &str, reply: &PushWalReply) -> String {
    let what = if reply.already_present { "already present" } else { "stored" };
    format!(
        "{}: {what} in tenant {tenant}, durable ({} bytes, blake3 {}, epoch {}, term {}, index {})",
        reply.name, reply.size, reply.blake3, reply.epoch, reply.term, reply.index
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stream_is_a_header_then_1_mib_chunks_and_marks_its_end() {
        let seg = Segment::new("000000010000000000000001".into(), vec![7u8; 2 * CHUNK_BYTES + 5]);
        let sent_all = Arc::new(AtomicBool::new(false));
        let mut stream = request_stream("acme", &seg, Arc::clone(&sent_all));
        let mut sizes = Vec::new();
        match stream.next().await.and_then(|m| m.msg) {
            Some(Msg::Header(h)) => {
                assert_eq!(
                    (h.tenant.as_str(), h.name.as_str(), h.size),
                    ("acme", "000000010000000000000001", seg.size())
                );
                assert_eq!(h.blake3, blake3::hash(&seg.data).to_hex().to_string());
                assert!(h.blake3.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
            }
            other => panic!("expected a header first, got {other:?}"),
        }
        while let Some(m) = stream.next().await {
            assert!(!sent_all.load(Ordering::SeqCst), "not marked before the end");
            match m.msg {
                Some(Msg::Data(d)) => sizes.push(d.len()),
                other => panic!("expected data, got {other:?}"),
            }
        }
        assert_eq!(sizes, vec![CHUNK_BYTES, CHUNK_BYTES, 5]);
        assert!(sent_all.load(Ordering::SeqCst));
    }

    #[test]
    fn a_missing_file_is_bad_input() {
        let err = read_segment(Path::new("/nonexistent/000000010000000000000001")).unwrap_err();
        assert_eq!(err.code, USAGE);
        assert!(err.error.to_string().contains("nothing was sent"), "{}", err.error);
    }

    #[test]
    fn a_directory_is_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_segment(dir.path()).unwrap_err().code, USAGE);
    }

    #[test]
    fn an_ack_for_other_bytes_is_not_success() {
        let seg = Segment::new("s".into(), b"abc".to_vec());
        let ok = PushWalReply { name: "s".into(), size: 3, blake3: seg.blake3.clone(), ..Default::default() };
        assert!(check_ack(&seg, &ok).is_ok());
        let bad = PushWalReply { size: 4, ..ok.clone() };
        assert_eq!(check_ack(&seg, &bad).unwrap_err().code, NO_ANSWER);
        let bad = PushWalReply { blake3: "00".into(), ..ok };
        assert_eq!(check_ack(&seg, &bad).unwrap_err().code, NO_ANSWER);
    }
}
