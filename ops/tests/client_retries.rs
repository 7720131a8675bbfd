//! tetradctl's client against fake nodes: leader redirects, idempotent retries, and the exit
//! code each way of failing ends in.

#[path = "support/fake_node.rs"]
mod fake_node;

use std::time::Duration;

use fake_node::{closed_addr, Act, FakeNode, TENANT};
use tetrad_ops::client::Session;
use tetrad_ops::exit::{FETCH_ABORT, FETCH_NOT_FOUND, NO_ANSWER, USAGE};
use tetrad_ops::wal::fetch::fetch;
use tetrad_ops::wal::push::{push, read_segment, Segment, Sent};
use tonic::Code;

const SHORT: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(20);

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn segment(n: usize) -> Segment {
    Segment::new("000000010000000000000001".into(), bytes(n))
}

async fn push_counted(
    s: &mut Session,
    tenant: &str,
    seg: &Segment,
) -> tetrad_ops::exit::CmdResult<tetrad_proto::v1::PushWalReply> {
    push(s, tenant, seg, &std::sync::Arc::new(Sent::default())).await
}

#[tokio::test]
async fn status_follows_a_not_leader_answer_to_the_named_leader() {
    let (b, b_addr) = FakeNode::start("b").await;
    let (a, a_addr) = FakeNode::start("a").await;
    a.always(Act::NotLeader(Some(b_addr.clone())));
    let mut s = Session::new(vec![a_addr, b_addr], LONG, fake_node::identity());
    let reply = tetrad_ops::status::fetch_status(&mut s).await.expect("answered");
    assert_eq!(reply.meta_leader, "b");
    assert_eq!((a.calls("status"), b.calls("status")), (1, 1));
}

#[tokio::test]
async fn an_unreachable_first_node_is_skipped() {
    let (b, b_addr) = FakeNode::start("b").await;
    let mut s = Session::new(vec![closed_addr(), b_addr], LONG, fake_node::identity());
    let reply = tetrad_ops::status::fetch_status(&mut s).await.expect("answered");
    assert_eq!(reply.meta_leader, "b");
    assert_eq!(b.calls("status"), 1);
}

#[tokio::test]
async fn not_leader_without_a_hint_tries_the_other_nodes() {
    let (a, a_addr) = FakeNode::start("a").await;
    let (b, b_addr) = FakeNode::start("b").await;
    a.always(Act::NotLeader(None));
    let mut s = Session::new(vec![a_addr, b_addr], LONG, fake_node::identity());
    let tenants = tetrad_ops::tenant::list(&mut s).await.expect("answered");
    assert_eq!(tenants[0].name, TENANT);
    assert_eq!((a.calls("list_tenants"), b.calls("list_tenants")), (1, 1));
}

#[tokio::test]
async fn status_with_no_node_answering_exits_3() {
    let mut s = Session::new(vec![closed_addr(), closed_addr()], SHORT, fake_node::identity());
    let err = tetrad_ops::status::fetch_status(&mut s).await.expect_err("nobody answers");
    assert_eq!(err.code, NO_ANSWER, "{}", err.error);
}

#[tokio::test]
async fn unknown_tenant_is_bad_usage_for_tenant_show() {
    let (_a, a_addr) = FakeNode::start("a").await;
    let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
    let err = tetrad_ops::tenant::show(&mut s, "nope").await.expect_err("unknown");
    assert_eq!(err.code, USAGE, "{}", err.error);
}

#[tokio::test]
async fn push_is_redirected_to_the_leader_and_stored_there() {
    let (b, b_addr) = FakeNode::start("b").await;
    let (a, a_addr) = FakeNode::start("a").await;
    a.always(Act::NotLeader(Some(b_addr.clone())));
    let seg = segment(3 * (1 << 20) + 17);
    let mut s = Session::new(vec![a_addr, b_addr], LONG, fake_node::identity());
    let reply = push_counted(&mut s, TENANT, &seg).await.expect("acked");
    assert!(!reply.already_present);
    assert_eq!((reply.size, reply.blake3.as_str()), (seg.size(), seg.blake3.as_str()));
    assert_eq!(b.segment(&seg.name).as_deref(), Some(bytes(3 * (1 << 20) + 17).as_slice()));
    assert_eq!(a.segment(&seg.name), None);
}

#[tokio::test]
async fn push_is_retried_with_the_same_bytes_after_outcome_unknown_and_unavailable() {
    let (a, a_addr) = FakeNode::start("a").await;
    // Each failure is retried on the same node with the same bytes.
    a.script("push_wal", [Act::Fail("outcome-unknown"), Act::Fail("unavailable"), Act::Bare(Code::Internal)]);
    let seg = segment(1000);
    let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
    let reply = push_counted(&mut s, TENANT, &seg).await.expect("acked");
    assert!(!reply.already_present);
    let pushes = a.pushes();
    assert_eq!(pushes.len(), 4, "three failed attempts, then success");
    for (tenant, name, data) in &pushes {
        assert_eq!(
            (tenant.as_str(), name.as_str(), data.as_slice()),
            (TENANT, seg.name.as_str(), bytes(1000).as_slice())
        );
    }

    // A second push of the same bytes is an idempotent success.
    let reply = push_counted(&mut s, TENANT, &seg).await.expect("acked again");
    assert!(reply.already_present);
}

#[tokio::test]
async fn a_push_whose_connection_drops_after_sending_ends_with_outcome_unknown() {
    let (a, a_addr) = FakeNode::start("a").await;
    a.always(Act::DropConnection);
    let mut s = Session::new(vec![a_addr], SHORT, fake_node::identity());
    let err = push_counted(&mut s, TENANT, &segment(70_000)).await.expect_err("no answer");
    assert_eq!(err.code, NO_ANSWER, "{}", err.error);
    let text = err.error.to_string();
    assert!(text.contains("outcome unknown: retry the same push; it is idempotent"), "{text}");
    assert!(!a.pushes().is_empty(), "the push reached the node");
}

#[tokio::test]
async fn a_push_that_is_never_answered_ends_with_outcome_unknown_at_the_deadline() {
    let (a, a_addr) = FakeNode::start("a").await;
    a.always(Act::Hang);
    let mut s = Session::new(vec![a_addr], SHORT, fake_node::identity());
    let err = push_counted(&mut s, TENANT, &segment(10)).await.expect_err("no answer");
    assert_eq!(err.code, NO_ANSWER);
    assert!(err.error.to_string().contains("outcome unknown"), "{}", err.error);
}

#[tokio::test]
async fn a_push_to_an_unreachable_cluster_exits_3_and_says_nothing_was_stored() {
    let mut s = Session::new(vec![closed_addr()], SHORT, fake_node::identity());
    let err = push_counted(&mut s, TENANT, &segment(10)).await.expect_err("no answer");
    assert_eq!(err.code, NO_ANSWER);
    assert!(err.error.to_string().contains("not stored"), "{}", err.error);
}

#[tokio::test]
async fn a_different_segment_under_an_existing_name_is_a_conflict_that_changes_nothing() {
    let (a, a_addr) = FakeNode::start("a").await;
    let seg = segment(100);
    a.put_segment(&seg.name, b"other bytes");
    let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
    let err = push_counted(&mut s, TENANT, &seg).await.expect_err("conflict");
    assert_eq!(err.code, USAGE);
    let text = err.error.to_string();
    assert!(text.contains("differs") && text.contains("nothing was changed"), "{text}");
    assert_eq!(a.segment(&seg.name).as_deref(), Some(&b"other bytes"[..]));
    assert_eq!(a.pushes().len(), 1, "a conflict is not retried");
}

#[tokio::test]
async fn a_push_to_an_unknown_tenant_exits_2() {
    let (_a, a_addr) = FakeNode::start("a").await;
    let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
    let err = push_counted(&mut s, "nope", &segment(10)).await.expect_err("unknown tenant");
    assert_eq!(err.code, USAGE);
    assert!(err.error.to_string().contains("tenant nope does not exist"), "{}", err.error);
}

#[tokio::test]
async fn fetch_follows_a_redirect_and_writes_the_verified_segment() {
    let (b, b_addr) = FakeNode::start("b").await;
    let (a, a_addr) = FakeNode::start("a").await;
    a.always(Act::NotLeader(Some(b_addr.clone())));
    let data: Vec<u8> = (0..(2 << 20) + 3).map(|i| (i % 13) as u8).collect();
    b.put_segment("000000010000000000000002", &data);
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("RECOVERYXLOG");
    let mut s = Session::new(vec![a_addr, b_addr], LONG, fake_node::identity());
    let fetched = fetch(&mut s, TENANT, "000000010000000000000002", &dest).await.expect("fetched");
    assert_eq!(fetched.size, data.len() as u64);
    assert_eq!(std::fs::read(&dest).expect("dest written"), data);
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(leftovers, ["RECOVERYXLOG"], "no temporary file is left behind");
}

#[tokio::test]
async fn fetch_of_a_segment_that_does_not_exist_exits_1_and_creates_nothing() {
    let (_a, a_addr) = FakeNode::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("RECOVERYXLOG");
    let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
    let err = fetch(&mut s, TENANT, "00000002.history", &dest).await.expect_err("missing");
    assert_eq!(err.code, FETCH_NOT_FOUND, "{}", err.error);
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[tokio::test]
async fn fetch_from_an_unreachable_cluster_exits_128() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("RECOVERYXLOG");
    let mut s = Session::new(vec![closed_addr(), closed_addr()], SHORT, fake_node::identity());
    let err = fetch(&mut s, TENANT, "000000010000000000000001", &dest).await.expect_err("unreachable");
    assert_eq!(err.code, FETCH_ABORT, "{}", err.error);
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[tokio::test]
async fn a_not_found_without_tetrad_metadata_is_not_taken_as_missing() {
    let (a, a_addr) = FakeNode::start("a").await;
    a.always(Act::Bare(Code::NotFound));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(vec![a_addr], SHORT, fake_node::identity());
    let err = fetch(&mut s, TENANT, "x", &dir.path().join("d")).await.expect_err("no answer");
    assert_eq!(err.code, FETCH_ABORT, "{}", err.error);
    assert!(a.calls("fetch_wal") > 1, "retried");
}

#[tokio::test]
async fn a_corrupt_fetch_is_retried_and_never_reaches_dest() {
    let (a, a_addr) = FakeNode::start("a").await;
    a.put_segment("seg", b"the right bytes");
    a.script("fetch_wal", [Act::Corrupt]);
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("d");
    let mut s = Session::new(vec![a_addr.clone()], LONG, fake_node::identity());
    fetch(&mut s, TENANT, "seg", &dest).await.expect("second attempt is good");
    assert_eq!(std::fs::read(&dest).expect("written"), b"the right bytes");
    assert_eq!(a.calls("fetch_wal"), 2);

    a.always(Act::Corrupt);
    let dest = dir.path().join("e");
    let mut s = Session::new(vec![a_addr], SHORT, fake_node::identity());
    let err = fetch(&mut s, TENANT, "seg", &dest).await.expect_err("always corrupt");
    assert_eq!(err.code, FETCH_ABORT, "{}", err.error);
    assert!(!dest.exists());
}

#[tokio::test]
async fn fetch_to_an_unwritable_destination_exits_2_without_asking_the_cluster() {
    let (a, a_addr) = FakeNode::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
    let err = fetch(&mut s, TENANT, "seg", &dir.path().join("no-such-dir").join("d")).await.expect_err("unwritable");
    assert_eq!(err.code, USAGE, "{}", err.error);
    assert_eq!(a.calls("fetch_wal"), 0);
}

#[tokio::test]
async fn fetch_of_an_unknown_tenant_exits_2() {
    let (_a, a_addr) = FakeNode::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
    let err = fetch(&mut s, "nope", "seg", &dir.path().join("d")).await.expect_err("unknown tenant");
    assert_eq!(err.code, USAGE, "{}", err.error);
}

#[tokio::test]
async fn an_internal_error_stops_a_fetch_with_128() {
    let (a, a_addr) = FakeNode::start("a").await;
    a.always(Act::Fail("internal"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
    let err = fetch(&mut s, TENANT, "seg", &dir.path().join("d")).await.expect_err("internal");
    assert_eq!(err.code, FETCH_ABORT);
    assert_eq!(a.calls("fetch_wal"), 1, "not retried");
}

#[tokio::test]
async fn a_push_by_reference_sends_only_what_the_tenant_lacks_and_asks_again_after_a_failure() {
    let (a, a_addr) = FakeNode::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("000000010000000000000007");
    let mut data = bytes(5 * (1 << 20) + 3);
    std::fs::write(&path, &data).expect("write");
    // The first attempt fails after its chunks arrived; the retry asks again and sends none.
    a.script("push_wal", [Act::Fail("unavailable")]);
    let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
    let seg = read_segment(&path).expect("read");
    assert!(seg.by_ref());
    let sent = std::sync::Arc::new(Sent::default());
    let reply = push(&mut s, TENANT, &seg, &sent).await.expect("acked");
    assert_eq!((reply.size, reply.blake3.as_str()), (data.len() as u64, seg.blake3.as_str()));
    assert_eq!(a.segment(&seg.name).as_deref(), Some(data.as_slice()));
    assert_eq!((sent.bytes(), a.chunk_bytes()), (data.len() as u64, data.len() as u64), "sent once");
    assert_eq!((a.calls("missing_chunks"), a.calls("push_wal")), (2, 2));

    // A changed copy under another name sends the one chunk that differs.
    data[(1 << 20) * 2 + 9] ^= 0xff;
    let path2 = dir.path().join("000000010000000000000008");
    std::fs::write(&path2, &data).expect("write");
    let seg2 = read_segment(&path2).expect("read");
    let sent = std::sync::Arc::new(Sent::default());
    push(&mut s, TENANT, &seg2, &sent).await.expect("acked");
    assert_eq!(sent.bytes(), 1 << 20);
    assert_eq!(a.segment(&seg2.name).as_deref(), Some(data.as_slice()));
}
