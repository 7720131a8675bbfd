//! Watches the cluster while a run goes on: the one-leader-per-term safety oracle (every group,
//! every 50 ms of simulated time), samples of the tenant's leader and replication lag per region
//! for the report, and the newest ack each epoch's leader has reported to the meta group (the
//! loss-accounting oracle checks `lost_writes_min` against it).

use std::collections::BTreeMap;
use std::time::Duration;

use tetrad_node::meta::state::AckMark;
use tetrad_node::node::Node;
use tetrad_node::seams::net::NodeId;

use crate::cluster::Handles;
use crate::timeline::Timeline;

const TICK: Duration = Duration::from_millis(50);
/// Leader samples every 5 ticks, lag samples every 10.
const LEADER_EVERY: u64 = 5;
const LAG_EVERY: u64 = 10;

#[derive(Debug, Default)]
pub struct Watched {
    pub violations: Vec<String>,
    /// Per epoch of the tenant: the newest ack its leader reported to the meta group, as any
    /// node's copy of the directory showed it.
    pub reported: BTreeMap<u64, AckMark>,
}

/// Runs until `stop` flips; returns the safety violations seen and the reported acks.
pub async fn monitor(
    handles: Handles,
    tenant: String,
    tl: Timeline,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Watched {
    let prefix = format!("t/{tenant}/");
    let mut seen: BTreeMap<(String, u64), NodeId> = BTreeMap::new();
    let mut violations = vec![];
    let mut reported: BTreeMap<u64, AckMark> = BTreeMap::new();
    let mut tick: u64 = 0;
    loop {
        let nodes: Vec<Node> = handles.lock().expect("handles lock").values().cloned().collect();
        // (epoch, term, leader, group)
        let mut tenant_leader: Option<(u64, u64, NodeId, String)> = None;
        for n in &nodes {
            for (g, term, leader) in n.group_leaders() {
                if leader != Some(n.id()) {
                    continue;
                }
                if let Some(epoch) = g.strip_prefix(&prefix).and_then(|e| e.parse::<u64>().ok()) {
                    if tenant_leader.as_ref().is_none_or(|(e, t, _, _)| (epoch, term) > (*e, *t)) {
                        tenant_leader = Some((epoch, term, n.id(), g.clone()));
                    }
                }
                match seen.get(&(g.clone(), term)) {
                    Some(other) if *other != n.id() => {
                        let v = format!("safety: group {g} has two leaders in term {term}: {other} and {}", n.id());
                        if !violations.contains(&v) {
                            tl.log(v.clone());
                            violations.push(v);
                        }
                    }
                    Some(_) => {}
                    None => {
                        seen.insert((g, term), n.id());
                    }
                }
            }
        }
        if tick.is_multiple_of(LEADER_EVERY) {
            tl.leader(tenant_leader.as_ref().map(|l| l.2), tenant_leader.as_ref().map_or(0, |l| l.1));
            for n in &nodes {
                for rec in n.tenant_records().await.into_iter().filter(|r| r.spec.name == tenant) {
                    if let Some(mark) = rec.acked {
                        let e = reported.entry(rec.epoch).or_insert(mark);
                        if mark.position() > e.position() {
                            *e = mark;
                        }
                    }
                }
            }
        }
        if tick.is_multiple_of(LAG_EVERY) {
            if let Some((_, _, id, group)) = &tenant_leader {
                if let Some(node) = nodes.iter().find(|n| n.id() == *id) {
                    if let Some(p) = node.probe_local(group).await {
                        tl.lag(p.lag.into_iter().map(|l| (l.region, l.writes, l.seconds)).collect());
                    }
                }
            }
        }
        tick += 1;
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return Watched { violations, reported },
        }
    }
}
