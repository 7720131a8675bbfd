//! `tetradctl wal push | fetch | list`: a tenant's WAL archive, shaped for PostgreSQL's
//! `archive_command` (`tetradctl wal push --tenant T %p`) and `restore_command`
//! (`tetradctl wal fetch --tenant T %f %p`).
//!
//! `wal list --json` prints `{"segments": [{"name", "size", "blake3", "proposed_at_ms"}]}`
//! (`tetrad_proto::json::SegmentList`).

pub mod fetch;
pub mod push;

use tetrad_proto::json;
use tetrad_proto::v1::{ListWalRequest, SegmentInfo};

use crate::client::Session;
use crate::exit::{gave_up, CmdResult, Op};
use crate::table::{bytes, Table};
use crate::tenant::rfc3339_ms;

/// The largest segment tetradctl moves: PostgreSQL's largest `wal_segment_size` is 1 GiB.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Bytes per data message of a push.
pub const CHUNK_BYTES: usize = 1 << 20;

pub async fn list(session: &mut Session, tenant: &str, prefix: &str) -> CmdResult<Vec<SegmentInfo>> {
    session
        .unary(|mut c| {
            let req = ListWalRequest { tenant: tenant.to_owned(), prefix: prefix.to_owned() };
            async move { c.list_wal(req).await }
        })
        .await
        .map(|r| r.segments)
        .map_err(|g| gave_up(Op::Other, &format!("listing the WAL of tenant {tenant}"), g))
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
    let mut table = Table::new(["SEGMENT", "SIZE", "BLAKE3", "PROPOSED AT"]);
    for s in segments {
        let short = s.blake3.get(..16).unwrap_or(&s.blake3);
        table.row([s.name.clone(), bytes(s.size), short.to_owned(), rfc3339_ms(s.proposed_at_ms)]);
    }
    table.render()
}
