//! `wal fetch`: streams one segment into a temporary file beside the destination, checks its
//! size and blake3 against the header, fsyncs it and renames it into place, so the destination
//! either does not exist or holds the whole, verified segment.
//!
//! Exit codes follow PostgreSQL's `restore_command`: 1 only when the cluster answered that the
//! segment does not exist (recovery then treats it as the end of the archive), 2 for bad usage,
//! and 128 for every other failure, because a status above 125 makes PostgreSQL abort recovery
//! instead of ending it early with a segment missing.

use std::path::{Path, PathBuf};

use tetrad_proto::v1::fetch_wal_reply::Msg;
use tetrad_proto::v1::{FetchWalRequest, SegmentHeader};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::time::timeout_at;

use super::MAX_SEGMENT_BYTES;
use crate::client::{Client, GaveUp, Session};
use crate::exit::{code_for, CmdError, CmdResult, Op, FETCH_ABORT, USAGE};
use crate::failure::{ErrorKind, Failure};

/// What was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub size: u64,
    pub blake3: String,
}

/// Why one attempt failed: the cluster, or this machine's disk.
enum AttemptError {
    Remote(Failure),
    Local(std::io::Error),
}

/// Where the temporary file goes: beside `dest`, so the final rename stays on one filesystem.
pub fn temp_path(dest: &Path) -> CmdResult<PathBuf> {
    let bad = || CmdError::msg(USAGE, format!("{} is not a file path", dest.display()));
    let file_name = dest.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok(parent.join(format!(".{file_name}.tetrad-fetch-{}", std::process::id())))
}

pub async fn fetch(session: &mut Session, tenant: &str, name: &str, dest: &Path) -> CmdResult<Fetched> {
    if dest.is_dir() {
        return Err(CmdError::msg(USAGE, format!("destination {} is a directory", dest.display())));
    }
    let tmp = temp_path(dest)?;
    // Created before the cluster is asked, so an unwritable destination is bad usage (exit 2)
    // and not a failure that aborts recovery.
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| CmdError::msg(USAGE, format!("cannot write beside {}: {e}", dest.display())))?;
    let result = fetch_into(session, tenant, name, &mut file).await;
    let result = match result {
        Ok(fetched) => finish(file, &tmp, dest).await.map(|()| fetched),
        Err(e) => Err(e),
    };
    if result.is_err() {
        // Best effort: a leftover hidden temp file is harmless, and the error being reported matters more.
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

async fn fetch_into(session: &mut Session, tenant: &str, name: &str, file: &mut tokio::fs::File) -> CmdResult<Fetched> {
    loop {
        let (addr, client) = session.connect().await.map_err(|g| give_up(tenant, name, g))?;
        let attempt = timeout_at(session.deadline(), attempt(client, &addr, tenant, name, file)).await;
        match attempt {
            Ok(Ok(fetched)) => {
                session.succeeded(&addr);
                return Ok(fetched);
            }
            Ok(Err(AttemptError::Remote(failure))) => session.failed(failure).map_err(|g| give_up(tenant, name, g))?,
            Ok(Err(AttemptError::Local(e))) => {
                return Err(CmdError::msg(FETCH_ABORT, format!("cannot write segment {name} to disk: {e}")));
            }
            Err(_) => return Err(give_up(tenant, name, session.deadline_passed())),
        }
    }
}

/// One attempt: the stream from one node into the (emptied) temporary file.
async fn attempt(
    mut client: Client,
    addr: &str,
    tenant: &str,
    name: &str,
    file: &mut tokio::fs::File,
) -> Result<Fetched, AttemptError> {
    let remote = |status: tonic::Status| AttemptError::Remote(Failure::from_status(addr, &status));
    let bad = |reason: String| AttemptError::Remote(Failure::BadReply { addr: addr.to_owned(), reason });
    file.set_len(0).await.map_err(AttemptError::Local)?;
    file.rewind().await.map_err(AttemptError::Local)?;

    let req = FetchWalRequest { tenant: tenant.to_owned(), name: name.to_owned() };
    let mut stream = client.fetch_wal(req).await.map_err(remote)?.into_inner();
    let header: SegmentHeader = match stream.message().await.map_err(remote)?.and_then(|m| m.msg) {
        Some(Msg::Header(h)) => h,
        Some(Msg::Data(_)) => return Err(bad("data before the header".into())),
        None => return Err(bad("the stream ended before the header".into())),
    };
    if header.name != name {
        return Err(bad(format!("asked for {name}, got a header for {}", header.name)));
    }
    if header.size > MAX_SEGMENT_BYTES {
        return Err(bad(format!("header announces {} bytes, more than the largest WAL segment", header.size)));
    }
    let mut hasher = blake3::Hasher::new();
    let mut received: u64 = 0;
    while let Some(m) = stream.message().await.map_err(remote)? {
        match m.msg {
            Some(Msg::Data(data)) => {
                received += data.len() as u64;
                if received > header.size {
                    return Err(bad(format!("more bytes than the {} the header announced", header.size)));
                }
                hasher.update(&data);
                file.write_all(&data).await.map_err(AttemptError::Local)?;
            }
            Some(Msg::Header(_)) => return Err(bad("a second header".into())),
            None => return Err(bad("an empty message".into())),
        }
    }
    if received != header.size {
        return Err(bad(format!("{received} bytes received, the header announced {}", header.size)));
    }
    let blake3 = hasher.finalize().to_hex().to_string();
    if !blake3.eq_ignore_ascii_case(&header.blake3) {
        return Err(bad(format!("blake3 {blake3} of the received bytes differs from the header's {}", header.blake3)));
    }
    Ok(Fetched { size: received, blake3 })
}

/// Makes the verified temporary file durable and moves it into place.
async fn finish(mut file: tokio::fs::File, tmp: &Path, dest: &Path) -> CmdResult<()> {
    let fail =
        |what: &str, e: std::io::Error| CmdError::msg(FETCH_ABORT, format!("cannot {what} {}: {e}", dest.display()));
    file.flush().await.map_err(|e| fail("write", e))?;
    file.sync_all().await.map_err(|e| fail("fsync", e))?;
    drop(file);
    tokio::fs::rename(tmp, dest).await.map_err(|e| fail("rename the fetched segment to", e))?;
    // The rename is durable only once the directory is synced.
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = tokio::fs::File::open(&dir).await.map_err(|e| fail("open the directory of", e))?;
    dir.sync_all().await.map_err(|e| fail("fsync the directory of", e))?;
    Ok(())
}

fn give_up(tenant: &str, name: &str, g: GaveUp) -> CmdError {
    let code = code_for(Op::Fetch, &g);
    let message = match &g {
        GaveUp::Refused(Failure::Node { kind: ErrorKind::UnknownSegment, .. }) => {
            format!("segment {name} does not exist in tenant {tenant}")
        }
        GaveUp::Refused(Failure::Node { kind: ErrorKind::UnknownTenant, .. }) => {
            format!("tenant {tenant} does not exist")
        }
        GaveUp::Refused(f) => format!("cannot fetch {name} from tenant {tenant}: {f}"),
        GaveUp::Deadline { .. } | GaveUp::OutcomeUnknown(_) => {
            format!("cannot fetch {name} from tenant {tenant}: {g}")
        }
    };
    CmdError::msg(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temp_file_sits_beside_the_destination() {
        let pid = std::process::id();
        assert_eq!(
            temp_path(Path::new("pg_wal/RECOVERYXLOG")).expect("ok"),
            PathBuf::from(format!("pg_wal/.RECOVERYXLOG.tetrad-fetch-{pid}"))
        );
        assert_eq!(temp_path(Path::new("seg")).expect("ok"), PathBuf::from(format!("./.seg.tetrad-fetch-{pid}")));
        assert_eq!(temp_path(Path::new("/")).unwrap_err().code, USAGE);
    }
}
