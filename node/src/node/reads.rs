//! The read path: a tenant's segments and their bytes, linearizable on the tenant's leader
//! (ReadIndex first, so a deposed leader never answers "not found" for a segment that exists),
//! each chunk verified and a damaged copy repaired from another replica before it is served.
//! It owns no state.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::directory::Directory;
use super::hosted::{HostedGroups, TenantGroup};
use super::status::Status;
use crate::api::error::ApiError;
use crate::storage::chunks::Hash;
use crate::tenant::catalog::SegmentRecord;
use tetrad_core::records::{validate_key, RecordRow};

/// The segments of a paged listing when the request names no page size, and the most it may name:
/// 10,000 records are about 1 MiB on the wire, well under the 4 MiB reply cap.
pub const LIST_PAGE_MAX: usize = 10_000;

/// One page of a tenant's listing: segments in name order, and the token of the next page
/// (`None` when this page ends the list). The token is the last name of the page; clients treat
/// it as opaque and send it back as `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPage {
    pub segments: Vec<SegmentRecord>,
    pub next_after: Option<String>,
}

/// The page size a request gets: 0 means the default, anything above the maximum is cut to it.
pub fn page_limit(requested: u32) -> usize {
    match requested as usize {
        0 => LIST_PAGE_MAX,
        n => n.min(LIST_PAGE_MAX),
    }
}

/// At most `limit` (at least 1) segments whose names start with `prefix` and sort after `after`
/// (from the first when `after` is empty or sorts before `prefix`), in name order. A token is
/// returned only when another matching segment follows, so the last page never comes back empty
/// but for an empty listing.
pub(crate) fn page_of(
    segments: &BTreeMap<String, SegmentRecord>,
    prefix: &str,
    after: &str,
    limit: usize,
) -> SegmentPage {
    let (page, next_after) = tetrad_core::paging::page(segments, prefix, after, limit);
    let page: Vec<SegmentRecord> = page.into_iter().cloned().collect();
    SegmentPage { segments: page, next_after }
}

/// Most key and value bytes of one page of records (a page holds at least one record, which
/// is at most 1 MiB): well under the 4 MiB reply cap.
pub const RECORD_PAGE_BYTES: usize = 2 << 20;

/// One page of a tenant's records in key order, and the token of the next (the last key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPage {
    pub records: Vec<RecordRow>,
    pub next_after: Option<String>,
}

/// Segment lookups, listings and chunk reads.
pub(crate) struct Reads {
    directory: Arc<Directory>,
    status: Arc<Status>,
    hosted: Arc<HostedGroups>,
}

impl Reads {
    pub(super) fn new(directory: Arc<Directory>, status: Arc<Status>, hosted: Arc<HostedGroups>) -> Self {
        Self { directory, status, hosted }
    }

    /// The group of a tenant when this node leads it, after a linearizable read barrier.
    async fn leading_group_for_read(&self, tenant: &str) -> Result<TenantGroup, ApiError> {
        let rec = self.directory.tenant_record(tenant).await?;
        let Some(g) = self.hosted.get(&rec.group()) else {
            return Err(ApiError::NotLeader { leader: self.status.locate_leader(&rec).await });
        };
        g.read_barrier().await?;
        Ok(g)
    }

    /// Looks a segment up (linearizable). Its bytes are read with [`Reads::read_chunk`].
    pub(crate) async fn segment(&self, tenant: &str, name: &str) -> Result<SegmentRecord, ApiError> {
        let g = self.leading_group_for_read(tenant).await?;
        let sm = g.sm.read().await;
        sm.state.catalog.segments.get(name).cloned().ok_or_else(|| ApiError::UnknownSegment(name.to_string()))
    }

    /// Looks a record up (linearizable: after a ReadIndex barrier on the leader, like a segment).
    pub(crate) async fn record(&self, tenant: &str, key: &str) -> Result<RecordRow, ApiError> {
        validate_key(key).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let g = self.leading_group_for_read(tenant).await?;
        let sm = g.sm.read().await;
        sm.state.records.rows.get(key).cloned().ok_or_else(|| ApiError::UnknownRecord(key.to_string()))
    }

    /// One page of a tenant's records whose keys start with `prefix`, after `after`
    /// (linearizable). Pages are bounded in count and in value bytes, so a listing of any size
    /// goes through in pages of at most [`RECORD_PAGE_BYTES`].
    pub(crate) async fn record_page(
        &self,
        tenant: &str,
        prefix: &str,
        after: &str,
        limit: usize,
        with_values: bool,
    ) -> Result<RecordPage, ApiError> {
        let g = self.leading_group_for_read(tenant).await?;
        let sm = g.sm.read().await;
        let (rows, mut next_after) = sm.state.records.page(prefix, after, limit);
        let mut page = vec![];
        let mut bytes = 0usize;
        for r in rows {
            let size = r.key.len() + if with_values { r.value.len() } else { 0 };
            if !page.is_empty() && bytes + size > RECORD_PAGE_BYTES {
                next_after = page.last().map(|r: &RecordRow| r.key.clone());
                break;
            }
            bytes += size;
            let mut r = r.clone();
            if !with_values {
                r.value.clear();
            }
            page.push(r);
        }
        Ok(RecordPage { records: page, next_after })
    }

    /// Reads one chunk of a tenant's segment from this node's disk, verifying its hash; a damaged
    /// copy is first repaired from another replica (`repair.rs`), and never served.
    pub(crate) async fn read_chunk(&self, tenant: &str, hash: &Hash) -> Result<Vec<u8>, ApiError> {
        let rec = self.directory.tenant_record(tenant).await?;
        let g = self.hosted.get(&rec.group()).ok_or_else(|| ApiError::Unavailable("group moved away".into()))?;
        let chunks = g.sm.read().await.state.chunks.clone();
        chunks.get_or_repair(hash).await.map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Reads a whole segment (linearizable), verifying every chunk and the whole.
    pub(crate) async fn fetch(&self, tenant: &str, name: &str) -> Result<(SegmentRecord, Vec<u8>), ApiError> {
        let rec = self.segment(tenant, name).await?;
        let mut data = Vec::with_capacity(rec.size as usize);
        for h in &rec.chunks {
            data.extend(self.read_chunk(tenant, h).await?);
        }
        if ::blake3::hash(&data).as_bytes() != &rec.blake3 {
            return Err(ApiError::Internal(format!("segment {name} failed its blake3 check on this replica")));
        }
        Ok((rec, data))
    }

    /// Lists a tenant's segments (linearizable).
    pub(crate) async fn list(&self, tenant: &str, prefix: &str) -> Result<Vec<SegmentRecord>, ApiError> {
        let g = self.leading_group_for_read(tenant).await?;
        let sm = g.sm.read().await;
        Ok(sm
            .state
            .catalog
            .segments
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }

    /// One page of a tenant's segments (linearizable: each page after its own read barrier, so a
    /// page never misses a segment acked before it was asked for). See [`page_of`].
    pub(crate) async fn list_page(
        &self,
        tenant: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<SegmentPage, ApiError> {
        let g = self.leading_group_for_read(tenant).await?;
        let sm = g.sm.read().await;
        Ok(page_of(&sm.state.catalog.segments, prefix, after, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: String) -> SegmentRecord {
        let h = *::blake3::hash(name.as_bytes()).as_bytes();
        SegmentRecord { name, size: 16 << 20, blake3: h, chunks: vec![h], proposed_at_ms: 1, term: 1, index: 1 }
    }

    /// PostgreSQL's names of timeline `tli`, segments `0..n`.
    fn catalog(tli: u32, n: u64) -> BTreeMap<String, SegmentRecord> {
        (0..n).map(|i| format!("{tli:08X}{:08X}{:08X}", i >> 8, i & 0xff)).map(|s| (s.clone(), record(s))).collect()
    }

    /// Follows the tokens from the first page, as tetradctl does; returns the names and page count.
    fn follow(segments: &BTreeMap<String, SegmentRecord>, prefix: &str, limit: usize) -> (Vec<String>, usize) {
        let (mut names, mut pages, mut after) = (Vec::new(), 0, String::new());
        loop {
            let page = page_of(segments, prefix, &after, limit);
            pages += 1;
            assert!(page.segments.len() <= limit.max(1), "a page holds at most its limit");
            names.extend(page.segments.into_iter().map(|s| s.name));
            match page.next_after {
                Some(t) => after = t,
                None => return (names, pages),
            }
        }
    }

    #[test]
    fn a_hundred_thousand_segments_come_back_whole_in_ten_pages() {
        let segs = catalog(1, 100_000);
        let (names, pages) = follow(&segs, "", page_limit(0));
        assert_eq!(pages, 10);
        assert_eq!(names, segs.keys().cloned().collect::<Vec<_>>());
    }

    #[test]
    fn pages_of_a_prefix_hold_exactly_the_prefixed_names_in_order() {
        let mut segs = catalog(1, 1_000);
        segs.extend(catalog(2, 1_000));
        segs.insert("00000002.history".into(), record("00000002.history".into()));
        let want: Vec<String> = segs.keys().filter(|k| k.starts_with("00000002")).cloned().collect();
        assert_eq!(want.len(), 1_001);
        for limit in [1, 7, 1_000, 1_001, 1_002, 10_000] {
            let (names, pages) = follow(&segs, "00000002", limit);
            assert_eq!(names, want, "limit {limit}");
            assert_eq!(pages, want.len().div_ceil(limit), "no empty trailing page at limit {limit}");
        }
    }

    #[test]
    fn an_empty_listing_is_one_empty_page_and_odd_tokens_stay_inside_the_prefix() {
        let segs = catalog(1, 10);
        assert_eq!(page_of(&segs, "00000009", "", 5), SegmentPage { segments: vec![], next_after: None });
        assert_eq!(page_of(&BTreeMap::new(), "", "", 5), SegmentPage { segments: vec![], next_after: None });
        // A token before the prefix starts at the prefix; one past every name ends the list.
        let p = page_of(&segs, "000000010000000000000005", "0", 5);
        assert_eq!(p.segments.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["000000010000000000000005"]);
        assert_eq!(page_of(&segs, "", "zzz", 5), SegmentPage { segments: vec![], next_after: None });
    }

    #[test]
    fn page_sizes_default_and_cap_at_ten_thousand() {
        assert_eq!(page_limit(0), LIST_PAGE_MAX);
        assert_eq!(page_limit(3), 3);
        assert_eq!(page_limit(u32::MAX), LIST_PAGE_MAX);
        assert_eq!(LIST_PAGE_MAX, 10_000);
    }
}
