//! Where the next attempt goes and how long to wait before it: leader redirects, trying the
//! other nodes, and exponential backoff. A plain state machine over values, tested without
//! tokio; [`crate::client::Session`] carries out what it says.

use std::time::Duration;

/// What a failed attempt means for the next one (see [`crate::failure::Failure::decision`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The node named the leader: go there next, at once.
    Redirect(String),
    /// This node is unreachable or does not lead: try the next node.
    TryElsewhere,
    /// The right node cannot serve yet: ask it again after a backoff.
    Backoff,
    /// A definitive answer: stop.
    Stop,
}

/// The next attempt: where, after how long a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    pub addr: String,
    pub wait: Duration,
}

pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Redirects followed in a row without a wait. Two nodes that each name the other (during an
/// election) would otherwise make the client spin.
pub const REDIRECT_HOPS_FREE: u32 = 3;
/// Times in a row one node may answer "cannot serve now" before the client tries the others. A
/// leader whose region is cut off answers `unavailable` (its lease lapsed) for as long as the
/// cut lasts, while a new epoch serves elsewhere; an election in progress is over well within
/// two backoffs.
pub const BACKOFFS_ON_ONE_NODE: u32 = 2;

#[derive(Debug, Clone)]
pub struct Route {
    /// The cluster's api addresses in cluster.toml order.
    nodes: Vec<String>,
    /// The next node in `nodes` to try when nothing better is known.
    cursor: usize,
    /// The node that last answered; asked first again.
    sticky: Option<String>,
    /// A leader named by a node, or a node to ask again after a backoff.
    pinned: Option<String>,
    wait: Duration,
    backoff: Duration,
    /// Nodes tried since the last success or the last backoff; a full round of failures backs off.
    failures_in_round: usize,
    redirect_hops: u32,
    /// The node that answered "cannot serve now" last, and how many times in a row.
    backoffs: Option<(String, u32)>,
}

impl Route {
    pub fn new(nodes: Vec<String>) -> Self {
        assert!(!nodes.is_empty(), "a route needs at least one node");
        Self {
            nodes,
            cursor: 0,
            sticky: None,
            pinned: None,
            wait: Duration::ZERO,
            backoff: BACKOFF_MIN,
            failures_in_round: 0,
            redirect_hops: 0,
            backoffs: None,
        }
    }

    pub fn next_attempt(&mut self) -> Next {
        let addr = match self.pinned.take().or_else(|| self.sticky.clone()) {
            Some(addr) => addr,
            None => {
                let addr = self.nodes[self.cursor % self.nodes.len()].clone();
                self.cursor = (self.cursor + 1) % self.nodes.len();
                addr
            }
        };
        Next { addr, wait: std::mem::take(&mut self.wait) }
    }

    pub fn succeeded(&mut self, addr: &str) {
        self.sticky = Some(addr.to_owned());
        self.wait = Duration::ZERO;
        self.backoff = BACKOFF_MIN;
        self.failures_in_round = 0;
        self.redirect_hops = 0;
        self.backoffs = None;
    }

    pub fn failed(&mut self, addr: &str, decision: &Decision) {
        if self.sticky.as_deref() == Some(addr) && *decision != Decision::Backoff {
            self.sticky = None;
        }
        if *decision != Decision::Backoff {
            self.backoffs = None;
        }
        match decision {
            Decision::Redirect(leader) => {
                self.redirect_hops += 1;
                self.pinned = Some(leader.clone());
                if self.redirect_hops > REDIRECT_HOPS_FREE {
                    self.wait = self.take_backoff();
                }
            }
            Decision::TryElsewhere => {
                self.failures_in_round += 1;
                if self.failures_in_round >= self.nodes.len() {
                    self.failures_in_round = 0;
                    self.wait = self.take_backoff();
                }
            }
            Decision::Backoff => {
                let times = match &self.backoffs {
                    Some((a, n)) if a == addr => n + 1,
                    _ => 1,
                };
                self.wait = self.take_backoff();
                if times >= BACKOFFS_ON_ONE_NODE {
                    // This node keeps refusing: ask the others (round robin from after it).
                    self.backoffs = None;
                    if self.sticky.as_deref() == Some(addr) {
                        self.sticky = None;
                    }
                    if let Some(i) = self.nodes.iter().position(|n| n == addr) {
                        self.cursor = (i + 1) % self.nodes.len();
                    }
                } else {
                    self.backoffs = Some((addr.to_owned(), times));
                    self.pinned = Some(addr.to_owned());
                }
            }
            Decision::Stop => {}
        }
    }

    fn take_backoff(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        Route::new(vec!["a".into(), "b".into(), "c".into()])
    }

    fn next(r: &mut Route) -> (String, u64) {
        let n = r.next_attempt();
        (n.addr, n.wait.as_millis() as u64)
    }

    #[test]
    fn nodes_are_tried_in_order_and_a_full_round_of_failures_backs_off_exponentially() {
        let mut r = route();
        let mut seen = Vec::new();
        for _ in 0..7 {
            let (addr, wait) = next(&mut r);
            r.failed(&addr, &Decision::TryElsewhere);
            seen.push((addr, wait));
        }
        let expect = [("a", 0), ("b", 0), ("c", 0), ("a", 100), ("b", 0), ("c", 0), ("a", 200)];
        let expect: Vec<(String, u64)> = expect.iter().map(|(a, w)| (a.to_string(), *w)).collect();
        assert_eq!(seen, expect);
    }

    #[test]
    fn a_redirect_goes_to_the_named_leader_at_once_and_it_sticks_after_success() {
        let mut r = route();
        assert_eq!(next(&mut r), ("a".into(), 0));
        r.failed("a", &Decision::Redirect("z:9".into()));
        assert_eq!(next(&mut r), ("z:9".into(), 0));
        r.succeeded("z:9");
        assert_eq!(next(&mut r), ("z:9".into(), 0));
        assert_eq!(next(&mut r), ("z:9".into(), 0));
    }

    #[test]
    fn a_failing_sticky_node_is_dropped_and_the_round_robin_resumes() {
        let mut r = route();
        let _ = next(&mut r);
        r.succeeded("a");
        assert_eq!(next(&mut r), ("a".into(), 0));
        r.failed("a", &Decision::TryElsewhere);
        assert_eq!(next(&mut r), ("b".into(), 0));
    }

    #[test]
    fn redirect_ping_pong_backs_off_after_the_free_hops() {
        let mut r = route();
        let _ = next(&mut r);
        let mut waits = Vec::new();
        for i in 0..6 {
            let leader = if i % 2 == 0 { "b" } else { "a" };
            r.failed("x", &Decision::Redirect(leader.into()));
            let (addr, wait) = next(&mut r);
            assert_eq!(addr, leader);
            waits.push(wait);
        }
        assert_eq!(waits, vec![0, 0, 0, 100, 200, 400]);
    }

    #[test]
    fn unavailable_asks_the_same_node_once_more_then_the_others_with_a_capped_backoff() {
        let mut r = route();
        let (mut addr, _) = next(&mut r);
        let mut seen = Vec::new();
        for _ in 0..8 {
            r.failed(&addr, &Decision::Backoff);
            let (a, wait) = next(&mut r);
            seen.push((a.clone(), wait));
            addr = a;
        }
        let addrs: Vec<&str> = seen.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(addrs, vec!["a", "b", "b", "c", "c", "a", "a", "b"]);
        let waits: Vec<u64> = seen.iter().map(|(_, w)| *w).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    }

    #[test]
    fn success_resets_the_backoff() {
        let mut r = route();
        let _ = next(&mut r);
        r.failed("a", &Decision::Backoff);
        r.failed("a", &Decision::Backoff);
        r.succeeded("a");
        r.failed("a", &Decision::Backoff);
        assert_eq!(next(&mut r), ("a".into(), 100));
    }
}
