//! A re-push of a segment the tenant already holds is acked without a proposal (issue #12): its
//! bytes never enter the Raft log, nor cross the WAN, again. PostgreSQL re-runs `archive_command`
//! for a segment whose earlier run it did not see succeed, so re-pushes are ordinary traffic.
//!
//! Observable: the log index. With a stable leader, segment A acked at index i, then any number
//! of re-pushes of A, then a new segment B: B lands at i + 1 when the re-pushes proposed nothing,
//! at i + 1 + k when each of the k re-pushes was an entry. The bound leaves room for a membership
//! entry of the new tenant's placement settling meanwhile.

use std::time::Duration;

use tetrad_tests::grpc::{PushError, Pusher};
use tetrad_tests::segments::{segment_bytes, segment_name};
use tetrad_tests::{LocalCluster, UpOptions};

const PRIMARY: &str = "eu-west";
const REPUSHES: u64 = 10;
/// Entries besides B that may land between A and B (placement settling).
const SLACK: u64 = 2;

#[test]
fn a_re_push_of_a_held_segment_is_acked_without_a_new_log_entry_in_every_mode() {
    let cluster = LocalCluster::up(UpOptions::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    for mode in ["sync", "near-sync", "async"] {
        let tenant = format!("repush-{mode}");
        let mut create = vec!["tenant", "create", &tenant, "--mode", mode, "--primary", PRIMARY];
        if mode == "near-sync" {
            create.extend(["--rpo-target", "5s"]);
        }
        cluster.ctl(&create).expect_success();
        let (status, _) = cluster.wait_for_tenant_leader(&tenant, Duration::from_secs(60));
        let pusher = Pusher::new(status.nodes.iter().map(|n| n.api_addr.clone()).collect(), cluster.identity());
        let bound = Duration::from_secs(60);
        // A warm-up write gives the group a leader with an entry of its term, and time to settle.
        let warm = segment_bytes(&format!("repush/{mode}/0"), 4096);
        rt.block_on(pusher.push(&tenant, &segment_name(1), &warm, bound)).expect("warm-up push");
        std::thread::sleep(Duration::from_secs(2));

        let a_bytes = segment_bytes(&format!("repush/{mode}/a"), 1 << 20);
        let a = rt.block_on(pusher.push(&tenant, &segment_name(2), &a_bytes, bound)).expect("push A").reply;
        assert!(!a.already_present, "{mode}: A is new");
        for k in 0..REPUSHES {
            let again = rt.block_on(pusher.push(&tenant, &segment_name(2), &a_bytes, bound)).expect("re-push A").reply;
            assert!(again.already_present, "{mode}: re-push {k} of A says already present: {again:?}");
            assert_eq!((again.term, again.index), (a.term, a.index), "{mode}: a re-push names A's own entry");
            assert_eq!(again.blake3, a.blake3, "{mode}: same bytes");
        }
        let other = segment_bytes(&format!("repush/{mode}/a-other"), 1 << 20);
        let refused = rt.block_on(pusher.push(&tenant, &segment_name(2), &other, bound));
        assert!(
            matches!(&refused, Err(PushError::Refused { kind, .. }) if kind == "segment-conflict"),
            "{mode}: other bytes under A's name are refused as a conflict, not stored: {refused:?}"
        );
        let b = rt.block_on(pusher.push(&tenant, &segment_name(3), &warm, bound)).expect("push B").reply;
        assert!(!b.already_present, "{mode}: B is new");
        eprintln!("{mode}: A at {}/{}, B at {}/{} after {REPUSHES} re-pushes", a.term, a.index, b.term, b.index);
        if b.term == a.term {
            assert!(
                b.index > a.index && b.index - a.index <= 1 + SLACK,
                "{mode}: {REPUSHES} re-pushes of A added log entries: A at index {}, B at {}",
                a.index,
                b.index
            );
        }
    }
}
