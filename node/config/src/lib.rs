//! tetrad-config: what a tetrad node is set up with, shared by the server (`tetrad`) and the
//! operator tool (`tetradctl`, which writes it for `cluster up --local`):
//!
//! - [`file`]: the node's TOML configuration file and its validation;
//! - [`certs`]: the cluster CA and the certificates it issues, as PEM;
//! - [`role`]: the role a certificate carries (admin, tenant, node) and how it is read back.
//!
//! It is small on purpose: tetradctl depends on it instead of on `tetrad-node`, so the operator
//! tool does not compile the server's consensus, storage and transport. The rustls and QUIC
//! configurations built from the certificates stay in `tetrad-node` (`tetrad_node::tls`), which
//! re-exports this crate's items at their old paths (`tetrad_node::config`, `tetrad_node::tls`).

pub mod certs;
pub mod file;
pub mod role;
