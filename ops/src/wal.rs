//! `tetradctl wal push | fetch | list`: a tenant's WAL archive, shaped for PostgreSQL's
//! `archive_command` (`tetradctl wal push --tenant T %p`) and `restore_command`
//! (`tetradctl wal fetch --tenant T %f %p`).
//!
//! `wal list --json` prints `{"segments": [{"name", "size", "blake3", "proposed_at_ms"}]}`
//! (`tetrad_proto::json::SegmentList`). The list is read page by page (`ListWal`'s `page_size`
//! and `next_after`) and printed as it arrives, so its length is bounded by nothing but time.

pub mod fetch;
pub mod push;

use tetrad_proto::json;
use tetrad_proto::v1::{ListWalRequest, SegmentInfo};

use crate::client::Session;
use crate::exit::{gave_up, CmdResult, Op};
use crate::table::{bytes, Table};
use crate::tenant::rfc3339_ms;

/// The largest segment tetradctl moves, the node's own limit (`max_object_bytes`), so a file a
/// node would refuse is refused before anything is sent: PostgreSQL's largest
/// `wal_segment_size` is 1 GiB.
pub const MAX_SEGMENT_BYTES: u64 = tetrad_core::catalog::MAX_OBJECT_BYTES;
/// Bytes per data message of a push.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Segments asked for per `ListWal` page (the node's maximum).
pub const LIST_PAGE_SIZE: u32 = 10_000;

/// Lists a tenant's segments page by page, in name order, handing each page to `each` as it
/// arrives (so a listing of any length is held one page at a time). Each page is its own request
/// (retried like any read); the node's `next_after` token says where the next one starts.
pub async fn list_pages(
    session: &mut Session,
    tenant: &str,
    prefix: &str,
    page_size: u32,
    mut each: impl FnMut(Vec<SegmentInfo>) -> CmdResult<()>,
) -> CmdResult<()> {
    let mut after = String::new();
    loop {
        let reply = session
            .unary(|mut c| {
                let req = ListWalRequest {
                    tenant: tenant.to_owned(),
                    prefix: prefix.to_owned(),
                    page_size: Some(page_size),
                    after: after.clone(),
                };
                async move { c.list_wal(req).await }
            })
            .await
            .map_err(|g| gave_up(Op::Other, &format!("listing the WAL of tenant {tenant}"), g))?;
        // A token that does not move forward would loop forever: end the listing instead.
        let next = (!reply.next_after.is_empty() && reply.next_after > after).then_some(reply.next_after);
        each(reply.segments)?;
        match next {
            Some(t) => after = t,
            None => return Ok(()),
        }
    }
}

/// A whole listing in memory (every page); `tetradctl wal list` streams with [`list_pages`].
pub async fn list(session: &mut Session, tenant: &str, prefix: &str) -> CmdResult<Vec<SegmentInfo>> {
    let mut all = Vec::new();
    list_pages(session, tenant, prefix, LIST_PAGE_SIZE, |page| {
        all.extend(page);
        Ok(())
    })
    .await?;
    Ok(all)
}

/// Prints a listing page by page with the text of [`render_list`] or [`render_list_json`]: the
/// JSON is byte-for-byte the same however the list is paged; the table is the same when it fits
/// one page, and past that a column only ever widens (a later page's longer name shifts the
/// columns from that page on, as the widths of rows not yet seen cannot be known).
pub struct ListPrinter<W: std::io::Write> {
    out: W,
    json: bool,
    rows: u64,
    widths: Vec<usize>,
}

const LIST_HEADER: [&str; 4] = ["SEGMENT", "SIZE", "BLAKE3", "PROPOSED AT"];

impl<W: std::io::Write> ListPrinter<W> {
    pub fn new(out: W, json: bool) -> Self {
        Self { out, json, rows: 0, widths: LIST_HEADER.iter().map(|h| h.chars().count()).collect() }
    }

    pub fn page(&mut self, segments: &[SegmentInfo]) -> std::io::Result<()> {
        if segments.is_empty() {
            return Ok(());
        }
        if self.json {
            if self.rows == 0 {
                self.out.write_all(b"{\n  \"segments\": [")?;
            }
            for s in segments {
                let one = serde_json::to_string_pretty(&to_json(std::slice::from_ref(s)).segments[0])
                    .expect("segment JSON always serializes");
                self.out.write_all(if self.rows == 0 { b"\n" } else { b",\n" })?;
                let indented: Vec<String> = one.lines().map(|l| format!("    {l}")).collect();
                self.out.write_all(indented.join("\n").as_bytes())?;
                self.rows += 1;
            }
            return Ok(());
        }
        let rows: Vec<[String; 4]> = segments.iter().map(text_row).collect();
        for r in &rows {
            for (w, cell) in self.widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        if self.rows == 0 {
            let header = LIST_HEADER.map(str::to_owned);
            self.line(&header)?;
        }
        for r in &rows {
            self.line(r)?;
            self.rows += 1;
        }
        Ok(())
    }

    fn line(&mut self, cells: &[String; 4]) -> std::io::Result<()> {
        let mut line = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if c + 1 == cells.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = self.widths[c]));
            }
        }
        writeln!(self.out, "{}", line.trim_end())
    }

    /// Ends the listing ("no segments" for an empty one); returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        match (self.json, self.rows) {
            (true, 0) => self.out.write_all(b"{\n  \"segments\": []\n}\n")?,
            (true, _) => self.out.write_all(b"\n  ]\n}\n")?,
            (false, 0) => self.out.write_all(b"no segments\n")?,
            (false, _) => {}
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn text_row(s: &SegmentInfo) -> [String; 4] {
    let short = s.blake3.get(..16).unwrap_or(&s.blake3);
    [s.name.clone(), bytes(s.size), short.to_owned(), rfc3339_ms(s.proposed_at_ms)]
}

/// The printed form of a segment list (`tetrad_proto::json::SegmentList`, where the shape is
/// defined).
pub fn to_json(segments: &[SegmentInfo]) -> json::SegmentList {
    json::SegmentList {
        segments: segments
            .iter()
            .map(|s| json::Segment {
                name: s.name.clone(),
                size: s.size,
                blake3: s.blake3.clone(),
                proposed_at_ms: s.proposed_at_ms,
            })
            .collect(),
    }
}

pub fn render_list_json(segments: &[SegmentInfo]) -> String {
    serde_json::to_string_pretty(&to_json(segments)).expect("segment JSON always serializes")
}

pub fn render_list(segments: &[SegmentInfo]) -> String {
    if segments.is_empty() {
        return "no segments\n".to_owned();
    }
    let mut table = Table::new(LIST_HEADER);
    for s in segments {
        table.row(text_row(s));
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, size: u64) -> SegmentInfo {
        SegmentInfo {
            name: name.to_owned(),
            size,
            blake3: blake3::hash(name.as_bytes()).to_hex().to_string(),
            proposed_at_ms: 1_700_000_000_000 + size,
        }
    }

    fn printed(json: bool, pages: &[&[SegmentInfo]]) -> String {
        let mut p = ListPrinter::new(Vec::new(), json);
        for page in pages {
            p.page(page).unwrap();
        }
        String::from_utf8(p.finish().unwrap()).unwrap()
    }

    fn segments(n: u64) -> Vec<SegmentInfo> {
        (0..n).map(|i| seg(&format!("00000001{:016X}", i), i * 977)).collect()
    }

    #[test]
    fn streamed_json_is_the_whole_list_json_however_it_is_paged() {
        for n in [0, 1, 2, 25] {
            let all = segments(n);
            let whole = format!("{}\n", render_list_json(&all));
            for per in [1, 3, 25] {
                let pages: Vec<&[SegmentInfo]> = all.chunks(per).collect();
                assert_eq!(printed(true, &pages), whole, "{n} segments, {per} a page");
            }
            // Empty pages (a node may answer one) print nothing.
            assert_eq!(printed(true, &[&[], &all, &[]]), whole);
        }
        let parsed: json::SegmentList =
            serde_json::from_str(&printed(true, &[&segments(3)[..1], &segments(3)[1..]])).unwrap();
        assert_eq!(parsed, to_json(&segments(3)));
    }

    #[test]
    fn streamed_text_is_the_table_when_the_columns_agree() {
        assert_eq!(printed(false, &[]), render_list(&[]));
        assert_eq!(printed(false, &[&[]]), "no segments\n");
        let all = segments(40);
        let whole = render_list(&all);
        assert_eq!(printed(false, &[&all]), whole);
        // The names are of one length and the sizes stay within one width here, so paging shows nothing.
        let uniform: Vec<SegmentInfo> = (0..40).map(|i| seg(&format!("00000001{:016X}", i), 16 << 20)).collect();
        let pages: Vec<&[SegmentInfo]> = uniform.chunks(7).collect();
        assert_eq!(printed(false, &pages), render_list(&uniform));
    }

    #[test]
    fn a_later_wider_row_widens_the_columns_from_its_page_on() {
        let first = [seg("000000010000000000000001", 1)];
        let second = [seg("00000002.history", 1), seg("000000010000000000000002.00000028.backup", 1)];
        let out = printed(false, &[&first, &second]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("SEGMENT                   SIZE"), "{out}");
        assert!(lines[3].starts_with("000000010000000000000002.00000028.backup  1 B"), "{out}");
    }
}
