//! Fast takeover when a group's leader goes silent.
//!
//! openraft lets a follower campaign only once the leader's lease has run out *and* a random
//! election timeout has passed after it: with the WAN-sized defaults (lease 2.4 s, timeouts
//! 1.2-2.4 s) a dead leader is replaced 3.6-4.8 s after its last heartbeat, over the sync RTO
//! target. The lease is what keeps a live leader safe from disruption; the random wait after it
//! only spreads candidates apart so that their votes do not split.
//!
//! This loop replaces the random spread with a fixed order. Every voter that is not leading
//! notes when it last accepted the leader's append (`Group::last_leader_contact`, the moment
//! openraft renewed the lease here) and, once lease + margin + its rank x step have passed
//! without another, asks openraft for a Pre-Vote round (`Group::campaign`). Ranks put voters
//! outside the silent leader's region first (a whole region is the failure the product is
//! built for), then by node id, so normally exactly one voter campaigns and wins in two round
//! trips. Nothing here bypasses openraft's rules: a voter that still hears a leader refuses the
//! Pre-Vote, the candidate refuses to start while its own lease is valid, and the vote needs
//! an up-to-date log, so this changes when a campaign starts, never who may win it. openraft's
//! own election timer stays armed as the fallback.
//!
//! The schedule and the ranks are pure and live in `tetrad-core`
//! (`node/core/src/takeover_schedule.rs`). The instants here are tokio's scheduling clock
//! (`seams::clock::scheduling_now`), not the node's monotonic clock: the raft layer stamps a
//! leader's contact on it (`Group::last_leader_contact`) and openraft's lease runs on it, so the
//! schedule must compare against it. The node's monotonic clock may run at a skewed rate in the
//! simulator (and stands still while a node is paused), which would move every campaign.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tetrad_core::takeover_schedule::{rank_of, Schedule};

use super::directory::Directory;
use super::hosted::HostedGroups;
use crate::raft::group::Group;
use crate::raft::state_machine::GroupState;
use crate::seams::net::NodeId;

/// How often the loop looks at every group.
pub(super) const TAKEOVER_EVERY: Duration = Duration::from_millis(50);

/// The takeover loop's service: owned by the loop, with its memory of when each group last
/// campaigned here.
pub(super) struct Takeover {
    me: NodeId,
    heartbeat: Duration,
    directory: Arc<Directory>,
    hosted: Arc<HostedGroups>,
    campaigned: HashMap<String, Instant>,
}

impl Takeover {
    pub(super) fn new(me: NodeId, heartbeat: Duration, directory: Arc<Directory>, hosted: Arc<HostedGroups>) -> Self {
        Self { me, heartbeat, directory, hosted, campaigned: HashMap::new() }
    }

    /// One look at every group this node votes in; campaigns where a leader went silent.
    pub(super) async fn takeover_once(&mut self) {
        let meta = self.directory.meta().clone();
        self.takeover_group(&meta).await;
        for g in self.hosted.all() {
            self.takeover_group(&g).await;
        }
    }

    async fn takeover_group<S: GroupState>(&mut self, g: &Group<S>) {
        let me = self.me;
        let Some(contact) = g.last_leader_contact() else { return };
        let schedule = Schedule::from_heartbeat(self.heartbeat);
        let now = crate::seams::clock::scheduling_now();
        // Cheap looks first (this runs every 50 ms for every group): nothing to do while the
        // leader's lease runs here, or while this node leads.
        if now < schedule.due(contact, g.leader_lease(), 0, 1, None) {
            return;
        }
        if g.term_leader().1 == Some(me) {
            self.campaigned.remove(&g.name);
            return;
        }
        let st = g.status();
        if st.is_leader || !st.voters.contains(&me) {
            self.campaigned.remove(&g.name);
            return;
        }
        let voters: Vec<NodeId> = st.voters.iter().copied().collect();
        let Some(rank) = rank_of(me, &voters, st.leader, |n| self.directory.region_of(n).map(str::to_string)) else {
            return;
        };
        let last = self.campaigned.get(&g.name).copied().filter(|t| *t > contact);
        let due = schedule.due(contact, g.leader_lease(), rank, voters.len(), last);
        if now < due {
            return;
        }
        tracing::info!(
            group = %g.name,
            silent_leader = ?st.leader,
            rank,
            silent_ms = (now - contact).as_millis() as u64,
            "leader silent past its lease: campaigning"
        );
        self.campaigned.insert(g.name.clone(), now);
        g.campaign().await;
    }
}
