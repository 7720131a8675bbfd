//! `tetradctl record put | get | list | delete`: a tenant's records, small values under UTF-8
//! keys (up to 512 bytes, `/` allowed) with versions that never repeat (proto/tetrad.proto,
//! `PutRecord` and its neighbours).
//!
//! Exit codes: 0 done; 1 (`get`) the key does not exist; 2 bad input or a refused request; 3 no
//! answer or outcome unknown (a put, an unconditional delete and a conditional put are safe to
//! retry); 4 (`put`, `delete`) the version condition failed: nothing changed, and the key's
//! current version is printed.
//!
//! `record list --json` prints `{"records": [{"key", "version", "proposed_at_ms"}]}`, page by
//! page as the pages arrive, so a listing of any length is held one page at a time.

use std::io::{Read, Write};
use std::path::Path;

use tetrad_core::records::{validate_key, validate_value_len, MAX_VALUE_BYTES};
use tetrad_proto::v1::{
    DeleteRecordRequest, GetRecordRequest, ListRecordsRequest, PutRecordRequest, RecordInfo, RecordPut,
    RecordWriteReply,
};

use crate::client::{GaveUp, Session};
use crate::exit::{gave_up, CmdError, CmdResult, Op, OrExit, CONDITION_FAILED, NO_ANSWER, RECORD_NOT_FOUND, USAGE};
use crate::failure::{ErrorKind, Failure};

/// Records asked for per `ListRecords` page (the node's maximum).
pub const LIST_PAGE_SIZE: u32 = 10_000;

/// Where a value comes from or goes to: a file, or `-` for stdin/stdout.
fn is_stdio(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// Reads a value from `source` (`-`: stdin), refusing one above the limit before reading more
/// than one byte past it: the size is checked before memory is reserved for the bytes.
pub fn read_value(source: &Path) -> CmdResult<Vec<u8>> {
    let limit = MAX_VALUE_BYTES as u64;
    let mut buf = Vec::new();
    if is_stdio(source) {
        std::io::stdin().lock().take(limit + 1).read_to_end(&mut buf).or_exit(USAGE)?;
    } else {
        let f = std::fs::File::open(source)
            .map_err(|e| CmdError::msg(USAGE, format!("cannot open {}: {e}", source.display())))?;
        let len = f.metadata().or_exit(USAGE)?.len();
        validate_value_len(usize::try_from(len).unwrap_or(usize::MAX))
            .map_err(|e| CmdError::msg(USAGE, format!("{}: {e}", source.display())))?;
        f.take(limit + 1).read_to_end(&mut buf).or_exit(USAGE)?;
    }
    validate_value_len(buf.len()).map_err(|e| CmdError::msg(USAGE, e.to_string()))?;
    Ok(buf)
}

fn check_key(key: &str) -> CmdResult<()> {
    validate_key(key).map_err(|e| CmdError::msg(USAGE, e.to_string()))
}

/// What a failed condition prints, and its exit code.
fn condition_failed(r: &RecordWriteReply) -> CmdError {
    CmdError::msg(
        CONDITION_FAILED,
        format!(
            "condition failed: record {:?} is at version {} (expected {}); nothing was changed",
            r.failed_key, r.current_version, r.expected_version
        ),
    )
}

/// Puts records in one write (all or nothing). Retried after "outcome unknown": a put is
/// idempotent, a conditional one too (the node recognises its own earlier success).
pub async fn put(session: &mut Session, tenant: &str, records: Vec<RecordPut>) -> CmdResult<RecordWriteReply> {
    for r in &records {
        check_key(&r.key)?;
    }
    let reply = session
        .unary(|mut c| {
            let req = PutRecordRequest { tenant: tenant.to_owned(), records: records.clone() };
            async move { c.put_record(req).await }
        })
        .await
        .map_err(|g| gave_up(Op::Push, &format!("putting records of tenant {tenant}"), g))?;
    if reply.condition_failed {
        return Err(condition_failed(&reply));
    }
    Ok(reply)
}

/// Deletes one record. An unconditional delete is retried like a put (deleting twice is deleting
/// once); a conditional one is sent again only when the node certainly did nothing with it, since
/// its retry could not tell its own success from a failed condition.
pub async fn delete(
    session: &mut Session,
    tenant: &str,
    key: &str,
    if_version: Option<u64>,
) -> CmdResult<RecordWriteReply> {
    check_key(key)?;
    let call = |mut c: crate::client::Client| {
        let req = DeleteRecordRequest { tenant: tenant.to_owned(), key: key.to_owned(), if_version };
        async move { c.delete_record(req).await }
    };
    let got = if if_version.is_some() { session.unary_at_most_once(call).await } else { session.unary(call).await };
    let reply = got.map_err(|g| gave_up(Op::Push, &format!("deleting record {key:?} of tenant {tenant}"), g))?;
    if reply.condition_failed {
        return Err(condition_failed(&reply));
    }
    Ok(reply)
}

/// Reads one record (linearizable). A key that does not exist exits 1.
pub async fn get(session: &mut Session, tenant: &str, key: &str) -> CmdResult<RecordInfo> {
    check_key(key)?;
    session
        .unary(|mut c| {
            let req = GetRecordRequest { tenant: tenant.to_owned(), key: key.to_owned() };
            async move { c.get_record(req).await }
        })
        .await
        .map_err(|g| match g {
            GaveUp::Refused(Failure::Node { kind: ErrorKind::UnknownRecord, .. }) => {
                CmdError::msg(RECORD_NOT_FOUND, format!("record {key:?} of tenant {tenant} does not exist"))
            }
            g => gave_up(Op::Other, &format!("reading record {key:?} of tenant {tenant}"), g),
        })
}

/// Writes a value to `dest` (`-`: stdout, only the bytes), a file being synced before the
/// command answers.
pub fn write_value(dest: &Path, value: &[u8]) -> CmdResult<()> {
    if is_stdio(dest) {
        let mut out = std::io::stdout().lock();
        out.write_all(value).or_exit(NO_ANSWER)?;
        return out.flush().or_exit(NO_ANSWER);
    }
    let mut f = std::fs::File::create(dest)
        .map_err(|e| CmdError::msg(USAGE, format!("cannot create {}: {e}", dest.display())))?;
    f.write_all(value).or_exit(USAGE)?;
    f.sync_all().or_exit(USAGE)
}

/// Lists a tenant's records page by page in key order, handing each page to `each`.
pub async fn list_pages(
    session: &mut Session,
    tenant: &str,
    prefix: &str,
    page_size: u32,
    mut each: impl FnMut(Vec<RecordInfo>) -> CmdResult<()>,
) -> CmdResult<()> {
    let mut after = String::new();
    loop {
        let reply = session
            .unary(|mut c| {
                let req = ListRecordsRequest {
                    tenant: tenant.to_owned(),
                    prefix: prefix.to_owned(),
                    after: after.clone(),
                    page_size,
                    with_values: false,
                };
                async move { c.list_records(req).await }
            })
            .await
            .map_err(|g| gave_up(Op::Other, &format!("listing the records of tenant {tenant}"), g))?;
        // A token that does not move forward would loop forever: end the listing instead.
        let next = (!reply.next_after.is_empty() && reply.next_after > after).then_some(reply.next_after);
        each(reply.records)?;
        match next {
            Some(t) => after = t,
            None => return Ok(()),
        }
    }
}

/// Prints a listing as pages arrive: one `KEY VERSION` line per record, or JSON.
pub struct ListPrinter<W: Write> {
    out: W,
    json: bool,
    rows: u64,
}

impl<W: Write> ListPrinter<W> {
    pub fn new(out: W, json: bool) -> Self {
        Self { out, json, rows: 0 }
    }

    pub fn page(&mut self, records: &[RecordInfo]) -> std::io::Result<()> {
        for r in records {
            if self.json {
                let one = serde_json::json!({"key": r.key, "version": r.version, "proposed_at_ms": r.proposed_at_ms});
                let sep: &[u8] = if self.rows == 0 { b"{\n  \"records\": [\n    " } else { b",\n    " };
                self.out.write_all(sep)?;
                self.out.write_all(one.to_string().as_bytes())?;
            } else {
                writeln!(self.out, "{}\t{}", r.key, r.version)?;
            }
            self.rows += 1;
        }
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        match (self.json, self.rows) {
            (true, 0) => self.out.write_all(b"{\n  \"records\": []\n}\n")?,
            (true, _) => self.out.write_all(b"\n  ]\n}\n")?,
            (false, _) => {}
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_json_parses_and_holds_every_record() {
        let recs: Vec<RecordInfo> = (0..5)
            .map(|i| RecordInfo { key: format!("a/{i}"), value: vec![], version: i, proposed_at_ms: 7 })
            .collect();
        let mut p = ListPrinter::new(Vec::new(), true);
        p.page(&recs[..2]).unwrap();
        p.page(&[]).unwrap();
        p.page(&recs[2..]).unwrap();
        let out = String::from_utf8(p.finish().unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let keys: Vec<&str> = v["records"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["a/0", "a/1", "a/2", "a/3", "a/4"]);
        let empty = String::from_utf8(ListPrinter::new(Vec::new(), true).finish().unwrap()).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&empty).unwrap()["records"], serde_json::json!([]));
    }

    #[test]
    fn a_value_over_the_limit_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; MAX_VALUE_BYTES + 1]).unwrap();
        let e = read_value(&big).unwrap_err();
        assert_eq!(e.code, USAGE);
        assert!(e.to_string().contains("limit of 1048576 bytes"), "{e}");
        let ok = dir.path().join("ok");
        std::fs::write(&ok, b"v").unwrap();
        assert_eq!(read_value(&ok).unwrap(), b"v");
    }
}
