//! tetrad-sim: a deterministic simulator that runs the real tetrad node code over simulated
//! networks, disks and clocks, injects faults from a seed, and checks the claims of DESIGN.md.

pub mod clock;
pub mod cluster;
pub mod disk;
pub mod net;
pub mod run;
pub mod trace;
pub mod workload;
