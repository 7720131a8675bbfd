//! [`WanProxy`]: a fault-injecting UDP relay between the nodes of a local cluster, so that a test
//! can cut a whole region off the others (both directions) and heal it again, with real processes
//! and without network namespaces.
//!
//! Node-to-node traffic is QUIC over UDP, and each node dials its peers at the `raft_addr` its own
//! config lists for them; nothing compares those lists across nodes (the directory in the meta
//! group holds no addresses, and a peer is identified by its certificate's name, which is also the
//! TLS server name a node dials, never by an IP). So each node's config can name a proxy address
//! for every *other* node while its own entry keeps the address it binds.
//!
//! The relay has one socket per destination node (`front`, the address every other node's config
//! names for it) and one socket per source node (`back`). A datagram from node S arriving at X's
//! front socket is sent on to X's real address from S's back socket, so X sees one stable peer
//! address per source; X's answer arrives at S's back socket and is sent on to S from X's front
//! socket, so S sees the answer come from the address it dialled. A datagram's source node is known
//! from its source address: each node sends from the one socket it binds, its real `raft_addr`.
//!
//! A cut drops every datagram that crosses between the cut region and any other region, in both
//! directions; traffic inside a region, and client gRPC (TCP, not relayed), is untouched. The
//! decision is the pure [`crosses`]; the sockets only carry it out.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest UDP payload; QUIC datagrams are far smaller, so nothing is ever truncated.
const MAX_DATAGRAM_BYTES: usize = 65_536;
/// How often a relay thread looks at the stop flag while no datagram arrives.
const STOP_POLL: Duration = Duration::from_millis(100);

/// One node as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedNode {
    pub name: String,
    pub region: String,
    /// The address the node binds and sends from.
    pub real: SocketAddr,
}

/// Whether a datagram from region `from` to region `to` is dropped while `cut` (if any) is cut off.
pub fn crosses(from: &str, to: &str, cut: Option<&str>) -> bool {
    match cut {
        Some(region) => from != to && (from == region || to == region),
        None => false,
    }
}

/// What the relay has done, for a test to check that traffic really went through it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounts {
    /// Handed to the socket towards their destination.
    pub forwarded: u64,
    /// Dropped because they crossed the cut.
    pub dropped: u64,
    /// From an address that is no node's (never expected: counted so a test can say so).
    pub unknown_source: u64,
}

struct Shared {
    nodes: Vec<RelayedNode>,
    by_real: BTreeMap<SocketAddr, usize>,
    front: Vec<Arc<UdpSocket>>,
    back: Vec<Arc<UdpSocket>>,
    cut: Mutex<Option<String>>,
    stop: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    unknown_source: AtomicU64,
}

impl Shared {
    /// Sends `datagram` from node `src` on to node `dst`, unless the cut drops it.
    fn relay(&self, src: usize, dst: usize, datagram: &[u8], via: &UdpSocket) {
        let cut = self.cut.lock().expect("cut lock").clone();
        if crosses(&self.nodes[src].region, &self.nodes[dst].region, cut.as_deref()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Counted before the send, so a receiver never sees a datagram the count lacks. A failed
        // send is a lost datagram, which QUIC recovers from like any other loss.
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        let _ = via.send_to(datagram, self.nodes[dst].real);
    }
}

/// The running relay. Dropping it stops its threads and closes its sockets.
pub struct WanProxy {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl WanProxy {
    /// Binds two loopback sockets per node and starts relaying.
    pub fn start(nodes: Vec<RelayedNode>) -> std::io::Result<Self> {
        let mut by_real = BTreeMap::new();
        for (i, n) in nodes.iter().enumerate() {
            assert!(n.real.ip().is_loopback(), "{} is not on loopback: {}", n.name, n.real);
            assert!(by_real.insert(n.real, i).is_none(), "two nodes at {}", n.real);
        }
        let bind = || -> std::io::Result<Arc<UdpSocket>> {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_read_timeout(Some(STOP_POLL))?;
            Ok(Arc::new(s))
        };
        let front = nodes.iter().map(|_| bind()).collect::<std::io::Result<Vec<_>>>()?;
        let back = nodes.iter().map(|_| bind()).collect::<std::io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            nodes,
            by_real,
            front,
            back,
            cut: Mutex::new(None),
            stop: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            unknown_source: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for i in 0..shared.nodes.len() {
            // Front socket of node i: datagrams to i from the node their source address names.
            let s = shared.clone();
            threads.push(spawn_loop(format!("wan-front-{i}"), s.front[i].clone(), s, move |s, from, d| {
                let src = s.by_real.get(&from).copied()?;
                s.relay(src, i, d, &s.back[src]);
                Some(())
            }));
            // Back socket of node i: answers to i from the node whose real address sent them.
            let s = shared.clone();
            threads.push(spawn_loop(format!("wan-back-{i}"), s.back[i].clone(), s, move |s, from, d| {
                let src = s.by_real.get(&from).copied()?;
                s.relay(src, i, d, &s.front[src]);
                Some(())
            }));
        }
        Ok(Self { shared, threads })
    }

    /// The address other nodes must dial to reach `name` through the relay.
    pub fn front_addr(&self, name: &str) -> SocketAddr {
        let i = self.shared.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"));
        self.shared.front[i].local_addr().expect("a bound socket has an address")
    }

    /// Every socket the relay holds (all on loopback).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shared.front.iter().chain(&self.shared.back).filter_map(|s| s.local_addr().ok()).collect()
    }

    /// Cuts `region` off every other region, both directions, from the next datagram on.
    pub fn cut(&self, region: &str) {
        assert!(self.shared.nodes.iter().any(|n| n.region == region), "no node in region {region}");
        *self.shared.cut.lock().expect("cut lock") = Some(region.to_owned());
    }

    /// Ends the cut.
    pub fn heal(&self) {
        *self.shared.cut.lock().expect("cut lock") = None;
    }

    pub fn counts(&self) -> RelayCounts {
        RelayCounts {
            forwarded: self.shared.forwarded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            unknown_source: self.shared.unknown_source.load(Ordering::Relaxed),
        }
    }
}

/// A thread that receives on `socket` and hands each datagram to `handle`, which answers `None`
/// when the source address is no node's.
fn spawn_loop(
    name: String,
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    handle: impl Fn(&Shared, SocketAddr, &[u8]) -> Option<()> + Send + 'static,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
            while !shared.stop.load(Ordering::Relaxed) {
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        if handle(&shared, from, &buf[..n]).is_none() {
                            shared.unknown_source.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    // An ICMP "port unreachable" from an earlier send (a node that is down)
                    // surfaces here on Linux; the socket stays usable.
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                    Err(e) => {
                        eprintln!("wan proxy: receive failed, relay thread stops: {e}");
                        return;
                    }
                }
            }
        })
        .expect("spawn a relay thread")
}

impl Drop for WanProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_drops_only_what_crosses_the_cut_regions_border() {
        assert!(!crosses("a", "b", None));
        assert!(crosses("a", "b", Some("a")));
        assert!(crosses("b", "a", Some("a")));
        assert!(!crosses("a", "a", Some("a")));
        assert!(!crosses("b", "c", Some("a")));
        assert!(!crosses("b", "b", Some("a")));
    }

    struct Peer {
        socket: UdpSocket,
        node: RelayedNode,
    }

    fn peer(name: &str, region: &str) -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let node = RelayedNode { name: name.into(), region: region.into(), real: socket.local_addr().unwrap() };
        Peer { socket, node }
    }

    fn recv(p: &Peer) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 1500];
        p.socket.recv_from(&mut buf).ok().map(|(n, from)| (buf[..n].to_vec(), from))
    }

    /// A request relayed to its destination, and the answer relayed back so that it seems to come
    /// from the address that was dialled. Returns whether each arrived.
    fn exchange(proxy: &WanProxy, a: &Peer, b: &Peer) -> (bool, bool) {
        let front_b = proxy.front_addr(&b.node.name);
        a.socket.send_to(b"ping", front_b).unwrap();
        let Some((got, seen_from)) = recv(b) else { return (false, false) };
        assert_eq!(got, b"ping");
        b.socket.send_to(b"pong", seen_from).unwrap();
        match recv(a) {
            Some((got, from)) => {
                assert_eq!(
                    (got.as_slice(), from),
                    (&b"pong"[..], front_b),
                    "the answer comes from the dialled address"
                );
                (true, true)
            }
            None => (true, false),
        }
    }

    #[test]
    fn relays_both_ways_and_a_cut_isolates_one_region_until_healed() {
        let (a1, a2, b1, c1) = (peer("a1", "a"), peer("a2", "a"), peer("b1", "b"), peer("c1", "c"));
        let proxy = WanProxy::start([&a1, &a2, &b1, &c1].iter().map(|p| p.node.clone()).collect()).unwrap();
        assert_eq!(exchange(&proxy, &a1, &b1), (true, true));
        assert_eq!(exchange(&proxy, &b1, &a1), (true, true));
        proxy.cut("a");
        assert_eq!(exchange(&proxy, &a1, &b1), (false, false), "a to b crosses the cut");
        assert_eq!(exchange(&proxy, &c1, &a2), (false, false), "c to a crosses the cut");
        assert_eq!(exchange(&proxy, &a1, &a2), (true, true), "inside the cut region");
        assert_eq!(exchange(&proxy, &b1, &c1), (true, true), "between two other regions");
        proxy.heal();
        assert_eq!(exchange(&proxy, &a1, &b1), (true, true));
        let counts = proxy.counts();
        assert_eq!(counts.dropped, 2);
        assert_eq!(counts.forwarded, 10);
        assert_eq!(counts.unknown_source, 0);
    }

    #[test]
    fn an_answer_cut_on_its_way_back_is_dropped() {
        let (a1, b1) = (peer("a1", "a"), peer("b1", "b"));
        let proxy = WanProxy::start(vec![a1.node.clone(), b1.node.clone()]).unwrap();
        a1.socket.send_to(b"ping", proxy.front_addr("b1")).unwrap();
        let (_, seen_from) = recv(&b1).expect("relayed");
        proxy.cut("b");
        b1.socket.send_to(b"pong", seen_from).unwrap();
        assert!(recv(&a1).is_none(), "the answer crossed the cut");
        assert_eq!(proxy.counts().dropped, 1);
    }

    #[test]
    fn datagrams_from_strangers_are_counted_not_relayed() {
        let a1 = peer("a1", "a");
        let proxy = WanProxy::start(vec![a1.node.clone()]).unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"x", proxy.front_addr("a1")).unwrap();
        crate::wait_until("the stranger's datagram is counted", Duration::from_secs(5), || {
            proxy.counts().unknown_source == 1
        });
        assert!(recv(&a1).is_none());
    }
}
