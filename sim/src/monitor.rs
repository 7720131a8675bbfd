//! Watches the cluster while a run goes on: the one-leader-per-term safety oracle (every group,
//! every 50 ms of simulated time), and samples of the tenant's leader and replication lag per
//! region for the report.

use std::collections::BTreeMap;
use std::time::Duration;

use tetrad_node::node::Node;
use tetrad_node::seams::net::NodeId;

use crate::cluster::Handles;
use crate::timeline::Timeline;

const TICK: Duration = Duration::from_millis(50);
/// Leader samples every 5 ticks, lag samples every 10.
const LEADER_EVERY: u64 = 5;
const LAG_EVERY: u64 = 10;

/// Runs until `stop` flips; returns the safety violations seen.
pub async fn monitor(
    handles: Handles,
    group: String,
    tl: Timeline,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<String> {
    let mut seen: BTreeMap<(String, u64), NodeId> = BTreeMap::new();
    let mut violations = vec![];
    let mut tick: u64 = 0;
    loop {
        let nodes: Vec<Node> = handles.lock().expect("handles lock").values().cloned().collect();
        let mut tenant_leader: Option<(u64, NodeId)> = None;
        for n in &nodes {
            for (g, term, leader) in n.group_leaders() {
                if leader != Some(n.id()) {
                    continue;
                }
                if g == group && tenant_leader.is_none_or(|(t, _)| term > t) {
                    tenant_leader = Some((term, n.id()));
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
            tl.leader(tenant_leader.map(|(_, id)| id), tenant_leader.map_or(0, |(t, _)| t));
        }
        if tick.is_multiple_of(LAG_EVERY) {
            if let Some((_, id)) = tenant_leader {
                if let Some(node) = nodes.iter().find(|n| n.id() == id) {
                    if let Some(p) = node.probe_local(&group).await {
                        tl.lag(p.lag.into_iter().map(|l| (l.region, l.writes, l.seconds)).collect());
                    }
                }
            }
        }
        tick += 1;
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return violations,
        }
    }
}
