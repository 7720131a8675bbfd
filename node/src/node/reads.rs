//! The read path: a tenant's segments and their bytes, linearizable on the tenant's leader
//! (ReadIndex first, so a deposed leader never answers "not found" for a segment that exists),
//! each chunk verified and a damaged copy repaired from another replica before it is served.
//! It owns no state.

use std::sync::Arc;

use super::directory::Directory;
use super::hosted::{HostedGroups, TenantGroup};
use super::status::Status;
use crate::api::error::ApiError;
use crate::storage::chunks::Hash;
use crate::tenant::catalog::SegmentRecord;

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
}
