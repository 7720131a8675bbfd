//! The `tetrad` server's configuration file (TOML) and the cluster topology inside it.
//!
//! Unknown keys are errors (`deny_unknown_fields`), so a typo never silently falls back to a
//! default. Every duration is written in milliseconds with the unit last in the key name.
//!
//! `tetrad` reads it (`tetrad_node::config` re-exports this module); `tetradctl cluster up
//! --local` writes one per node.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A node id, as the server's network seam names it (`tetrad_node::seams::net::NodeId`; the node
/// checks at compile time that the two stay one type).
pub type NodeId = u64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A whole node configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name; must appear in `[[nodes]]`.
    pub name: String,
    /// Where the node keeps its store (redb database and chunk files).
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub liveness: LivenessTuning,
    /// Names of the meta group's voters (in at least three regions).
    pub meta_voters: Vec<String>,
    /// The whole cluster, this node included.
    pub nodes: Vec<PeerConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: NodeId,
    pub name: String,
    pub region: String,
    /// QUIC address for node-to-node traffic.
    pub raft_addr: SocketAddr,
    /// gRPC address for clients and operators.
    pub api_addr: SocketAddr,
}

/// Raft timing. openraft's defaults (50 ms heartbeats, 150-300 ms elections) are far too short for
/// WAN round trips of 100-200 ms, so tetrad's defaults are WAN-sized.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the last snapshot, so a slow follower can catch up from
    /// the log instead of a snapshot.
    pub max_in_snapshot_log_to_keep: u64,
    /// Largest number of entries sent in one append.
    pub max_payload_entries: u64,
    /// Largest number of entry bytes (segment bytes included) sent in one append; an append
    /// always carries at least one entry. Far below the transport's message cap
    /// (`MAX_MESSAGE_BYTES`, 1 GiB), so a follower many 16 MiB entries behind still catches up
    /// (node/src/raft/log_store.rs).
    pub max_append_bytes: u64,
    /// A Raft log file rolls over to a new one at this size; old files are deleted once their
    /// entries were purged (node/src/storage/raft_log.rs).
    pub log_file_bytes: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            snapshot_logs_since_last: 5_000,
            max_in_snapshot_log_to_keep: 1_000,
            max_payload_entries: 64,
            max_append_bytes: 32 << 20,
            log_file_bytes: 64 << 20,
        }
    }
}

/// Node liveness (the fencing lease, DESIGN.md "Fencing by node liveness").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessTuning {
    /// How long a renewal stays valid, measured from the moment it was sent.
    pub period_ms: u64,
    /// How often a node renews.
    pub renew_interval_ms: u64,
    /// Largest difference in clock rate over one period that the design tolerates.
    pub max_clock_drift_ms: u64,
}

impl Default for LivenessTuning {
    fn default() -> Self {
        Self { period_ms: 4_000, renew_interval_ms: 1_000, max_clock_drift_ms: 500 }
    }
}

impl LivenessTuning {
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }
    pub fn renew_interval(&self) -> Duration {
        Duration::from_millis(self.renew_interval_ms)
    }
    pub fn max_clock_drift(&self) -> Duration {
        Duration::from_millis(self.max_clock_drift_ms)
    }
}

impl NodeConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        cfg.validate().map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a NodeConfig always serializes")
    }

    /// Checks everything that does not need I/O.
    pub fn validate(&self) -> Result<(), String> {
        let mut ids = BTreeSet::new();
        let mut names = BTreeSet::new();
        for n in &self.nodes {
            if n.id == 0 {
                return Err(format!("node {} has id 0; ids start at 1", n.name));
            }
            if !ids.insert(n.id) {
                return Err(format!("node id {} appears twice in [[nodes]]", n.id));
            }
            if !names.insert(n.name.as_str()) {
                return Err(format!("node name {} appears twice in [[nodes]]", n.name));
            }
        }
        if !names.contains(self.name.as_str()) {
            return Err(format!("this node's name {:?} is not listed in [[nodes]]", self.name));
        }
        let mut meta_regions = BTreeSet::new();
        for v in &self.meta_voters {
            let Some(p) = self.nodes.iter().find(|n| &n.name == v) else {
                return Err(format!("meta voter {v:?} is not listed in [[nodes]]"));
            };
            meta_regions.insert(p.region.as_str());
        }
        if meta_regions.len() < 3 {
            return Err(format!(
                "meta_voters span {} region(s); the meta group needs voters in at least 3 regions to survive the loss of one",
                meta_regions.len()
            ));
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return Err("raft.election_timeout_min_ms must exceed raft.heartbeat_interval_ms (> 0)".into());
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err("raft.election_timeout_max_ms must exceed raft.election_timeout_min_ms".into());
        }
        // One 1 GiB message is the transport's cap (node/src/seams/net.rs `MAX_MESSAGE_BYTES`); an
        // append of this many bytes plus one more entry's must stay under it.
        if r.max_append_bytes == 0 || r.max_append_bytes > 256 << 20 {
            return Err("raft.max_append_bytes must be between 1 and 268435456 (256 MiB)".into());
        }
        let l = &self.liveness;
        if l.renew_interval_ms == 0 || l.renew_interval_ms * 2 > l.period_ms {
            return Err("liveness.renew_interval_ms must be > 0 and at most half of liveness.period_ms".into());
        }
        Ok(())
    }

    pub fn me(&self) -> &PeerConfig {
        self.nodes.iter().find(|n| n.name == self.name).expect("validated: this node is listed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        let mut s = String::from(
            "name = \"eu-west-1\"\ndata_dir = \"/tmp/x\"\nmeta_voters = [\"eu-west-1\", \"us-east-1\", \"ap-south-1\"]\n\
             [tls]\nca_cert = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        );
        for (i, (n, r)) in
            [("eu-west-1", "eu-west"), ("us-east-1", "us-east"), ("ap-south-1", "ap-south")].iter().enumerate()
        {
            s.push_str(&format!(
                "[[nodes]]\nid = {}\nname = \"{n}\"\nregion = \"{r}\"\nraft_addr = \"127.0.0.1:{}\"\napi_addr = \"127.0.0.1:{}\"\n",
                i + 1,
                7000 + i,
                8000 + i
            ));
        }
        s
    }

    #[test]
    fn parses_a_valid_config() {
        let cfg = NodeConfig::parse(&sample(), Path::new("t.toml")).expect("valid");
        assert_eq!(cfg.me().id, 1);
        assert_eq!(cfg.raft.election_timeout_min_ms, 1_000);
        assert_eq!(cfg.raft.max_append_bytes, 32 << 20, "a config without the key keeps working");
    }

    #[test]
    fn max_append_bytes_is_read_and_bounded() {
        let text = format!(
            "{}[raft]
max_append_bytes = 1048576
",
            sample()
        );
        assert_eq!(NodeConfig::parse(&text, Path::new("t.toml")).unwrap().raft.max_append_bytes, 1 << 20);
        for bad in ["0", "1073741824"] {
            let text = format!(
                "{}[raft]
max_append_bytes = {bad}
",
                sample()
            );
            let err = NodeConfig::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
            assert!(err.contains("max_append_bytes"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_typo_is_an_error_naming_the_key() {
        let text = sample().replace("data_dir", "data_dri");
        let err = NodeConfig::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("data_dri"), "{err}");
    }

    #[test]
    fn a_typo_in_a_section_is_an_error() {
        let text = format!("{}[raft]\nheartbeat_intreval_ms = 5\n", sample());
        let err = NodeConfig::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("heartbeat_intreval_ms"), "{err}");
    }

    #[test]
    fn meta_voters_in_two_regions_are_refused() {
        let text = sample().replace("\"ap-south-1\"]", "\"eu-west-1\"]");
        let err = NodeConfig::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("at least 3 regions"), "{err}");
    }
}
