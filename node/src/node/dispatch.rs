//! Inbound peer requests: decode, check the sender's storage incarnation, route to the group
//! or the service that answers them.

use bytes::Bytes;

use super::Node;
use crate::meta::META_GROUP;
use crate::raft::group::WriteError;
use crate::raft::wire::{self, Envelope, Reply, ReplyEnvelope, Request, WireError};
use crate::seams::net::NodeId;

pub(super) async fn handle(node: Node, from: NodeId, request: Bytes) -> Bytes {
    let body = match wire::decode::<Envelope>(&request) {
        Ok(env) => route(&node, from, env).await,
        Err(e) => Reply::Error(e),
    };
    Bytes::from(wire::encode(&ReplyEnvelope { from_incarnation: node.inner.store.incarnation(), body }))
}

fn write_err(e: WriteError) -> Reply {
    match e {
        WriteError::NotLeader(l) => Reply::Error(WireError::NotLeader(l)),
        other => Reply::Error(WireError::Failed(other.to_string())),
    }
}

async fn route(node: &Node, from: NodeId, env: Envelope) -> Reply {
    // A node that lost its storage comes back with a new incarnation; it must not take part
    // under its old identity (its empty vote could elect a leader lacking committed entries).
    let registered = node.inner.directory.meta().sm.read().await.state.nodes.get(&from).map(|r| r.incarnation);
    if let Some(inc) = registered {
        if inc != env.from_incarnation && !crate::planted::on(crate::planted::Bug::WipedNodeVotes) {
            return Reply::Error(WireError::Refused(format!(
                "node {from} speaks with storage incarnation {:016x}, but the directory knows it as {inc:016x}: refused",
                env.from_incarnation
            )));
        }
    }
    match env.body {
        Request::Raft { group, rpc } => {
            if group == META_GROUP {
                node.inner.directory.meta().handle(rpc).await
            } else {
                match node.inner.hosted.get(&group) {
                    Some(g) => g.handle(rpc).await,
                    None => Reply::Error(WireError::UnknownGroup(group)),
                }
            }
        }
        Request::MetaPropose { cmd } => match node.inner.directory.meta_write(cmd).await {
            Ok((crate::raft::Reply::Meta(reply), _, index)) => Reply::MetaAt { reply, index },
            Ok((other, _, _)) => Reply::Error(WireError::Failed(format!("unexpected meta reply {other:?}"))),
            Err(e) => write_err(e),
        },
        Request::GroupProbe { group } => match node.inner.status.probe_local(&group).await {
            Some(p) => Reply::Probe(p),
            None => Reply::Error(WireError::UnknownGroup(group)),
        },
        Request::TenantLookup { name } => match node.inner.directory.meta().read_barrier().await {
            Ok(()) => Reply::Tenant(node.inner.directory.meta().sm.read().await.state.tenants.get(&name).cloned()),
            Err(e) => write_err(e),
        },
        Request::FetchChunk { group, hash } => node.inner.repair.serve_chunk(from, &group, &hash).await,
        Request::StoreChunk { group, hash, data } => node.inner.repair.store_chunk(from, &group, hash, data).await,
        Request::VerifyChunks { group, after, max_bytes } => {
            node.inner.repair.serve_verify(from, &group, after, max_bytes).await
        }
        Request::Seal { group } => node.inner.reconcile.serve_seal(&group).await,
        Request::CatalogNames { group } => node.inner.reconcile.serve_catalog_names(&group).await,
        Request::JoinMeta { node: joining } => {
            let st = node.inner.directory.meta().status();
            if st.voters.contains(&joining) || st.learners.contains(&joining) {
                return Reply::Joined;
            }
            match node.inner.directory.meta().add_learner(joining).await {
                Ok(()) => Reply::Joined,
                Err(e) => write_err(e),
            }
        }
    }
}
