//! A simulated tetrad cluster: real `tetrad_node::node::Node`s over the simulated network, disks
//! and clocks, all on one seeded, paused-time tokio runtime.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tetrad_node::config::{LivenessTuning, NodeConfig, PeerConfig, RaftTuning, TlsConfig};
use tetrad_node::node::{Node, NodeDeps};
use tetrad_node::seams::net::NodeId;
use tetrad_node::storage::store::Store;

use crate::clock::{ClockSettings, SimClock};
use crate::disk::SimDisk;
use crate::net::SimNet;
use crate::trace::Trace;

pub const REGIONS: [&str; 4] = ["eu-central", "eu-west", "us-east", "ap-south"];

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
            raft: RaftTuning {
                snapshot_logs_since_last: 200,
                max_in_snapshot_log_to_keep: 50,
                ..RaftTuning::default()
            },
            liveness: LivenessTuning::default(),
        }
    }
}

pub struct SimNode {
    pub cfg: NodeConfig,
    pub region: usize,
    pub disk: SimDisk,
    pub clock: Arc<SimClock>,
    pub running: Option<Node>,
}

pub struct SimCluster {
    pub spec: ClusterSpec,
    pub net: SimNet,
    pub trace: Trace,
    pub nodes: BTreeMap<NodeId, SimNode>,
    /// The running nodes, shared with client tasks (which must not hold the cluster itself).
    pub handles: Arc<std::sync::Mutex<BTreeMap<NodeId, Node>>>,
    rng: rand::rngs::SmallRng,
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

impl SimCluster {
    /// Builds and starts the cluster, bootstraps the meta group and waits until every node is
    /// live (bounded).
    pub async fn boot(spec: ClusterSpec) -> Result<SimCluster, String> {
        use rand::{RngExt, SeedableRng};
        let trace = Trace::new();
        let net = SimNet::new(spec.seed, spec.one_way_ms.clone(), trace.clone());
        let mut rng = rand::rngs::SmallRng::seed_from_u64(spec.seed ^ 0x636c_7573_7465_72);
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
            nodes.insert(p.id, SimNode { cfg, region, disk, clock, running: None });
        }
        let mut c = SimCluster { spec, net, trace, nodes, handles: Default::default(), rng };
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

    pub fn running(&self) -> Vec<Node> {
        self.nodes.values().filter_map(|n| n.running.clone()).collect()
    }

    pub fn all_live(&self) -> bool {
        self.nodes.values().all(|n| n.running.as_ref().is_some_and(|x| x.is_live()))
    }

    pub fn region_nodes(&self, region: usize) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.region == region).map(|(id, _)| *id).collect()
    }

    pub async fn start(&mut self, id: NodeId) -> Result<(), String> {
        let n = self.nodes.get(&id).ok_or("unknown node")?;
        if n.running.is_some() {
            return Ok(());
        }
        let deps = NodeDeps { clock: n.clock.clone(), disk: Arc::new(n.disk.clone()) };
        let net = self.net.clone();
        let node = Node::start(n.cfg.clone(), deps, move |handler| {
            net.attach(id, handler);
            Ok(net.transport_for(id) as tetrad_node::seams::net::TransportRef)
        })
        .await
        .map_err(|e| format!("start {}: {e}", n.cfg.name))?;
        self.trace.event(&format!("start {id}"));
        self.handles.lock().expect("handles lock").insert(id, node.clone());
        self.nodes.get_mut(&id).expect("exists").running = Some(node);
        Ok(())
    }

    /// Power loss: the node stops at once and its disk keeps only what was synced.
    pub async fn crash(&mut self, id: NodeId) {
        use rand::RngExt;
        let seed: u64 = self.rng.random();
        let Some(n) = self.nodes.get_mut(&id) else { return };
        self.net.detach(id);
        self.handles.lock().expect("handles lock").remove(&id);
        // Power loss first: the disk keeps only what was synced and refuses the dead node's
        // further writes; only then are the node's tasks stopped.
        n.disk.crash_with(seed);
        if let Some(node) = n.running.take() {
            node.shutdown().await;
        }
        self.trace.event(&format!("crash {id}"));
    }

    pub async fn crash_region(&mut self, region: usize) {
        for id in self.region_nodes(region) {
            self.crash(id).await;
        }
    }

    pub async fn restart_region(&mut self, region: usize) -> Result<(), String> {
        for id in self.region_nodes(region) {
            self.start(id).await?;
        }
        Ok(())
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
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if let Some(node) = self.nodes.get_mut(&id).and_then(|n| n.running.take()) {
                self.handles.lock().expect("handles lock").remove(&id);
                node.shutdown().await;
            }
        }
    }
}
