//! Deliberate bugs for the simulator (`tetrad-sim run|sweep --plant NAME`): each is a mistake a
//! developer could really make, and the simulator's oracles must catch every one of them (a
//! planted bug that no oracle catches means an oracle is wrong).
//!
//! This module owns the switch and the buggy code paths; the product code carries only one-line
//! hooks that call [`on`]. Without the cargo feature `planted-bugs`, [`on`] is a constant `false`,
//! the buggy paths are not compiled, and every hook folds away.

/// The bugs that can be planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The push path acks as soon as the leader accepted the write, before it is committed.
    AckBeforeCommit,
    /// The log store reports appended entries flushed when they are queued for the log files,
    /// before the fsync, so a follower answers an append before the entries are durable.
    AckBeforeFsync,
    /// A node whose disk was wiped silently re-creates an empty store under its old name, and peers
    /// stop checking the storage incarnation, so its empty log votes.
    WipedNodeVotes,
    /// The near-sync lag gate counts the entry after the last one durable in another region as
    /// durable too, so one exposed write can stay exposed past the RPO target.
    LagGateOffByOne,
    /// Loss accounting takes the promoted replica's log position as the old leader's newest ack,
    /// so `lost_writes_min` misses the acked writes the new epoch lacks.
    UndercountLoss,
    /// A tenant leader acks without checking its node's liveness lease, so a cut-off primary
    /// keeps acking after the meta group promoted another region.
    IgnoreLease,
    /// Promotion picks the surviving replica with the lowest log position instead of the highest.
    PromoteStaleRegion,
    /// The near-sync lag gate counts a write durable elsewhere once one replica outside the
    /// leader's region has it, so the region and that replica lost together take writes acked
    /// over more than `rpo_target` (the rule before issue #18).
    LagGateOneCopy,
    /// The failover controller calls a node expired on the time since its last renewal alone,
    /// so after the meta group lost its quorum it skips live replicas holding the newest writes
    /// when it seals and promotes (sim seed 10179, issue #18).
    ExpireOnSilence,
    /// A snapshot install is reported before the chunks it references are durable: the rows and
    /// the applied position are installed, the chunks are never fetched by the installer (the
    /// scrub or a read may repair them later), so `matched` and promotion count a replica that
    /// lacks the bytes.
    InstallBeforeChunks,
    /// The log store sideloads a segment's chunk files with plain writes (no fdatasync, no
    /// directory fsync) and reports the append flushed once the stripped log record is durable,
    /// so a replica is counted for an entry whose bytes a power loss can still take away.
    AckBeforeChunks,
    /// A record write's version conditions are ignored when it is applied: every conditional
    /// put or delete goes through, so a write succeeds against a version it never saw.
    RecordConditionIgnored,
}

impl Bug {
    pub const ALL: [Bug; 12] = [
        Bug::AckBeforeCommit,
        Bug::AckBeforeFsync,
        Bug::WipedNodeVotes,
        Bug::LagGateOffByOne,
        Bug::UndercountLoss,
        Bug::IgnoreLease,
        Bug::PromoteStaleRegion,
        Bug::LagGateOneCopy,
        Bug::ExpireOnSilence,
        Bug::InstallBeforeChunks,
        Bug::AckBeforeChunks,
        Bug::RecordConditionIgnored,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::WipedNodeVotes => "wiped-node-votes",
            Bug::LagGateOffByOne => "lag-gate-off-by-one",
            Bug::UndercountLoss => "undercount-loss",
            Bug::IgnoreLease => "ignore-lease",
            Bug::PromoteStaleRegion => "promote-stale-region",
            Bug::LagGateOneCopy => "lag-gate-one-copy",
            Bug::ExpireOnSilence => "expire-on-silence",
            Bug::InstallBeforeChunks => "install-before-chunks",
            Bug::AckBeforeChunks => "ack-before-chunks",
            Bug::RecordConditionIgnored => "record-condition-ignored",
        }
    }

    pub fn parse(s: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == s)
    }
}

/// Whether this build can plant bugs at all.
pub const ENABLED: bool = cfg!(feature = "planted-bugs");

/// Whether `bug` is planted now. A constant `false` without the feature.
#[inline(always)]
pub fn on(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        imp::active() == Some(bug)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

/// Plants `bug` (or none) for the whole process. Fails in a build without the feature.
pub fn plant(bug: Option<Bug>) -> Result<(), String> {
    #[cfg(feature = "planted-bugs")]
    {
        imp::set(bug);
        Ok(())
    }
    #[cfg(not(feature = "planted-bugs"))]
    match bug {
        None => Ok(()),
        Some(b) => Err(format!("cannot plant {}: this build lacks the cargo feature planted-bugs", b.name())),
    }
}

#[cfg(feature = "planted-bugs")]
pub use imp::{ack_before_commit, reinit_if_wiped, report_before_sync, write_without_sync};

#[cfg(feature = "planted-bugs")]
mod imp {
    use std::path::Path;
    use std::sync::atomic::{AtomicU8, Ordering};

    use openraft::storage::IOFlushed;

    use super::Bug;
    use crate::node::{ApiError, PushOutcome};
    use crate::raft::group::Group;
    use crate::raft::types::TypeConfig;
    use crate::raft::Command;
    use crate::seams::disk::DiskRef;
    use crate::storage::store::Store;
    use crate::tenant::catalog::TenantCommand;
    use crate::tenant::group_state::TenantState;

    /// 0: none; otherwise the index in `Bug::ALL` plus one. A process-wide switch: the simulator
    /// runs one seed at a time.
    static ACTIVE: AtomicU8 = AtomicU8::new(0);

    pub(super) fn active() -> Option<Bug> {
        match ACTIVE.load(Ordering::Relaxed) {
            0 => None,
            i => Bug::ALL.get(usize::from(i) - 1).copied(),
        }
    }

    pub(super) fn set(bug: Option<Bug>) {
        let i = bug.and_then(|b| Bug::ALL.iter().position(|x| *x == b)).map_or(0, |p| p as u8 + 1);
        ACTIVE.store(i, Ordering::Relaxed);
    }

    /// `ack-before-commit`: hands the write to Raft fire-and-forget and acks at once. The term and
    /// index of the entry are unknown at that point and reported as 0.
    pub async fn ack_before_commit(
        g: &Group<TenantState>,
        cmd: TenantCommand,
        epoch: u64,
    ) -> Result<PushOutcome, ApiError> {
        let TenantCommand::PutSegment { blake3, data, .. } = &cmd else {
            unreachable!("only segment pushes take this path");
        };
        let (size, blake3) = (data.len() as u64, *blake3);
        g.raft
            .client_write_ff(Command::Tenant(cmd), None)
            .await
            .map_err(|e| ApiError::Unavailable(format!("group stopped: {e}")))?;
        Ok(PushOutcome { already_present: false, size, blake3, epoch, term: 0, index: 0 })
    }

    /// `ack-before-fsync`: reports an append flushed as soon as it is queued with the store's
    /// writer, before the writer's sync (the writer still writes it, in order). A follower thus
    /// answers an append before its entries are durable. Hands the callback back when the bug is
    /// not planted.
    pub fn report_before_sync(callback: IOFlushed<TypeConfig>) -> Option<IOFlushed<TypeConfig>> {
        if !super::on(Bug::AckBeforeFsync) {
            return Some(callback);
        }
        callback.io_completed(Ok(()));
        None
    }

    /// `ack-before-chunks`: writes a chunk file the way a careless developer would, a plain write
    /// with no `sync_data` (the name exists at once, its bytes reach the disk whenever the page
    /// cache gets to them), in place of `Disk::write_file_durable`.
    pub fn write_without_sync(disk: &DiskRef, path: &Path, data: &[u8]) -> std::io::Result<()> {
        let file = disk.open_backend(path)?;
        file.set_len(0)?;
        file.write(0, data)
    }

    /// `wiped-node-votes`: where the product refuses to open a missing store
    /// (`StoreError::Missing`), silently creates an empty one under the node's old name.
    pub fn reinit_if_wiped(disk: &DiskRef, root: &Path, node_name: &str) {
        if super::on(Bug::WipedNodeVotes) {
            // An existing store makes `init` refuse, which is the no-op wanted here.
            let _ = Store::init(disk.clone(), root, node_name, 0x0bad_0000_0000_0000 | node_name.len() as u64);
        }
    }
}
