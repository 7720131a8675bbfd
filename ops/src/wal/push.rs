//! `wal push`: streams one segment (header, then 1 MiB data messages) and waits for the ack.
//!
//! A push is idempotent (same name, same bytes), so every failure short of a definitive answer is
//! retried, on the leader a node names or on the next node, until the command's deadline. What
//! the command can promise when it gives up depends on whether any attempt handed the whole
//! segment to the transport without a definitive refusal: then the segment may be stored, and
//! the answer is "outcome unknown", exit 3.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures::{Stream, StreamExt};
use tetrad_proto::v1::push_wal_request::Msg;
use tetrad_proto::v1::{MissingChunksRequest, PushChunk, PushHeader, PushWalReply, PushWalRequest};
use tokio::time::timeout_at;

use super::{CHUNK_BYTES, MAX_SEGMENT_BYTES};
use crate::client::{GaveUp, Session, UNARY_ATTEMPT_TIMEOUT};
use crate::exit::{code_for, CmdError, CmdResult, Op, NO_ANSWER, USAGE};
use crate::failure::{ErrorKind, Failure};

/// A segment read from disk, ready to push (possibly several times).
#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    /// blake3 of the whole segment, lowercase hex.
    pub blake3: String,
    size: u64,
    body: Body,
}

/// How a segment's bytes travel.
#[derive(Debug, Clone)]
enum Body {
    /// Small segments (one chunk or less): held in memory and sent whole as `data` messages.
    Whole(Arc<Vec<u8>>),
    /// Larger ones are pushed by reference: the blake3 of each [`CHUNK_BYTES`] piece was taken
    /// in a first pass over the file; a push asks the cluster which pieces it lacks and reads
    /// only those again, one at a time, so the file is never in memory whole and a re-push of a
    /// file with few changes sends few bytes.
    ByRef { path: PathBuf, chunks: Arc<Vec<[u8; 32]>> },
}

impl Segment {
    pub fn new(name: String, data: Vec<u8>) -> Self {
        let blake3 = blake3::hash(&data).to_hex().to_string();
        Self { name, blake3, size: data.len() as u64, body: Body::Whole(Arc::new(data)) }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether this segment goes by reference (chunk list first, then only missing chunks).
    pub fn by_ref(&self) -> bool {
        matches!(self.body, Body::ByRef { .. })
    }
}

/// Reads the segment file; any problem is bad input (exit 2) and nothing is sent. A file larger
/// than one chunk is only hashed here (chunk by chunk), and read again as it is pushed.
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
            "it is {} bytes, more than the largest segment a node takes (max_object_bytes = {MAX_SEGMENT_BYTES})",
            meta.len()
        )));
    }
    if meta.len() > CHUNK_BYTES as u64 {
        return hash_file(path, name).map_err(|e| bad(e.to_string()));
    }
    let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    // The file may have changed between the two calls; it then goes by reference.
    if data.len() > CHUNK_BYTES {
        return hash_file(path, name).map_err(|e| bad(e.to_string()));
    }
    Ok(Segment::new(name, data))
}

/// The first pass of a push by reference: the blake3 of the whole file and of each chunk.
fn hash_file(path: &Path, name: String) -> std::io::Result<Segment> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        whole.update(&buf[..filled]);
        chunks.push(*blake3::hash(&buf[..filled]).as_bytes());
        size += filled as u64;
        if size > MAX_SEGMENT_BYTES {
            return Err(std::io::Error::other(format!(
                "it grew beyond the largest segment a node takes ({MAX_SEGMENT_BYTES}) while being read"
            )));
        }
        if filled < buf.len() {
            break;
        }
    }
    Ok(Segment {
        name,
        blake3: whole.finalize().to_hex().to_string(),
        size,
        body: Body::ByRef { path: path.to_owned(), chunks: Arc::new(chunks) },
    })
}

/// Bytes of segment data a push handed to the transport, over all its attempts.
#[derive(Debug, Default)]
pub struct Sent {
    bytes: AtomicU64,
    /// Set when a chunk read again no longer matches the first pass: the file changed.
    changed: AtomicBool,
}

impl Sent {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// The request stream. A whole segment: header, then the data in [`CHUNK_BYTES`] messages,
/// copied one at a time. By reference: the header with the chunk list, then the chunks at
/// `missing`, each read from the file as the transport asks for it and checked against the first
/// pass. `sent_all` becomes true once the transport has asked past the last message, i.e. every
/// byte meant for the node was handed over.
fn request_stream(
    tenant: &str,
    seg: &Segment,
    missing: Vec<u32>,
    sent: Arc<Sent>,
    sent_all: Arc<AtomicBool>,
) -> Pin<Box<dyn Stream<Item = PushWalRequest> + Send>> {
    let mut header = PushHeader {
        tenant: tenant.to_owned(),
        name: seg.name.clone(),
        size: seg.size(),
        blake3: seg.blake3.clone(),
        chunks: Vec::new(),
    };
    let body: Pin<Box<dyn Stream<Item = PushWalRequest> + Send>> = match &seg.body {
        Body::Whole(data) => {
            let data = Arc::clone(data);
            let chunks = data.len().div_ceil(CHUNK_BYTES);
            let sent = Arc::clone(&sent);
            Box::pin(futures::stream::iter(0..chunks).map(move |i| {
                let start = i * CHUNK_BYTES;
                let end = (start + CHUNK_BYTES).min(data.len());
                sent.bytes.fetch_add((end - start) as u64, Ordering::SeqCst);
                PushWalRequest { msg: Some(Msg::Data(data[start..end].to_vec())) }
            }))
        }
        Body::ByRef { path, chunks } => {
            header.chunks = chunks.iter().map(|h| h.to_vec()).collect();
            let (path, chunks, size) = (path.clone(), Arc::clone(chunks), seg.size());
            let file = Arc::new(std::fs::File::open(&path));
            let reads = futures::stream::iter(missing).then(move |i| {
                let (file, chunks, sent) = (Arc::clone(&file), Arc::clone(&chunks), Arc::clone(&sent));
                async move {
                    let read = tokio::task::spawn_blocking(move || read_chunk(&file, &chunks, size, i)).await;
                    match read {
                        Ok(Ok(data)) => {
                            sent.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
                            Some(PushWalRequest { msg: Some(Msg::Chunk(PushChunk { index: i, data })) })
                        }
                        // The stream stops short: the node refuses a push that lacks a chunk,
                        // and `push` reports the change.
                        _ => {
                            sent.changed.store(true, Ordering::SeqCst);
                            None
                        }
                    }
                }
            });
            Box::pin(reads.take_while(|m| futures::future::ready(m.is_some())).map(|m| m.expect("taken while some")))
        }
    };
    let end = futures::stream::poll_fn(move |_| {
        sent_all.store(true, Ordering::SeqCst);
        Poll::Ready(None)
    });
    let header = PushWalRequest { msg: Some(Msg::Header(header)) };
    Box::pin(futures::stream::iter([header]).chain(body).chain(end))
}

/// Chunk `i` of a file pushed by reference, read again; an error when it is not what the first
/// pass hashed (the file changed, or cannot be read any more).
fn read_chunk(
    file: &std::io::Result<std::fs::File>,
    chunks: &[[u8; 32]],
    size: u64,
    i: u32,
) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = file.as_ref().map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
    let start = i as u64 * CHUNK_BYTES as u64;
    let len = (size.saturating_sub(start)).min(CHUNK_BYTES as u64) as usize;
    let mut data = vec![0u8; len];
    file.read_exact_at(&mut data, start)?;
    if blake3::hash(&data).as_bytes() != chunks.get(i as usize).ok_or_else(|| std::io::Error::other("no such chunk"))? {
        return Err(std::io::Error::other(format!("chunk {i} changed since it was hashed")));
    }
    Ok(data)
}

/// Which chunks of a segment pushed by reference the tenant lacks, asked of the node `client`
/// reaches (every chunk of a whole segment is sent anyway).
async fn missing_chunks(
    client: &mut crate::client::Client,
    tenant: &str,
    seg: &Segment,
    until: tokio::time::Instant,
) -> Result<Vec<u32>, Result<tonic::Status, ()>> {
    let Body::ByRef { chunks, .. } = &seg.body else { return Ok(Vec::new()) };
    let req = MissingChunksRequest { tenant: tenant.to_owned(), hashes: chunks.iter().map(|h| h.to_vec()).collect() };
    match timeout_at(until, client.missing_chunks(req)).await {
        Ok(Ok(reply)) => Ok(reply.into_inner().missing),
        Ok(Err(status)) => Err(Ok(status)),
        Err(_) => Err(Err(())),
    }
}

/// Pushes until a node acks or refuses, or the deadline passes. `sent` counts the segment bytes
/// handed to the transport over every attempt.
pub async fn push(session: &mut Session, tenant: &str, seg: &Segment, sent: &Arc<Sent>) -> CmdResult<PushWalReply> {
    let mut maybe_stored = false;
    loop {
        let (addr, mut client) = match session.connect().await {
            Ok(c) => c,
            Err(g) => return Err(give_up(tenant, seg, g, maybe_stored)),
        };
        // Asked again on every attempt: after a failover the tenant may lack what it held.
        let ask_until = session.deadline().min(tokio::time::Instant::now() + UNARY_ATTEMPT_TIMEOUT);
        let missing = match missing_chunks(&mut client, tenant, seg, ask_until).await {
            Ok(m) => m,
            Err(failed) => {
                let failure = match failed {
                    Ok(status) => Failure::from_status(&addr, &status),
                    Err(()) => Failure::AttemptTimeout { addr },
                };
                if let Err(g) = session.failed(failure) {
                    return Err(give_up(tenant, seg, g, maybe_stored));
                }
                continue;
            }
        };
        let sent_all = Arc::new(AtomicBool::new(false));
        let stream = request_stream(tenant, seg, missing, Arc::clone(sent), Arc::clone(&sent_all));
        let result = timeout_at(session.deadline(), client.push_wal(stream)).await;
        if sent.changed.load(Ordering::SeqCst) {
            return Err(CmdError::msg(
                USAGE,
                format!(
                    "cannot push {}: the file changed (or could not be read) while it was being pushed; the cluster holds either nothing under this name or the contents first read (blake3 {}); push it again once it is complete",
                    seg.name, seg.blake3
                ),
            ));
        }
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

/// The one-line confirmation printed on success; `sent` is the segment bytes this command sent
/// (fewer than the size when the tenant already held some of its chunks).
pub fn confirmation(tenant: &str, reply: &PushWalReply, sent: u64) -> String {
    let what = if reply.already_present { "already present" } else { "stored" };
    format!(
        "{}: {what} in tenant {tenant}, durable ({} bytes, blake3 {}, epoch {}, term {}, index {}; sent {sent} bytes)",
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
        let sent = Arc::new(Sent::default());
        let mut stream = request_stream("acme", &seg, Vec::new(), Arc::clone(&sent), Arc::clone(&sent_all));
        let mut sizes = Vec::new();
        match stream.next().await.and_then(|m| m.msg) {
            Some(Msg::Header(h)) => {
                assert_eq!(
                    (h.tenant.as_str(), h.name.as_str(), h.size),
                    ("acme", "000000010000000000000001", seg.size())
                );
                assert_eq!(h.blake3, blake3::hash(&vec![7u8; 2 * CHUNK_BYTES + 5]).to_hex().to_string());
                assert!(h.chunks.is_empty(), "a segment in memory goes whole");
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
        assert_eq!(sent.bytes(), seg.size());
    }

    /// A file of 3 chunks and 5 bytes, pushed by reference.
    fn by_ref_file(dir: &tempfile::TempDir) -> (PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..3 * CHUNK_BYTES + 5).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("000000010000000000000002");
        std::fs::write(&path, &data).unwrap();
        (path, data)
    }

    #[test]
    fn a_file_larger_than_a_chunk_is_hashed_chunk_by_chunk_and_goes_by_reference() {
        let dir = tempfile::tempdir().unwrap();
        let (path, data) = by_ref_file(&dir);
        let seg = read_segment(&path).unwrap();
        assert!(seg.by_ref());
        assert_eq!((seg.size(), seg.blake3.clone()), (data.len() as u64, blake3::hash(&data).to_hex().to_string()));
        let Body::ByRef { chunks, .. } = &seg.body else { unreachable!() };
        let want: Vec<[u8; 32]> = data.chunks(CHUNK_BYTES).map(|c| *blake3::hash(c).as_bytes()).collect();
        assert_eq!(chunks.as_slice(), want.as_slice());
        // At most one chunk is whole.
        std::fs::write(&path, &data[..CHUNK_BYTES]).unwrap();
        assert!(!read_segment(&path).unwrap().by_ref());
    }

    #[tokio::test]
    async fn a_push_by_reference_sends_only_the_missing_chunks_and_stops_when_the_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, data) = by_ref_file(&dir);
        let seg = read_segment(&path).unwrap();
        let (sent, sent_all) = (Arc::new(Sent::default()), Arc::new(AtomicBool::new(false)));
        let msgs: Vec<_> =
            request_stream("acme", &seg, vec![1, 3], Arc::clone(&sent), Arc::clone(&sent_all)).collect().await;
        match &msgs[0].msg {
            Some(Msg::Header(h)) => assert_eq!(h.chunks.len(), 4),
            other => panic!("expected the header first, got {other:?}"),
        }
        let chunks: Vec<(u32, &[u8])> = msgs[1..]
            .iter()
            .map(|m| match &m.msg {
                Some(Msg::Chunk(c)) => (c.index, c.data.as_slice()),
                other => panic!("expected chunks, got {other:?}"),
            })
            .collect();
        assert_eq!(chunks, vec![(1, &data[CHUNK_BYTES..2 * CHUNK_BYTES]), (3, &data[3 * CHUNK_BYTES..])]);
        assert_eq!(sent.bytes(), CHUNK_BYTES as u64 + 5);
        assert!(sent_all.load(Ordering::SeqCst) && !sent.changed.load(Ordering::SeqCst));

        // The file changes under the push: the stream ends at the changed chunk and says so.
        let mut changed = data.clone();
        changed[2 * CHUNK_BYTES + 7] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        let sent = Arc::new(Sent::default());
        let msgs: Vec<_> =
            request_stream("acme", &seg, vec![1, 2, 3], Arc::clone(&sent), Arc::new(AtomicBool::new(false)))
                .collect()
                .await;
        assert_eq!(msgs.len(), 2, "the header and chunk 1, then nothing");
        assert!(sent.changed.load(Ordering::SeqCst));
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
