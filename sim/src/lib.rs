//! tetrad-sim: a deterministic simulator that runs the real tetrad node code over simulated
//! networks, disks and clocks, injects faults from a seed, and checks the claims of DESIGN.md.
//!
//! A run (`run.rs`) boots a `SimCluster` (`cluster.rs`) over `net.rs`, `disk.rs` and `clock.rs`,
//! puts clients to work (`workload.rs`), carries out a scenario's plan (`scenario.rs`,
//! `episode.rs`, `fault.rs`) while tracking the fault budget (`budget.rs`) and watching the
//! cluster (`monitor.rs`), then checks the oracles (`oracle.rs`, and `claims.rs` for the near-sync and async claims). `timeline.rs` records what
//! happened for the summary and the HTML report (`report.rs`); `trace.rs` hashes it all so that a
//! seed's run can be shown to repeat exactly.

pub mod budget;
pub mod claims;
pub mod clock;
pub mod cluster;
pub mod disk;
pub mod episode;
pub mod fault;
pub mod monitor;
pub mod net;
pub mod oracle;
pub mod report;
pub mod run;
pub mod scenario;
pub mod timeline;
pub mod trace;
pub mod workload;
