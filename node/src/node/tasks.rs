//! The node's background loops: liveness renewal, reconciliation with the meta directory, the
//! failover controller, the chunk scrub, and the takeover of groups whose leader went silent.
//! Each loop drives one service; the loops own only their pacing (and, for the scrub and the
//! takeover, the loop's own memory).

use std::time::Duration;

use super::repair::Scrub;
use super::takeover::Takeover;
use super::Node;
use crate::meta::liveness::Liveness;
use crate::meta::state::{MetaCommand, MetaReply};

/// How often the node compares what it runs with what the directory says.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);

pub(super) fn spawn_all(node: &Node) {
    tokio::spawn(liveness_loop(node.clone()));
    tokio::spawn(reconcile_loop(node.clone()));
    tokio::spawn(control_loop(node.clone()));
    tokio::spawn(scrub_loop(node.clone()));
    tokio::spawn(takeover_loop(node.clone()));
}

async fn liveness_loop(node: Node) {
    let mut stop = node.inner.stop.subscribe();
    let every = node.inner.cfg.liveness.renew_interval();
    let liveness: &Liveness = &node.inner.liveness;
    // Why the meta group refused this node's heartbeats, if it did.
    let mut refused: Option<String> = None;
    loop {
        let sent_at = liveness.now();
        let cmd = MetaCommand::Heartbeat {
            node: node.inner.me,
            incarnation: node.inner.store.incarnation(),
            proposed_at_ms: node.inner.clock.wall_now_ms(),
        };
        // The ack marks ride in the same meta batch as the renewal (`report_batch.rs`), so that
        // a tenant leader's round takes as long as everyone else's and the rounds stay aligned.
        // Both are bounded alike, so that an unreachable meta group delays the next renewal
        // attempt no more than before (an unfinished report is sent again next round). The
        // renewal takes effect as soon as it is applied, never after the reports: a slow report
        // must not let the lease lapse (issue #13).
        let renew = async {
            match tokio::time::timeout(every * 2, node.inner.directory.propose_meta_at(cmd)).await {
                Ok(Ok((MetaReply::HeartbeatAccepted, index))) => {
                    // The lease counts only once this node's copy of the directory holds
                    // everything committed up to the renewal: a region that was cut off while
                    // the meta group sealed or replaced a tenant's epoch sees that before it may
                    // ack again.
                    if node.inner.directory.wait_meta_applied(index, every).await {
                        liveness.renewed(sent_at);
                    }
                }
                Ok(Ok((MetaReply::HeartbeatRefused { reason }, _))) | Ok(Ok((MetaReply::Refused { reason }, _))) => {
                    liveness.revoke();
                    if refused.is_none() {
                        tracing::error!(node = %node.name(), %reason, "the meta group refuses this node; it will not ack any write");
                    }
                    refused = Some(reason);
                }
                Ok(Ok((other, _))) => tracing::warn!(?other, "unexpected heartbeat reply"),
                Ok(Err(e)) => tracing::debug!(error = %e, "liveness renewal failed"),
                Err(_) => tracing::debug!("liveness renewal timed out"),
            }
        };
        let _ = tokio::join!(renew, tokio::time::timeout(every * 2, node.inner.writes.report_acks()));
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
            node.inner.directory.join_meta_if_needed().await;
        }
        node.inner.reconcile.reconcile_tenants(ticks % 8 == 1).await;
        let meta = node.inner.directory.meta().status();
        if node.inner.reconcile.should_hand_over(crate::meta::META_GROUP, &meta) {
            node.inner.reconcile.step_down(node.inner.directory.meta(), &meta).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Checks every chunk the node's tenant catalogs reference, a step at a time, and repairs damaged
/// ones from peers (`repair.rs`). A step in progress is dropped when the node stops.
async fn scrub_loop(node: Node) {
    let mut stop = node.inner.stop.subscribe();
    let mut scrub = Scrub::default();
    loop {
        let pause = tokio::select! {
            pause = node.inner.repair.scrub_step(&mut scrub) => pause,
            _ = stop.changed() => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Campaigns in groups whose leader went silent past its lease (`takeover.rs`).
async fn takeover_loop(node: Node) {
    let mut stop = node.inner.stop.subscribe();
    let inner = &node.inner;
    let heartbeat = Duration::from_millis(inner.cfg.raft.heartbeat_interval_ms);
    let mut takeover = Takeover::new(inner.me, heartbeat, inner.directory.clone(), inner.hosted.clone());
    loop {
        takeover.takeover_once().await;
        tokio::select! {
            _ = tokio::time::sleep(super::takeover::TAKEOVER_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The failover controller: does something only while this node leads the meta group.
async fn control_loop(node: Node) {
    let mut stop = node.inner.stop.subscribe();
    loop {
        node.inner.controller.control_once().await;
        tokio::select! {
            _ = tokio::time::sleep(super::controller::CONTROL_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}
