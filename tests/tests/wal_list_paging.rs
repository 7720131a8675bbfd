//! `ListWal` pages through a real cluster: a client that sets `page_size` follows `next_after`
//! to the whole list in order, a request without it (an old client) still gets everything in one
//! reply, and `tetradctl wal list` (which pages) prints the same list.

use std::time::Duration;

use tetrad_ops::client::{endpoint, Identity};
use tetrad_proto::v1::tetrad_client::TetradClient;
use tetrad_proto::v1::{ListWalReply, ListWalRequest};
use tetrad_tests::grpc::Pusher;
use tetrad_tests::segments::{segment_bytes, segment_name};
use tetrad_tests::{LocalCluster, UpOptions};

const TENANT: &str = "acme";
const SEGMENTS: u64 = 23;

/// Asks every node in turn until one answers (only the tenant's leader does).
async fn list_wal(addrs: &[String], identity: &Identity, req: ListWalRequest) -> ListWalReply {
    let mut last = String::new();
    for _ in 0..50 {
        for a in addrs {
            let endpoint = endpoint(a, identity).expect("a valid endpoint");
            match endpoint.connect().await.map(TetradClient::new) {
                Ok(mut c) => match c.list_wal(req.clone()).await {
                    Ok(r) => return r.into_inner(),
                    Err(s) => last = format!("{a}: {s}"),
                },
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no node answered ListWal: {last}");
}

#[test]
fn a_paged_listing_follows_the_tokens_and_an_old_request_still_gets_everything() {
    let cluster = LocalCluster::up(UpOptions::default());
    cluster.create_sync_tenant(TENANT, "eu-west");
    let (status, _) = cluster.wait_for_tenant_leader(TENANT, Duration::from_secs(60));
    let addrs: Vec<String> = status.nodes.iter().map(|n| n.api_addr.clone()).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let identity = cluster.identity();
    let pusher = Pusher::new(addrs.clone(), identity.clone());
    let mut want = Vec::new();
    for n in 1..=SEGMENTS {
        let name = segment_name(n);
        let bytes = segment_bytes(&name, 4096);
        rt.block_on(pusher.push(TENANT, &name, &bytes, Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        want.push(name);
    }
    // One segment outside the prefix used below, and not on its timeline.
    let history = "00000002.history";
    rt.block_on(pusher.push(TENANT, history, b"1\t0/3000000\tno recovery target specified\n", Duration::from_secs(30)))
        .expect("push the history file");

    // Pages of 5 over the first timeline's 23 segments: 5 pages, the last of 3 with no token.
    let prefix = "00000001";
    let (mut got, mut sizes, mut after) = (Vec::new(), Vec::new(), String::new());
    loop {
        let req =
            ListWalRequest { tenant: TENANT.into(), prefix: prefix.into(), page_size: Some(5), after: after.clone() };
        let reply = rt.block_on(list_wal(&addrs, &identity, req));
        sizes.push(reply.segments.len());
        got.extend(reply.segments.into_iter().map(|s| s.name));
        if reply.next_after.is_empty() {
            break;
        }
        assert!(reply.next_after > after, "the token moves forward");
        after = reply.next_after;
    }
    assert_eq!(got, want);
    assert_eq!(sizes, [5, 5, 5, 5, 3]);

    // An old client's request (no page_size, no token) gets the whole list and no token.
    let old = rt.block_on(list_wal(
        &addrs,
        &identity,
        ListWalRequest { tenant: TENANT.into(), prefix: String::new(), ..Default::default() },
    ));
    let mut all = want.clone();
    all.push(history.to_string());
    assert_eq!(old.segments.iter().map(|s| s.name.clone()).collect::<Vec<_>>(), all);
    assert!(old.next_after.is_empty());

    // page_size 0 is the default page (10,000): everything here, no token.
    let default = rt.block_on(list_wal(
        &addrs,
        &identity,
        ListWalRequest { tenant: TENANT.into(), page_size: Some(0), ..Default::default() },
    ));
    assert_eq!(default.segments, old.segments);
    assert!(default.next_after.is_empty());

    // tetradctl pages too, and prints the same list.
    assert_eq!(cluster.list(TENANT).into_iter().map(|s| s.name).collect::<Vec<_>>(), all);
}
