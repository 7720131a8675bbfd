//! The node's background loops: liveness renewal and reconciliation with the meta directory.

use std::time::Duration;

use super::Node;
use crate::meta::state::{MetaCommand, MetaReply};
use crate::raft::group::Group;
use crate::tenant::group_state::TenantState;

/// How often the node compares what it runs with what the directory says.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);

pub(super) fn spawn_all(node: &Node) {
    tokio::spawn(liveness_loop(node.clone()));
    tokio::spawn(reconcile_loop(node.clone()));
}

async fn liveness_loop(node: Node) {
    let mut stop = node.inner.stop.subscribe();
    let every = node.inner.cfg.liveness.renew_interval();
    loop {
        let sent_at = node.inner.liveness.now();
        let cmd = MetaCommand::Heartbeat {
            node: node.inner.me,
            incarnation: node.inner.store.incarnation(),
            proposed_at_ms: node.inner.clock.wall_now_ms(),
        };
        match tokio::time::timeout(every * 2, node.propose_meta(cmd)).await {
            Ok(Ok(MetaReply::HeartbeatAccepted)) => node.inner.liveness.renewed(sent_at),
            Ok(Ok(MetaReply::HeartbeatRefused { reason })) | Ok(Ok(MetaReply::Refused { reason })) => {
                node.inner.liveness.revoke();
                let mut r = node.inner.refused.lock().expect("refused lock");
                if r.is_none() {
                    tracing::error!(node = %node.name(), %reason, "the meta group refuses this node; it will not ack any write");
                }
                *r = Some(reason);
            }
            Ok(Ok(other)) => tracing::warn!(?other, "unexpected heartbeat reply"),
            Ok(Err(e)) => tracing::debug!(error = %e, "liveness renewal failed"),
            Err(_) => tracing::debug!("liveness renewal timed out"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn reconcile_loop(node: Node) {
    let mut stop = node.inner.stop.subscribe();
    let mut ticks: u64 = 0;
    loop {
        ticks += 1;
        if ticks % 8 == 1 {
            node.join_meta_if_needed().await;
        }
        reconcile_tenants(&node).await;
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn reconcile_tenants(node: &Node) {
    let records: Vec<_> = node.inner.meta.sm.read().await.state.tenants.values().cloned().collect();
    for rec in records {
        if !rec.members().any(|m| m == node.inner.me) {
            continue;
        }
        let group = rec.group();
        let existing = node.tenant_group(&group);
        let g = match existing {
            Some(g) => g,
            None => {
                match Group::<TenantState>::start(
                    &group,
                    node.inner.store.clone(),
                    node.inner.transport.clone(),
                    &node.inner.cfg.raft,
                    node.inner.me,
                    node.inner.peers.clone(),
                )
                .await
                {
                    Ok(g) => {
                        let g = std::sync::Arc::new(g);
                        node.inner.tenants.lock().expect("tenants lock").insert(group.clone(), g.clone());
                        tracing::info!(node = %node.name(), %group, "tenant group started");
                        g
                    }
                    Err(e) => {
                        tracing::error!(node = %node.name(), %group, error = %e, "cannot start tenant group");
                        continue;
                    }
                }
            }
        };
        // The first voter of the placement bootstraps the group; the rest join through it.
        if rec.voters.first() == Some(&node.inner.me) {
            match g.initialize(&rec.voters).await {
                Ok(true) => tracing::info!(%group, voters = ?rec.voters, "tenant group initialised"),
                Ok(false) => {}
                Err(e) => tracing::warn!(%group, error = %e, "tenant group initialisation failed; will retry"),
            }
        }
    }
}
