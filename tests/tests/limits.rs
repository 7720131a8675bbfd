//! Hostile and malformed input against a running node: pushes whose header claims the largest
//! segment and then send nothing, a segment past the cap, more bytes than the header said, and
//! garbage on the node-to-node (QUIC, UDP) and API (TCP) ports. Each gets an error naming the
//! limit, and meanwhile another client's push and fetch on the same node succeed (asserted by
//! outcome, never by timing).

use std::io::Write;
use std::time::Duration;

use futures::channel::mpsc;
use tetrad_node::config::NodeConfig;
use tetrad_ops::client::{endpoint, Identity};
use tetrad_proto::v1::push_wal_request::Msg;
use tetrad_proto::v1::tetrad_client::TetradClient;
use tetrad_proto::v1::*;
use tetrad_tests::grpc::Pusher;
use tetrad_tests::segments::{segment_bytes, segment_name, Expected};
use tetrad_tests::{LocalCluster, UpOptions};
use tonic::transport::Channel;

const TENANT: &str = "acme";
const BOUND: Duration = Duration::from_secs(60);
/// The node's cap (`tetrad_core::catalog::MAX_SEGMENT_BYTES`).
const MAX_SEGMENT_BYTES: u64 = 64 << 20;
/// Stalled pushes held open at once: reserving what their headers claim would take 1 GiB.
const STALLED: usize = 16;

fn header(name: &str, size: u64) -> PushWalRequest {
    PushWalRequest {
        msg: Some(Msg::Header(PushHeader {
            tenant: TENANT.into(),
            name: name.into(),
            size,
            blake3: blake3::hash(b"whatever").to_hex().to_string(),
            chunks: Vec::new(),
        })),
    }
}

async fn dial(addr: &str, identity: &Identity) -> TetradClient<Channel> {
    TetradClient::new(endpoint(addr, identity).expect("endpoint").connect().await.expect("TLS connection"))
}

/// The node's virtual memory size in bytes (`VmSize` of /proc/PID/status).
fn vm_size(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmSize:")).expect("VmSize line");
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmSize value");
    kb * 1024
}

/// A push and a fetch by a well-behaved client, both succeeding.
async fn serve_another_client(cluster: &LocalCluster, pusher: &Pusher, n: u64) {
    let name = segment_name(n);
    let data = segment_bytes(&name, 8192);
    pusher.push(TENANT, &name, &data, BOUND).await.unwrap_or_else(|e| panic!("the other client's push: {e:?}"));
    let want = Expected::of(&name, &data);
    tokio::task::block_in_place(|| cluster.fetch_and_check(TENANT, &want));
}

#[test]
fn stalled_oversized_and_garbage_input_is_refused_while_the_node_serves_others() {
    let cluster = LocalCluster::up(UpOptions { nodes_per_region: 1, ..UpOptions::default() });
    cluster.create_sync_tenant(TENANT, "eu-west");
    cluster.wait_for_tenant_leader(TENANT, BOUND);
    let status = cluster.status().expect("status");
    let target = status.nodes.first().expect("a node").clone();
    let addr = target.api_addr.clone();
    let pid = cluster.node_pid(&target.id).expect("the node's pid");
    let identity = cluster.identity();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    rt.block_on(async {
        // The other client dials only the node under attack (which may redirect it to the leader).
        let pusher = Pusher::new(vec![addr.clone()], identity.clone());
        serve_another_client(&cluster, &pusher, 1).await;
        let before = vm_size(pid);

        // Headers claiming the largest segment, then silence: each stream stays open (its sender
        // is held) until the node gives up on it.
        let mut held = vec![];
        let mut calls = vec![];
        for i in 0..STALLED {
            let (mut tx, rx) = mpsc::channel::<PushWalRequest>(1);
            tx.try_send(header(&segment_name(100 + i as u64), MAX_SEGMENT_BYTES)).expect("queue the header");
            held.push(tx);
            let mut c = dial(&addr, &identity).await;
            calls.push(tokio::spawn(async move { c.push_wal(rx).await }));
        }
        // Meanwhile another client is served, and the node has not reserved what the headers claim.
        serve_another_client(&cluster, &pusher, 2).await;
        let grown = vm_size(pid).saturating_sub(before);
        assert!(
            grown < STALLED as u64 * MAX_SEGMENT_BYTES / 2,
            "{STALLED} stalled pushes claiming {MAX_SEGMENT_BYTES} bytes grew the node by {grown} bytes"
        );
        for call in calls {
            let s = call.await.expect("task").expect_err("a stalled push must be refused");
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
            assert!(s.message().contains("push_idle_timeout_ms = 10000"), "{s:?}");
        }
        drop(held);

        // A segment past the cap: refused at the header, naming the cap.
        let mut c = dial(&addr, &identity).await;
        let s = c
            .push_wal(futures::stream::iter([header(&segment_name(200), MAX_SEGMENT_BYTES + 1)]))
            .await
            .expect_err("a segment past the cap");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains(&format!("max_segment_bytes = {MAX_SEGMENT_BYTES}")), "{s:?}");
        // More bytes than the header said, and data before any header.
        let data = PushWalRequest { msg: Some(Msg::Data(vec![7; 100])) };
        let s = c
            .push_wal(futures::stream::iter([header(&segment_name(201), 10), data.clone()]))
            .await
            .expect_err("more bytes than the header");
        assert!(s.message().contains("more bytes than the header's size 10"), "{s:?}");
        let s = c.push_wal(futures::stream::iter([data])).await.expect_err("data first");
        assert!(s.message().contains("first message of a push must be its header"), "{s:?}");
        serve_another_client(&cluster, &pusher, 3).await;
    });

    // Garbage on the node-to-node port (QUIC over UDP) and on the API port (not TLS).
    let cfg = NodeConfig::load(&cluster.node_config(&target.id)).expect("node config");
    let raft_addr = cfg.nodes.iter().find(|p| p.name == target.id).expect("own entry").raft_addr;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..2_000usize {
        let len = 1 + (i * 37) % 1_400;
        let datagram: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        udp.send_to(&datagram, raft_addr).expect("send garbage");
    }
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0][..], &[0u8; 4096][..]] {
        let mut tcp = std::net::TcpStream::connect(&addr).expect("tcp connect");
        let _ = tcp.write_all(junk);
    }
    rt.block_on(async {
        let pusher = Pusher::new(vec![addr.clone()], identity.clone());
        serve_another_client(&cluster, &pusher, 4).await;
    });
    let status = cluster.status().expect("status after garbage");
    assert!(status.down_nodes().is_empty(), "nodes down after garbage: {:?}", status.down_nodes());
}
