//! A tenant's catalog as a Raft group's state: segment rows in the store, bytes in chunk files.

use std::collections::VecDeque;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, PutDecision, SegmentRecord, TenantCommand, TenantReply};
use crate::raft::state_machine::{ApplyInfo, GroupState};
use crate::raft::{Command, Reply};
use crate::storage::chunks::{ChunkStore, Hash};
use crate::storage::store::{Store, StoreError, TxnFn, SEGMENTS};

/// How many recent entries are remembered for lag accounting.
const RECENT_ENTRIES: usize = 100_000;

/// One applied entry, remembered for lag accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedMark {
    pub index: u64,
    pub proposed_at_ms: Option<u64>,
    /// Writes (segment puts) applied up to and including this entry.
    pub writes: u64,
    /// Segment bytes applied up to and including this entry.
    pub bytes: u64,
}

#[derive(Debug)]
pub struct TenantState {
    pub catalog: Catalog,
    pub chunks: ChunkStore,
    pub recent: VecDeque<AppliedMark>,
    writes: u64,
}

#[derive(Serialize, Deserialize)]
struct TenantSnapshot {
    segments: Vec<SegmentRecord>,
    chunks: Vec<(Hash, Vec<u8>)>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { what: what.into(), detail: e.to_string() }
}

fn chunk_err(e: crate::storage::chunks::ChunkError) -> StoreError {
    StoreError::Io(e.to_string())
}

impl TenantState {
    fn mark(&mut self, at: ApplyInfo, proposed_at_ms: Option<u64>) {
        self.recent.push_back(AppliedMark {
            index: at.index,
            proposed_at_ms,
            writes: self.writes,
            bytes: self.catalog.bytes,
        });
        while self.recent.len() > RECENT_ENTRIES {
            self.recent.pop_front();
        }
    }

    /// The newest mark at or below `index`.
    pub fn mark_at(&self, index: u64) -> Option<AppliedMark> {
        let pos = self.recent.partition_point(|m| m.index <= index);
        if pos == 0 {
            None
        } else {
            Some(self.recent[pos - 1])
        }
    }

    /// The first mark above `index` that carries a proposal time.
    pub fn first_timed_after(&self, index: u64) -> Option<AppliedMark> {
        let pos = self.recent.partition_point(|m| m.index <= index);
        self.recent.iter().skip(pos).find(|m| m.proposed_at_ms.is_some()).copied()
    }

    pub fn last_mark(&self) -> Option<AppliedMark> {
        self.recent.back().copied()
    }
}

impl GroupState for TenantState {
    fn load(store: &Arc<Store>, group: &str) -> Result<Self, StoreError> {
        let mut catalog = Catalog::default();
        let txn = store.db().begin_read().map_err(StoreError::db)?;
        let t = txn.open_table(SEGMENTS).map_err(StoreError::db)?;
        for item in t.range((group, "")..).map_err(StoreError::db)? {
            let (k, v) = item.map_err(StoreError::db)?;
            if k.value().0 != group {
                break;
            }
            let rec: SegmentRecord = postcard::from_bytes(v.value()).map_err(|e| corrupt("segment record", e))?;
            catalog.insert(rec);
        }
        let writes = catalog.segments.len() as u64;
        Ok(TenantState {
            catalog,
            chunks: ChunkStore::new(store.disk().clone(), store.root()),
            recent: VecDeque::new(),
            writes,
        })
    }

    fn apply(
        &mut self,
        _store: &Arc<Store>,
        group: &str,
        at: ApplyInfo,
        cmd: &Command,
        work: &mut Vec<TxnFn>,
    ) -> Result<Reply, StoreError> {
        let Command::Tenant(TenantCommand::PutSegment { name, blake3, data, proposed_at_ms }) = cmd else {
            self.mark(at, None);
            return Ok(Reply::None);
        };
        let reply = match self.catalog.decide_put(name, blake3, data, *proposed_at_ms, at.term, at.index) {
            PutDecision::Reply(r) => r,
            PutDecision::Store(rec) => {
                for piece in crate::storage::chunks::split(data) {
                    self.chunks.put(piece).map_err(chunk_err)?;
                }
                let row = postcard::to_stdvec(&rec).expect("segment record encodes");
                let (g, n) = (group.to_string(), rec.name.clone());
                work.push(Box::new(move |txn| {
                    let mut t = txn.open_table(SEGMENTS).map_err(StoreError::db)?;
                    t.insert((g.as_str(), n.as_str()), row.as_slice()).map_err(StoreError::db)?;
                    Ok(())
                }));
                let r = TenantReply::Stored {
                    already_present: false,
                    size: rec.size,
                    blake3: rec.blake3,
                    index: at.index,
                    term: at.term,
                };
                self.catalog.insert(rec);
                self.writes += 1;
                r
            }
        };
        self.mark(at, Some(*proposed_at_ms));
        Ok(Reply::Tenant(reply))
    }

    fn snapshot_bytes(&self, _store: &Arc<Store>) -> Result<Vec<u8>, StoreError> {
        let mut chunks = std::collections::BTreeMap::new();
        for rec in self.catalog.segments.values() {
            for h in &rec.chunks {
                if !chunks.contains_key(h) {
                    chunks.insert(*h, self.chunks.get(h).map_err(chunk_err)?);
                }
            }
        }
        let snap = TenantSnapshot {
            segments: self.catalog.segments.values().cloned().collect(),
            chunks: chunks.into_iter().collect(),
        };
        Ok(postcard::to_stdvec(&snap).expect("snapshot encodes"))
    }

    fn install(
        &mut self,
        _store: &Arc<Store>,
        group: &str,
        bytes: &[u8],
        work: &mut Vec<TxnFn>,
    ) -> Result<(), StoreError> {
        let snap: TenantSnapshot = postcard::from_bytes(bytes).map_err(|e| corrupt("tenant snapshot", e))?;
        for (h, data) in &snap.chunks {
            if blake3::hash(data).as_bytes() != h {
                return Err(corrupt("tenant snapshot", "a chunk's bytes do not match its hash"));
            }
            self.chunks.put(data).map_err(chunk_err)?;
        }
        let mut catalog = Catalog::default();
        let mut rows = vec![];
        for rec in snap.segments {
            rows.push((rec.name.clone(), postcard::to_stdvec(&rec).expect("segment record encodes")));
            catalog.insert(rec);
        }
        let g = group.to_string();
        work.push(Box::new(move |txn| {
            let mut t = txn.open_table(SEGMENTS).map_err(StoreError::db)?;
            let mut old = vec![];
            for item in t.range((g.as_str(), "")..).map_err(StoreError::db)? {
                let (k, _) = item.map_err(StoreError::db)?;
                if k.value().0 != g {
                    break;
                }
                old.push(k.value().1.to_string());
            }
            for n in old {
                t.remove((g.as_str(), n.as_str())).map_err(StoreError::db)?;
            }
            for (n, row) in rows {
                t.insert((g.as_str(), n.as_str()), row.as_slice()).map_err(StoreError::db)?;
            }
            Ok(())
        }));
        self.writes = catalog.segments.len() as u64;
        self.catalog = catalog;
        self.recent.clear();
        Ok(())
    }

    fn note_applied(&mut self, at: ApplyInfo, proposed_at_ms: Option<u64>) {
        self.mark(at, proposed_at_ms);
    }
}
