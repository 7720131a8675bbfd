//! Node liveness leases (DESIGN.md, "Fencing by node liveness"): the node's shared handle on its
//! lease, which reads the clock seam. The arithmetic is pure and lives in `tetrad-core`
//! (`node/core/src/lease.rs`).
//!
//! A node renews its liveness record in the meta group. When the renewal commits, the node's
//! lease is valid until `sent_at + period`, where `sent_at` is the node's own monotonic time at
//! the moment it *sent* the renewal, so network and commit delays only shorten the lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use tetrad_core::lease::Lease;

use crate::seams::clock::ClockRef;

/// A node's lease, shared between the renewal loop and every tenant leader on the node.
#[derive(Clone)]
pub struct Liveness {
    lease: Arc<Mutex<Lease>>,
    clock: ClockRef,
    period: Duration,
    created: Duration,
}

impl Liveness {
    pub fn new(clock: ClockRef, period: Duration) -> Self {
        let created = clock.mono_now();
        Self { lease: Arc::new(Mutex::new(Lease::default())), clock, period, created }
    }

    /// Monotonic time to stamp a renewal with, taken just before it is sent.
    pub fn now(&self) -> Duration {
        self.clock.mono_now()
    }

    pub fn renewed(&self, sent_at: Duration) {
        self.lease.lock().expect("lease lock").renewed(sent_at, self.period);
    }

    pub fn revoke(&self) {
        self.lease.lock().expect("lease lock").revoke();
    }

    pub fn is_valid(&self) -> bool {
        let now = self.clock.mono_now();
        self.lease.lock().expect("lease lock").is_valid(now)
    }

    pub fn remaining(&self) -> Duration {
        let now = self.clock.mono_now();
        self.lease.lock().expect("lease lock").remaining(now)
    }

    /// How long the lease has been invalid (zero while it is valid; since its expiry, or since
    /// this handle was made when it never was valid).
    pub fn invalid_for(&self) -> Duration {
        let now = self.clock.mono_now();
        self.lease.lock().expect("lease lock").invalid_for(now, self.created)
    }
}
