//! Which addresses a process has bound, read from Linux's `/proc`: its descriptors name socket
//! inodes (`/proc/PID/fd/N -> socket:[INODE]`), and `/proc/PID/net/{tcp,tcp6,udp,udp6}` give each
//! inode's local address. The tests use it to check that no node listens outside loopback.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP's LISTEN state in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// The local addresses of `pid`'s listening TCP sockets and bound UDP sockets (QUIC).
pub fn bound_addrs(pid: u32) -> std::io::Result<Vec<SocketAddr>> {
    let mut inodes = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(fd?.path()) else { continue };
        let target = target.to_string_lossy();
        if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            inodes.insert(inode.to_owned());
        }
    }
    let mut addrs = Vec::new();
    for (table, tcp) in [("tcp", true), ("tcp6", true), ("udp", false), ("udp6", false)] {
        let text = match std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            if !inodes.contains(*inode) || (tcp && *state != TCP_LISTEN) {
                continue;
            }
            if let Some(addr) = parse_local(local) {
                addrs.push(addr);
            }
        }
    }
    Ok(addrs)
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6), each 32-bit word in host order.
fn parse_local(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> =
        (0..ip.len() / 8).map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()).collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [w] => IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_parse() {
        assert_eq!(parse_local("00000000:0035"), Some("0.0.0.0:53".parse().unwrap()));
        if cfg!(target_endian = "little") {
            assert_eq!(parse_local("0100007F:1F90"), Some("127.0.0.1:8080".parse().unwrap()));
            assert_eq!(parse_local("00000000000000000000000001000000:0016"), Some("[::1]:22".parse().unwrap()));
        }
        assert_eq!(parse_local("zz:1"), None);
    }

    #[test]
    fn this_process_sees_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs = bound_addrs(std::process::id()).unwrap();
        assert!(addrs.contains(&listener.local_addr().unwrap()), "{addrs:?}");
    }
}
