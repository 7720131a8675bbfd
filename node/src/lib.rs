//! tetrad-node: the tetrad server as a library, so that the `tetrad` binary and the simulator run
//! the same code.

pub mod api;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod meta;
pub mod net;
pub mod node;
pub mod planted;
pub mod raft;
pub mod seams;
pub mod storage;
pub mod tenant;
pub mod tls;
