//! tetrad-node: the tetrad server as a library, so that the `tetrad` binary and the simulator run
//! the same code.

pub mod config;
pub mod seams;
pub mod storage;
pub mod raft;
pub mod meta;
pub mod tenant;
pub mod net;
pub mod node;
pub mod tls;
