//! The `tetrad` server's configuration file. The types and their validation live in
//! `tetrad-config` (`node/config/`), which tetradctl shares without depending on the server; this
//! module keeps their path in the node.

pub use tetrad_config::file::{ConfigError, LivenessTuning, NodeConfig, PeerConfig, RaftTuning, TlsConfig};

// The config file's node ids are the network seam's: one type, so a peer's id needs no conversion.
const _: fn(crate::seams::net::NodeId) -> tetrad_config::file::NodeId = |id| id;
