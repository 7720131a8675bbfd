//! openraft's network for one group, over the transport seam.
//!
//! Every RPC is bounded by the deadline openraft gives it (the transport enforces it), so an RPC
//! to a dead or partitioned peer ends instead of wedging replication. `pre_vote` and
//! `transfer_leader` are real RPCs: openraft's defaults would grant every pre-vote and report
//! every leader transfer as unreachable.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};

use super::peers::PeerBook;
use super::types::{Snapshot, TypeConfig, Vote};
use super::wire::{self, Envelope, RaftRpc, Reply, ReplyEnvelope, Request, WireError};
use crate::seams::net::{NodeId, TransportRef};

/// Creates per-peer clients for one group.
#[derive(Clone)]
pub struct GroupNetwork {
    group: Arc<str>,
    transport: TransportRef,
    incarnation: u64,
    snapshot_timeout: Duration,
    peers: PeerBook,
}

impl GroupNetwork {
    pub fn new(
        group: &str,
        transport: TransportRef,
        incarnation: u64,
        snapshot_timeout: Duration,
        peers: PeerBook,
    ) -> Self {
        Self { group: group.into(), transport, incarnation, snapshot_timeout, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &openraft::EmptyNode) -> PeerClient {
        PeerClient { net: self.clone(), target }
    }
}

pub struct PeerClient {
    net: GroupNetwork,
    target: NodeId,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

fn unreachable<E: std::error::Error + 'static>(e: &E) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(e))
}

impl PeerClient {
    async fn call(&self, rpc: RaftRpc, timeout: Duration) -> Result<Reply, RPCError<TypeConfig>> {
        let env = Envelope {
            from_incarnation: self.net.incarnation,
            body: Request::Raft { group: self.net.group.to_string(), rpc },
        };
        let bytes = Bytes::from(wire::encode(&env));
        let timeout = deadline_for(timeout, bytes.len());
        let reply = self.net.transport.call(self.target, bytes, timeout).await.map_err(|e| unreachable(&e))?;
        let reply: ReplyEnvelope = wire::decode(&reply).map_err(|e| unreachable(&e))?;
        // A wiped node's answer (its empty vote above all) must never count.
        self.net.peers.check(self.target, reply.from_incarnation).map_err(|e| unreachable(&Msg(e)))?;
        match reply.body {
            Reply::Error(e) => Err(unreachable(&e)),
            r => Ok(r),
        }
    }
}

/// Bytes per second an append is assumed to need at worst: transfer plus fdatasync on a busy
/// disk. openraft gives every append the heartbeat interval as its deadline (300 ms by
/// default); an append carrying MiB-sized WAL entries cannot be written and synced that fast on
/// a loaded disk, and resending the same batch after each timeout would stall the follower for
/// good. Empty appends (heartbeats) keep openraft's deadline, so a dead peer is still noticed fast.
const WORST_BYTES_PER_SEC: u64 = 4 << 20;
const LARGE_MESSAGE_BYTES: usize = 64 << 10;

fn deadline_for(given: Duration, bytes: usize) -> Duration {
    if bytes < LARGE_MESSAGE_BYTES {
        return given;
    }
    given.max(Duration::from_secs(2) + Duration::from_millis(bytes as u64 * 1000 / WORST_BYTES_PER_SEC))
}

fn unexpected(r: Reply) -> RPCError<TypeConfig> {
    unreachable(&WireError::Malformed(format!("unexpected reply {r:?}")))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: wire::AppendRequest,
        option: RPCOption,
    ) -> Result<wire::AppendResponse, RPCError<TypeConfig>> {
        match self.call(RaftRpc::Append(rpc), option.hard_ttl()).await? {
            Reply::Append(r) => Ok(r),
            r => Err(unexpected(r)),
        }
    }

    async fn vote(
        &mut self,
        rpc: wire::VoteRequest,
        option: RPCOption,
    ) -> Result<wire::VoteResponse, RPCError<TypeConfig>> {
        match self.call(RaftRpc::Vote(rpc), option.hard_ttl()).await? {
            Reply::Vote(r) => Ok(r),
            r => Err(unexpected(r)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: wire::VoteRequest,
        option: RPCOption,
    ) -> Result<wire::VoteResponse, RPCError<TypeConfig>> {
        match self.call(RaftRpc::PreVote(rpc), option.hard_ttl()).await? {
            Reply::Vote(r) => Ok(r),
            r => Err(unexpected(r)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<wire::SnapshotResponse, StreamingError<TypeConfig>> {
        let rpc = RaftRpc::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot };
        let timeout = self.net.snapshot_timeout;
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.call(rpc, timeout) => match r {
                Ok(Reply::Snapshot(s)) => Ok(s),
                Ok(other) => Err(StreamingError::Unreachable(Unreachable::new(&Msg(format!("unexpected reply {other:?}"))))),
                Err(e) => Err(StreamingError::Unreachable(Unreachable::new(&Msg(e.to_string())))),
            },
        }
    }

    async fn transfer_leader(
        &mut self,
        req: wire::TransferLeaderRequest,
        option: RPCOption,
    ) -> Result<wire::TransferLeaderResponse, RPCError<TypeConfig>> {
        match self.call(RaftRpc::TransferLeader(req), option.hard_ttl()).await? {
            Reply::TransferLeader(r) => Ok(r),
            r => Err(unexpected(r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_messages_keep_openraft_deadline_and_large_ones_get_time_to_be_synced() {
        let hb = Duration::from_millis(300);
        assert_eq!(deadline_for(hb, 200), hb);
        assert_eq!(deadline_for(hb, 16 << 20), Duration::from_secs(6));
        assert_eq!(deadline_for(Duration::from_secs(30), 16 << 20), Duration::from_secs(30));
    }
}
