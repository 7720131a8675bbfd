//! Free loopback ports for a local cluster: bound to port 0 so the kernel picks them, then
//! released for the nodes to take. Another program could take one in between; the node then
//! fails to start and says so in its log, which is acceptable for a local cluster.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

/// One node's addresses: QUIC (UDP) for node-to-node traffic, gRPC (TCP) for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    pub raft_addr: SocketAddr,
    pub api_addr: SocketAddr,
}

/// Bounds the retries when the kernel hands out a port number already picked for the other
/// protocol (TCP and UDP numbers are separate spaces, but distinct numbers are less confusing).
const MAX_PICKS_PER_PORT: usize = 64;

/// Picks `count` pairs of ports, every port number distinct. All sockets stay bound until every
/// port is picked, so the kernel cannot hand one out twice.
pub fn pick_free_ports(count: usize) -> std::io::Result<Vec<NodePorts>> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut used = BTreeSet::new();
    let mut udp = Vec::with_capacity(count);
    let mut tcp = Vec::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let raft_addr = pick(&mut used, || {
            let s = UdpSocket::bind(loopback)?;
            let a = s.local_addr()?;
            udp.push(s);
            Ok(a)
        })?;
        let api_addr = pick(&mut used, || {
            let s = TcpListener::bind(loopback)?;
            let a = s.local_addr()?;
            tcp.push(s);
            Ok(a)
        })?;
        out.push(NodePorts { raft_addr, api_addr });
    }
    Ok(out)
}

fn pick(
    used: &mut BTreeSet<u16>,
    mut bind: impl FnMut() -> std::io::Result<SocketAddr>,
) -> std::io::Result<SocketAddr> {
    for _ in 0..MAX_PICKS_PER_PORT {
        let addr = bind()?;
        if used.insert(addr.port()) {
            return Ok(addr);
        }
    }
    Err(std::io::Error::other("could not find a free loopback port with a distinct number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_picked_port_is_distinct_loopback_and_nonzero() {
        let ports = pick_free_ports(12).expect("free ports");
        assert_eq!(ports.len(), 12);
        let mut numbers = BTreeSet::new();
        for p in &ports {
            for a in [p.raft_addr, p.api_addr] {
                assert!(a.ip().is_loopback());
                assert_ne!(a.port(), 0);
                assert!(numbers.insert(a.port()), "port {} picked twice", a.port());
            }
        }
    }
}
