//! A simulated tetrad cluster: real `tetrad_node::node::Node`s over the simulated network, disks
//! and clocks, all on one seeded, paused-time tokio runtime, and the node-level faults: power loss,
//! graceful restart, pause, disk wipe and the operator's re-initialisation of a wiped node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use tetrad_node::config::{LivenessTuning, NodeConfig, PeerConfig, RaftTuning, TlsConfig};
use tetrad_node::node::{Node, NodeDeps, StartError};
use tetrad_node::seams::net::NodeId;
use tetrad_node::storage::store::{Store, StoreError};

use crate::clock::{ClockSettings, SimClock};
use crate::disk::SimDisk;
use crate::net::SimNet;
use crate::trace::Trace;

pub const REGIONS: [&str; 4] = ["eu-central", "eu-west", "us-east", "ap-south"];

/// The running nodes, shared with client tasks (which must not hold the cluster itself).
pub type Handles = Arc<Mutex<BTreeMap<NodeId, Node>>>;

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub seed: u64,
    pub nodes_per_region: u64,
    pub one_way_ms: Vec<Vec<u64>>,
    pub raft: RaftTuning,
    pub liveness: LivenessTuning,
}

impl ClusterSpec {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes_per_region: 3,
            one_way_ms: crate::net::DEFAULT_ONE_WAY_MS.iter().map(|r| r.to_vec()).collect(),
            // Snapshots every few hundred entries, so that a region that was down catches up
            // by snapshot within one run.
            raft: RaftTuning {
                snapshot_logs_since_last: 200,
                max_in_snapshot_log_to_keep: 50,
                // Small log files, so that rolling, compaction and deletion run under faults.
                log_file_bytes: 64 << 10,
                ..RaftTuning::default()
            },
            liveness: LivenessTuning::default(),
        }
    }
}

/// What the simulator did to a node last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeState {
    Up,
    /// Lost power: only synced bytes survive.
    Crashed,
    /// Shut down on purpose (rolling restart): the page cache survives.
    Stopped,
    /// Frozen: unreachable and its clock stands still.
    Paused,
    /// Its disk was wiped; not running.
    Wiped,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Crashed => "crashed",
            NodeState::Stopped => "stopped",
            NodeState::Paused => "paused",
            NodeState::Wiped => "wiped",
        }
    }
}

pub struct SimNode {
    pub cfg: NodeConfig,
    pub region: usize,
    pub disk: SimDisk,
    pub clock: Arc<SimClock>,
    pub running: Option<Node>,
    pub state: NodeState,
    /// Re-initialised by the operator after a wipe: it runs under a new storage incarnation.
    pub replaced: bool,
}

pub struct SimCluster {
    pub spec: ClusterSpec,
    pub net: SimNet,
    pub trace: Trace,
    pub nodes: BTreeMap<NodeId, SimNode>,
    pub handles: Handles,
    rng: rand::rngs::SmallRng,
    /// Shutdowns of crashed nodes, run in the background so a fault lands at its instant.
    zombies: Vec<tokio::task::JoinHandle<()>>,
}

fn node_config(spec: &ClusterSpec, me: &PeerConfig, all: &[PeerConfig], meta_voters: &[String]) -> NodeConfig {
    NodeConfig {
        name: me.name.clone(),
        data_dir: PathBuf::from(format!("/sim/{}", me.name)),
        tls: TlsConfig { ca_cert: "unused".into(), cert: "unused".into(), key: "unused".into() },
        raft: spec.raft.clone(),
        liveness: spec.liveness.clone(),
        meta_voters: meta_voters.to_vec(),
        nodes: all.to_vec(),
    }
}

/// Cuts power to nodes synchronously, from anywhere (an ack hook runs inside a client task).
#[derive(Clone)]
pub struct PowerSwitch {
    net: SimNet,
    handles: Handles,
    disks: BTreeMap<NodeId, SimDisk>,
}

impl PowerSwitch {
    /// Power loss (or, with `wipe`, power loss and a wiped disk) at this very instant: the node
    /// drops off the network, its packets in flight die, and its disk keeps only what was synced.
    pub fn cut(&self, id: NodeId, wipe: bool, seed: u64) {
        self.net.detach(id);
        self.handles.lock().expect("handles lock").remove(&id);
        if let Some(d) = self.disks.get(&id) {
            d.crash_with(seed);
            if wipe {
                d.wipe();
            }
        }
    }
}

impl SimCluster {
    /// Builds and starts the cluster, bootstraps the meta group and waits until every node is
    /// live (bounded).
    pub async fn boot(spec: ClusterSpec) -> Result<SimCluster, String> {
        let trace = Trace::new();
        let net = SimNet::new(spec.seed, spec.one_way_ms.clone(), trace.clone());
        let mut rng = rand::rngs::SmallRng::seed_from_u64(spec.seed ^ 0x0063_6c75_7374_6572);
        let mut peers = vec![];
        for (ri, r) in REGIONS.iter().enumerate() {
            for k in 1..=spec.nodes_per_region {
                let id = (ri as u64 + 1) * 100 + k;
                let port = 10_000 + id as u16;
                peers.push(PeerConfig {
                    id,
                    name: format!("{r}-{k}"),
                    region: r.to_string(),
                    raft_addr: format!("127.0.0.1:{port}").parse().expect("literal address"),
                    api_addr: format!("127.0.0.1:{}", port + 1000).parse().expect("literal address"),
                });
            }
        }
        let mut meta_voters = vec![];
        for r in REGIONS {
            let in_r: Vec<&PeerConfig> = peers.iter().filter(|p| p.region == r).collect();
            let take = if r == REGIONS[0] && spec.nodes_per_region > 1 { 2 } else { 1 };
            meta_voters.extend(in_r.iter().take(take).map(|p| p.name.clone()));
        }
        let mut nodes = BTreeMap::new();
        for p in &peers {
            let cfg = node_config(&spec, p, &peers, &meta_voters);
            cfg.validate().map_err(|e| format!("generated config invalid: {e}"))?;
            let disk = SimDisk::new();
            let region = REGIONS.iter().position(|r| *r == p.region).expect("known region");
            net.add_node(p.id, region);
            let clock = Arc::new(SimClock::new(ClockSettings::default()));
            Store::init(Arc::new(disk.clone()), &cfg.data_dir, &cfg.name, rng.random())
                .map_err(|e| format!("init {}: {e}", cfg.name))?;
            nodes.insert(
                p.id,
                SimNode { cfg, region, disk, clock, running: None, state: NodeState::Up, replaced: false },
            );
        }
        let mut c = SimCluster { spec, net, trace, nodes, handles: Default::default(), rng, zombies: vec![] };
        let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
        for id in &ids {
            c.start(*id).await?;
        }
        let first_voter =
            c.nodes.values().find(|n| n.cfg.meta_voters[0] == n.cfg.name).map(|n| n.cfg.me().id).expect("a voter");
        let node = c.node(first_voter).expect("just started");
        node.init_cluster().await.map_err(|e| format!("init cluster: {e}"))?;
        c.wait_until(Duration::from_secs(60), |c| c.all_live())
            .await
            .map_err(|_| "nodes did not all become live within 60 s".to_string())?;
        c.trace.event("booted");
        Ok(c)
    }

    pub fn node(&self, id: NodeId) -> Option<Node> {
        self.nodes.get(&id).and_then(|n| n.running.clone())
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn region_of(&self, id: NodeId) -> usize {
        self.nodes[&id].region
    }

    /// Running nodes (paused ones included: they run, but nothing reaches them).
    pub fn running(&self) -> Vec<Node> {
        self.nodes.values().filter_map(|n| n.running.clone()).collect()
    }

    /// Running, reachable nodes (re-initialised ones included).
    pub fn reachable(&self) -> Vec<Node> {
        self.nodes.values().filter(|n| n.state == NodeState::Up).filter_map(|n| n.running.clone()).collect()
    }

    /// Running, reachable nodes that the cluster still knows under their original identity.
    pub fn serving(&self) -> Vec<Node> {
        self.nodes
            .values()
            .filter(|n| n.state == NodeState::Up && !n.replaced)
            .filter_map(|n| n.running.clone())
            .collect()
    }

    pub fn all_live(&self) -> bool {
        self.nodes.values().all(|n| n.running.as_ref().is_some_and(|x| x.is_live()))
    }

    pub fn region_nodes(&self, region: usize) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.region == region).map(|(id, _)| *id).collect()
    }

    pub fn power_switch(&self) -> PowerSwitch {
        PowerSwitch {
            net: self.net.clone(),
            handles: self.handles.clone(),
            disks: self.nodes.iter().map(|(id, n)| (*id, n.disk.clone())).collect(),
        }
    }

    pub fn draw_seed(&mut self) -> u64 {
        self.rng.random()
    }

    /// Starts a node that is not running. A node whose store is gone (wiped) is re-initialised
    /// first, as the operator would (`tetrad init`): a new storage incarnation, under which the
    /// product must keep it from voting as its old self.
    pub async fn start(&mut self, id: NodeId) -> Result<(), String> {
        let n = self.nodes.get(&id).ok_or("unknown node")?;
        if n.running.is_some() {
            return Ok(());
        }
        // Whatever identity it comes back under, a wiped node lost everything it held.
        let wiped = n.state == NodeState::Wiped;
        let node = match self.start_once(id).await {
            Err(StartError::Store(StoreError::Missing(_))) => {
                let incarnation: u64 = self.rng.random();
                let n = &self.nodes[&id];
                Store::init(Arc::new(n.disk.clone()), &n.cfg.data_dir, &n.cfg.name, incarnation)
                    .map_err(|e| format!("re-init {}: {e}", n.cfg.name))?;
                self.nodes.get_mut(&id).expect("exists").replaced = true;
                self.trace.event(&format!("re-init {id} incarnation {incarnation:016x}"));
                self.start_once(id).await
            }
            other => other,
        }
        .map_err(|e| format!("start {id}: {e}"))?;
        self.trace.event(&format!("start {id}"));
        self.handles.lock().expect("handles lock").insert(id, node.clone());
        let n = self.nodes.get_mut(&id).expect("exists");
        n.running = Some(node);
        n.state = NodeState::Up;
        n.replaced |= wiped;
        Ok(())
    }

    async fn start_once(&self, id: NodeId) -> Result<Node, StartError> {
        let n = &self.nodes[&id];
        let deps = NodeDeps { clock: n.clock.clone(), disk: Arc::new(n.disk.clone()) };
        let net = self.net.clone();
        Node::start(n.cfg.clone(), deps, move |handler| {
            net.attach(id, handler);
            Ok(net.transport_for(id) as tetrad_node::seams::net::TransportRef)
        })
        .await
    }

    /// Finishes a power loss that a [`PowerSwitch`] began: the node's tasks are stopped in the
    /// background (they can no longer reach the network or the disk).
    pub fn reap(&mut self, id: NodeId, state: NodeState) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        n.state = state;
        n.clock.thaw();
        if let Some(node) = n.running.take() {
            self.zombies.push(tokio::spawn(async move { node.shutdown().await }));
        }
        self.trace.event(&format!("{} {id}", state.as_str()));
    }

    /// Power loss: the node stops at once and its disk keeps only what was synced.
    pub fn crash(&mut self, id: NodeId) {
        let seed = self.draw_seed();
        self.power_switch().cut(id, false, seed);
        self.reap(id, NodeState::Crashed);
    }

    /// Power loss and a wiped disk.
    pub fn wipe(&mut self, id: NodeId) {
        let seed = self.draw_seed();
        self.power_switch().cut(id, true, seed);
        self.reap(id, NodeState::Wiped);
    }

    /// A graceful stop: the node shuts down, the machine keeps its page cache.
    pub async fn stop(&mut self, id: NodeId) {
        self.handles.lock().expect("handles lock").remove(&id);
        let Some(n) = self.nodes.get_mut(&id) else { return };
        let node = n.running.take();
        n.state = NodeState::Stopped;
        self.net.detach(id);
        if let Some(node) = node {
            node.shutdown().await;
        }
        self.nodes[&id].disk.kill_backends();
        self.trace.event(&format!("stop {id}"));
    }

    /// Freezes a running node: nothing reaches it or leaves it, and its clocks stand still.
    pub fn pause(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        if n.state != NodeState::Up || n.running.is_none() {
            return;
        }
        n.state = NodeState::Paused;
        n.clock.freeze();
        self.net.set_reachable(id, false);
        self.handles.lock().expect("handles lock").remove(&id);
        self.trace.event(&format!("pause {id}"));
    }

    pub fn resume(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        if n.state != NodeState::Paused {
            return;
        }
        n.state = NodeState::Up;
        n.clock.thaw();
        self.net.set_reachable(id, true);
        if let Some(node) = n.running.clone() {
            self.handles.lock().expect("handles lock").insert(id, node);
        }
        self.trace.event(&format!("resume {id}"));
    }

    /// Advances simulated time until `cond` holds, checking every 100 ms; Err on timeout.
    pub async fn wait_until(&self, limit: Duration, mut cond: impl FnMut(&SimCluster) -> bool) -> Result<Duration, ()> {
        let start = tokio::time::Instant::now();
        loop {
            if cond(self) {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= limit {
                return Err(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn shutdown(&mut self) {
        for id in self.ids() {
            if let Some(node) = self.nodes.get_mut(&id).and_then(|n| n.running.take()) {
                self.handles.lock().expect("handles lock").remove(&id);
                node.shutdown().await;
            }
        }
        for z in std::mem::take(&mut self.zombies) {
            let _ = tokio::time::timeout(Duration::from_secs(30), z).await;
        }
    }
}
