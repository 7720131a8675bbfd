//! tetrad-ops: `tetradctl`, the operator and client command line, as a library so that tests can
//! drive every command without spawning the binary.
//!
//! Code map:
//! - [`cli`]: the clap command surface and the dispatch from a parsed command line to a command.
//! - [`exit`]: exit codes and the error type every command returns.
//! - [`failure`] and [`route`]: what a failed attempt means and where the next attempt goes
//!   (pure, no I/O); [`client`] is the thin async shell that connects, retries and follows
//!   leader redirects under one deadline.
//! - [`certs`]: `certs init` and `certs issue`, a CA and the client identities it signs.
//! - [`cluster_dir`], [`ports`], [`tuning`]: the on-disk layout of a local cluster and how one is
//!   planned; [`process`] starts and stops node processes; [`local_cluster`] runs `cluster ...`.
//! - [`status`], [`tenant`], [`wal`]: the client commands; the operator's tenant actions
//!   (switchover, manual failover, mode changes, history) live under [`tenant`].
//!
//! Architecture invariant: the only `unsafe` code in this crate is in `process/sys.rs` (signals
//! and `setsid`), behind safe functions that refuse pids that would address a process group.

pub mod audit;
pub mod certs;
pub mod cli;
pub mod client;
pub mod cluster_dir;
pub mod exit;
pub mod failure;
pub mod local_cluster;
pub mod ports;
pub mod process;
pub mod record;
pub mod route;
pub mod status;
pub mod table;
pub mod tenant;
pub mod tuning;
pub mod verify;
pub mod wal;
