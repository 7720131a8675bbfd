//! A cluster directory: `cluster.toml` (the topology every command reads), the CA, and one
//! directory per node with its config, certificate, data, log and pid file. Planning a local
//! cluster is pure ([`plan_local`]); [`write_local`] puts the plan on disk.
//!
//! ```text
//! DIR/cluster.toml                 meta_voters and [[nodes]]
//! DIR/ca.pem, DIR/ca.key (0600)
//! DIR/nodes/<name>/node.toml       the node's full NodeConfig
//! DIR/nodes/<name>/cert.pem, key.pem (0600)
//! DIR/nodes/<name>/data/           the node's data_dir
//! DIR/nodes/<name>/node.log        stdout and stderr of the node process
//! DIR/nodes/<name>/pid
//! DIR/identities/admin.crt, admin.key (0600), ca.crt   the admin identity tetradctl uses by default
//! ```

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tetrad_config::certs::{CaBundle, NodeCert};
use tetrad_config::file::{NodeConfig, PeerConfig, TlsConfig};

use crate::ports::NodePorts;
use crate::tuning::Tuning;

/// The regions of a local cluster, in order; a node's id is `(index + 1) * 100 + k`.
pub const REGIONS: [&str; 4] = ["eu-central", "eu-west", "us-east", "ap-south"];
pub const CLUSTER_FILE: &str = "cluster.toml";
/// Ids leave two digits for the node's number within its region.
pub const MAX_NODES_PER_REGION: u32 = 99;

/// `cluster.toml`: the topology, in the same shape as a node config's `meta_voters` and `nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub meta_voters: Vec<String>,
    pub nodes: Vec<PeerConfig>,
}

impl ClusterFile {
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a ClusterFile always serializes")
    }

    /// Reads `DIR/cluster.toml`; a cluster file with no nodes is refused, since no command could
    /// talk to anything.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; create a cluster with `tetradctl cluster up --local` or pass --cluster DIR",
                path.display()
            )
        })?;
        let file = Self::parse(&text).with_context(|| format!("{} is not valid", path.display()))?;
        anyhow::ensure!(!file.nodes.is_empty(), "{} lists no nodes", path.display());
        Ok(file)
    }

    /// The api addresses in file order: the order in which commands try nodes.
    pub fn api_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.api_addr.to_string()).collect()
    }

    pub fn node(&self, name: &str) -> Option<&PeerConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Regions in order of first appearance.
    pub fn regions(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.nodes.iter().map(|n| n.region.as_str()).filter(|r| seen.insert(*r)).collect()
    }
}

/// Paths inside a cluster directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    /// `root` should be absolute: node configs name paths under it and nodes run elsewhere.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
    pub fn cluster_file(&self) -> PathBuf {
        self.root.join(CLUSTER_FILE)
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// Client identities made by `cluster up` (the admin's) or `certs issue --out` here.
    pub fn identities_dir(&self) -> PathBuf {
        self.root.join("identities")
    }
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.root.join("nodes").join(name)
    }
    pub fn node_config(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.toml")
    }
    pub fn node_cert(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("cert.pem")
    }
    pub fn node_key(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("key.pem")
    }
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("data")
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.log")
    }
    pub fn pid(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("pid")
    }
}

/// Whether every entry of `dir` is one that `cluster up` creates, so that wiping it can only
/// destroy a tetrad cluster (a mistyped `--cluster $HOME --force` must not empty a home directory).
pub fn looks_like_cluster_dir(dir: &Path) -> std::io::Result<bool> {
    const OURS: [&str; 5] = [CLUSTER_FILE, "ca.pem", "ca.key", "nodes", "identities"];
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if !OURS.iter().any(|o| name == *o) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The node names that have a directory under `DIR/nodes`, sorted: found without cluster.toml,
/// so processes can be stopped even if it is missing or damaged.
pub fn node_dirs(layout: &Layout) -> std::io::Result<Vec<String>> {
    let nodes = layout.root.join("nodes");
    if !nodes.exists() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(nodes)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

pub fn check_nodes_per_region(n: u32) -> Result<(), String> {
    if !(1..=MAX_NODES_PER_REGION).contains(&n) {
        return Err(format!("--nodes-per-region must be between 1 and {MAX_NODES_PER_REGION}"));
    }
    Ok(())
}

/// Everything `cluster up` writes, decided before anything is written.
#[derive(Debug, Clone)]
pub struct LocalPlan {
    pub cluster: ClusterFile,
    /// One per node, in `cluster.nodes` order.
    pub configs: Vec<NodeConfig>,
}

/// The topology of a local cluster: `nodes_per_region` nodes in each of [`REGIONS`], on the
/// given ports (one pair per node, in region-major order).
pub fn local_topology(nodes_per_region: u32, ports: &[NodePorts]) -> Result<ClusterFile, String> {
    check_nodes_per_region(nodes_per_region)?;
    let count = REGIONS.len() * nodes_per_region as usize;
    assert_eq!(ports.len(), count, "one port pair per node");
    let mut nodes = Vec::with_capacity(count);
    for (r, region) in REGIONS.iter().enumerate() {
        for k in 1..=nodes_per_region {
            let p = ports[nodes.len()];
            nodes.push(PeerConfig {
                id: (r as u64 + 1) * 100 + u64::from(k),
                name: format!("{region}-{k}"),
                region: (*region).to_owned(),
                raft_addr: p.raft_addr,
                api_addr: p.api_addr,
            });
        }
    }
    Ok(ClusterFile { meta_voters: meta_voters(nodes_per_region), nodes })
}

/// Five meta voters, two in the first region and one in each other, so no region holds a
/// majority and losing any one region leaves a majority; with one node per region, four (the
/// loss of any one region still leaves three of four).
pub fn meta_voters(nodes_per_region: u32) -> Vec<String> {
    let mut voters = vec![format!("{}-1", REGIONS[0])];
    if nodes_per_region >= 2 {
        voters.push(format!("{}-2", REGIONS[0]));
    }
    voters.extend(REGIONS[1..].iter().map(|r| format!("{r}-1")));
    voters
}

/// The whole plan: topology plus one validated NodeConfig per node.
pub fn plan_local(
    layout: &Layout,
    nodes_per_region: u32,
    tuning: &Tuning,
    ports: &[NodePorts],
) -> Result<LocalPlan, String> {
    let cluster = local_topology(nodes_per_region, ports)?;
    let mut configs = Vec::with_capacity(cluster.nodes.len());
    for node in &cluster.nodes {
        let cfg = NodeConfig {
            name: node.name.clone(),
            data_dir: layout.data_dir(&node.name),
            tls: TlsConfig {
                ca_cert: layout.ca_cert(),
                cert: layout.node_cert(&node.name),
                key: layout.node_key(&node.name),
            },
            raft: tuning.raft.clone(),
            liveness: tuning.liveness.clone(),
            meta_voters: cluster.meta_voters.clone(),
            nodes: cluster.nodes.clone(),
        };
        // Bad tuning is caught here, before anything is written.
        cfg.validate()?;
        configs.push(cfg);
    }
    Ok(LocalPlan { cluster, configs })
}

/// Writes the plan, the CA and the node certificates. `certs` is in `plan.configs` order.
pub fn write_local(layout: &Layout, plan: &LocalPlan, ca: &CaBundle, certs: &[NodeCert]) -> anyhow::Result<()> {
    assert_eq!(certs.len(), plan.configs.len(), "one certificate per node");
    std::fs::create_dir_all(&layout.root).with_context(|| format!("cannot create {}", layout.root.display()))?;
    // Written first: its presence marks the directory as a cluster, so a `cluster up` that fails
    // halfway leaves a directory that `cluster up --force` and `cluster down --purge` recognise.
    write_file(&layout.cluster_file(), &plan.cluster.to_toml(), false)?;
    write_file(&layout.ca_cert(), &ca.cert_pem, false)?;
    write_file(&layout.ca_key(), &ca.key_pem, true)?;
    for (cfg, cert) in plan.configs.iter().zip(certs) {
        let name = &cfg.name;
        std::fs::create_dir_all(layout.data_dir(name))
            .with_context(|| format!("cannot create {}", layout.data_dir(name).display()))?;
        write_file(&layout.node_cert(name), &cert.cert_pem, false)?;
        write_file(&layout.node_key(name), &cert.key_pem, true)?;
        write_file(&layout.node_config(name), &cfg.to_toml(), false)?;
    }
    Ok(())
}

pub(crate) fn write_file(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        // Created 0600 rather than chmod-ed afterwards, so the key is never readable by others.
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::ports::pick_free_ports;

    fn fake_ports(n: usize) -> Vec<NodePorts> {
        (0..n)
            .map(|i| NodePorts {
                raft_addr: SocketAddr::from(([127, 0, 0, 1], 20_000 + 2 * i as u16)),
                api_addr: SocketAddr::from(([127, 0, 0, 1], 20_001 + 2 * i as u16)),
            })
            .collect()
    }

    #[test]
    fn names_ids_and_regions_follow_the_scheme() {
        let c = local_topology(3, &fake_ports(12)).expect("valid");
        let got: Vec<(u64, &str, &str)> = c.nodes.iter().map(|n| (n.id, n.name.as_str(), n.region.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (101, "eu-central-1", "eu-central"),
                (102, "eu-central-2", "eu-central"),
                (103, "eu-central-3", "eu-central"),
                (201, "eu-west-1", "eu-west"),
                (202, "eu-west-2", "eu-west"),
                (203, "eu-west-3", "eu-west"),
                (301, "us-east-1", "us-east"),
                (302, "us-east-2", "us-east"),
                (303, "us-east-3", "us-east"),
                (401, "ap-south-1", "ap-south"),
                (402, "ap-south-2", "ap-south"),
                (403, "ap-south-3", "ap-south"),
            ]
        );
        assert_eq!(c.regions(), REGIONS.to_vec());
    }

    #[test]
    fn meta_voters_are_five_with_two_in_the_first_region_or_four_with_one_node_per_region() {
        assert_eq!(meta_voters(3), ["eu-central-1", "eu-central-2", "eu-west-1", "us-east-1", "ap-south-1"]);
        assert_eq!(meta_voters(2), ["eu-central-1", "eu-central-2", "eu-west-1", "us-east-1", "ap-south-1"]);
        assert_eq!(meta_voters(1), ["eu-central-1", "eu-west-1", "us-east-1", "ap-south-1"]);
    }

    #[test]
    fn node_counts_outside_the_id_scheme_are_refused() {
        assert!(local_topology(0, &[]).unwrap_err().contains("between 1 and 99"));
        assert!(local_topology(100, &[]).unwrap_err().contains("between 1 and 99"));
    }

    #[test]
    fn every_config_parses_back_with_the_nodes_own_parser() {
        let layout = Layout::new(PathBuf::from("/abs/cluster"));
        let ports = pick_free_ports(8).expect("ports");
        let plan = plan_local(&layout, 2, &Tuning::default(), &ports).expect("valid");
        assert_eq!(plan.configs.len(), 8);
        for cfg in &plan.configs {
            let back = NodeConfig::parse(&cfg.to_toml(), Path::new("node.toml")).expect("parses back");
            assert_eq!(back.name, cfg.name);
            assert_eq!(back.nodes, plan.cluster.nodes);
            assert_eq!(back.meta_voters, plan.cluster.meta_voters);
            assert_eq!(back.data_dir, PathBuf::from(format!("/abs/cluster/nodes/{}/data", cfg.name)));
            assert_eq!(back.tls.key, PathBuf::from(format!("/abs/cluster/nodes/{}/key.pem", cfg.name)));
            assert_eq!(back.tls.ca_cert, PathBuf::from("/abs/cluster/ca.pem"));
        }
        let back = ClusterFile::parse(&plan.cluster.to_toml()).expect("cluster.toml parses back");
        assert_eq!(back, plan.cluster);
    }

    #[test]
    fn tuning_is_applied_to_every_node_and_bad_tuning_is_refused_before_writing() {
        let layout = Layout::new(PathBuf::from("/abs/cluster"));
        let tuning = Tuning::parse("[raft]\nheartbeat_interval_ms = 50\nelection_timeout_min_ms = 200\nelection_timeout_max_ms = 400\n[liveness]\nperiod_ms = 1000\nrenew_interval_ms = 250\n").expect("valid");
        let plan = plan_local(&layout, 1, &tuning, &fake_ports(4)).expect("valid");
        for cfg in &plan.configs {
            let back = NodeConfig::parse(&cfg.to_toml(), Path::new("node.toml")).expect("parses back");
            assert_eq!((back.raft.heartbeat_interval_ms, back.raft.election_timeout_max_ms), (50, 400));
            assert_eq!((back.liveness.period_ms, back.liveness.renew_interval_ms), (1000, 250));
            assert_eq!(back.raft.max_payload_entries, 64, "untouched keys keep the node default");
        }
        let bad = Tuning::parse("[raft]\nheartbeat_interval_ms = 5000\n").expect("parses");
        let err = plan_local(&layout, 1, &bad, &fake_ports(4)).unwrap_err();
        assert!(err.contains("election_timeout_min_ms"), "{err}");
    }

    #[test]
    fn cluster_file_refuses_unknown_keys() {
        let plan = local_topology(1, &fake_ports(4)).expect("valid");
        let text = plan.to_toml().replace("meta_voters", "meta_voter");
        assert!(ClusterFile::parse(&text).is_err());
    }

    #[test]
    fn write_local_creates_the_layout_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(tmp.path().join("c"));
        let plan = plan_local(&layout, 1, &Tuning::default(), &fake_ports(4)).expect("valid");
        let ca = CaBundle::generate("test").expect("ca");
        let certs: Vec<NodeCert> =
            plan.configs.iter().map(|c| ca.issue_node(&c.name, c.me().id, &c.me().region).expect("cert")).collect();
        write_local(&layout, &plan, &ca, &certs).expect("written");
        assert_eq!(ClusterFile::load(&layout.root).expect("loads"), plan.cluster);
        assert!(looks_like_cluster_dir(&layout.root).expect("readable"));
        assert_eq!(node_dirs(&layout).expect("readable"), ["ap-south-1", "eu-central-1", "eu-west-1", "us-east-1"]);
        std::fs::write(layout.root.join("notes.txt"), "mine").expect("write");
        assert!(!looks_like_cluster_dir(&layout.root).expect("readable"), "a foreign file makes it not ours");
        let mode = |p: PathBuf| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(layout.ca_key()), 0o600);
        for cfg in &plan.configs {
            assert_eq!(mode(layout.node_key(&cfg.name)), 0o600);
            assert!(layout.data_dir(&cfg.name).is_dir());
            NodeConfig::load(&layout.node_config(&cfg.name)).expect("node.toml loads");
        }
    }
}
