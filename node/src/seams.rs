//! The seams: the only ways node logic reaches the outside world.
//!
//! Everything the simulator must control goes through one of these narrow traits: the network
//! ([`net::Transport`]), the disk ([`disk::Disk`]), time ([`clock::Clock`]) and randomness
//! ([`rng::SeededRng`]). Production implementations live beside each trait; the simulator's live
//! in `sim/`.
//!
//! Architecture invariant: no module outside `seams/` (and the production transport in `net/`)
//! calls `std::time::Instant::now`, `SystemTime::now`, `thread_rng`, or touches files or sockets
//! directly.

pub mod clock;
pub mod disk;
pub mod net;
mod os_disk;
pub mod rng;
