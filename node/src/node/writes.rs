//! The write path of a tenant leader: a client's push from its checks to its ack
//! ([`Writes::push`], the ack sequence in [`Writes::commit_and_ack`]), the near-sync lag gate's
//! wait, and the ack book of every group this node leads (the gate's input and the reports of
//! the newest ack the meta group counts losses against). The gate's decisions are pure and
//! live in `tetrad-core` (`node/core/src/lag_gate.rs`); this file reads the group's progress and
//! the clock, and waits.
//!
//! Owns: the ack books (`acks`), one per tenant group this node leads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tetrad_core::lag_gate::{self, AckBook, Exposure, GateVerdict};

use super::directory::Directory;
use super::hosted::{HostedGroups, TenantGroup};
use super::repair::Repair;
use super::status::Status;
use crate::api::error::ApiError;
use crate::meta::liveness::Liveness;
use crate::meta::state::{
    parse_group, AckMark, EventKind, MetaCommand, TenantEvent, TenantRecord, TenantState as TState,
};
use crate::raft::group::{Group, GroupStatus};
use crate::raft::Command;
use crate::seams::clock::ClockRef;
use crate::seams::net::NodeId;
use crate::storage::chunks::ChunkStore;
use crate::storage::chunks::Hash;
use crate::storage::store::blocking;
use crate::tenant::catalog::{check_layout, chunk_len, validate_name, TenantCommand, TenantReply, MAX_SEGMENT_BYTES};
use crate::tenant::group_state::TenantState;
use tetrad_core::records::{validate_write, RecordOp, RecordReply};

/// How long a push to a replica that knows no leader waits for an election to end.
const ELECTION_WAIT: Duration = Duration::from_millis(1_000);
/// How long a write may wait at the lag gate before the client is told the outcome is unknown
/// (it is committed in the primary region; a retry is idempotent).
const GATE_PATIENCE: Duration = Duration::from_secs(30);
const GATE_POLL: Duration = Duration::from_millis(10);
/// How long an already-present ack waits for replication outside the primary region before the
/// push proposes instead (`Writes::ack_if_present`).
const REACK_PATIENCE: Duration = Duration::from_millis(500);
/// Chunks of a push by reference on their way to the group's voters at once (a chunk is up to
/// 1 MiB, so this bounds the upload's memory on the leader).
const UPLOAD_WINDOW: usize = 4;
/// Chunk sends to learners that may run behind the upload at once (each holds one chunk); a
/// learner not sent a chunk fetches it when it appends the entry.
const LEARNER_SENDS: usize = 8;
/// The most hashes one `missing_chunks` question may carry (a 1 GiB object has 1,024 chunks).
pub const MAX_HASHES_ASKED: usize = 16_384;

/// A push by reference as its header declares it: the object's name, size and blake3, and the
/// blake3 of each of its chunks (cut by `chunks::split`).
#[derive(Clone, Debug)]
pub struct RefPush {
    pub name: String,
    pub blake3: Hash,
    pub size: u64,
    pub chunks: Vec<Hash>,
}

/// The chunks of a push by reference as they arrive: each one's position in the chunk list and
/// its bytes, in increasing positions (the ones the tenant holds are skipped).
pub type ChunkStream = futures::stream::BoxStream<'static, Result<(u32, Vec<u8>), ApiError>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    pub already_present: bool,
    pub size: u64,
    pub blake3: Hash,
    pub epoch: u64,
    pub term: u64,
    pub index: u64,
}

/// The answer to a record write: the group's reply, the epoch it was acked in and the entry's
/// log position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordWrite {
    pub reply: RecordReply,
    pub epoch: u64,
    pub term: u64,
    pub index: u64,
}

/// The write path and the ack books of the groups this node leads.
pub(crate) struct Writes {
    me: NodeId,
    clock: ClockRef,
    liveness: Liveness,
    directory: Arc<Directory>,
    status: Arc<Status>,
    hosted: Arc<HostedGroups>,
    /// Sends the chunks of a push by reference to the group's members.
    repair: Arc<Repair>,
    /// Per tenant group this node leads: the lag gate's acked writes and the newest ack.
    acks: Mutex<BTreeMap<String, AckBook>>,
    /// Bounds the chunk sends to learners that run behind a push by reference.
    learner_sends: Arc<tokio::sync::Semaphore>,
}

impl Writes {
    pub(super) fn new(
        me: NodeId,
        clock: ClockRef,
        liveness: Liveness,
        directory: Arc<Directory>,
        status: Arc<Status>,
        hosted: Arc<HostedGroups>,
        repair: Arc<Repair>,
    ) -> Self {
        Self {
            me,
            clock,
            liveness,
            directory,
            status,
            hosted,
            repair,
            acks: Mutex::new(BTreeMap::new()),
            learner_sends: Arc::new(tokio::sync::Semaphore::new(LEARNER_SENDS)),
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, AckBook>> {
        self.acks.lock().expect("acks lock")
    }

    /// Stores one WAL segment. Answers only once it is durable as the tenant's mode promises and
    /// this node's liveness lease is valid.
    pub(crate) async fn push(
        &self,
        tenant: &str,
        name: &str,
        blake3: Hash,
        data: Vec<u8>,
    ) -> Result<PushOutcome, ApiError> {
        validate_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if data.len() as u64 > MAX_SEGMENT_BYTES {
            return Err(ApiError::BadRequest(format!("segment is larger than {MAX_SEGMENT_BYTES} bytes")));
        }
        let (rec, g, ignore_lease) = self.group_for_write(tenant).await?;
        // Checked here, by the node about to propose it, not by every node a client tries first:
        // a client looking for the leader (or waiting out a failover) asks several, and hashing
        // each attempt cost the simulator 3% of its time.
        if ::blake3::hash(&data).as_bytes() != &blake3 {
            return Err(ApiError::BadRequest("the segment's bytes do not match the blake3 in its header".into()));
        }
        if let Some(out) = self.ack_if_present(&g, &rec, name, &blake3, ignore_lease).await? {
            return Ok(out);
        }
        let proposed_at_ms = self.clock.wall_now_ms();
        let cmd = TenantCommand::PutSegment { name: name.to_string(), blake3, data, proposed_at_ms };
        self.commit_and_ack(&g, &rec, name, cmd, proposed_at_ms, ignore_lease).await
    }

    /// Stores one segment pushed by reference, never holding it whole: the header lists its
    /// chunks, and only the chunks the tenant lacks arrive (the pusher asked
    /// [`Writes::missing_chunks`] first), so a re-push of a large file with few changes sends few
    /// bytes across the network. Answers as [`Writes::push`] does, after the same ack sequence.
    ///
    /// 1. The group is led here and may propose; a segment already held answers at once
    ///    ([`Writes::ack_if_present`]), whatever the stream still carries.
    /// 2. Each arriving chunk is checked against its hash and length, written durably here, and
    ///    sent to the group's voters (durable there before the next [`UPLOAD_WINDOW`] chunks are
    ///    taken) and, as far as [`LEARNER_SENDS`] allows, to its learners. A chunk that was not
    ///    sent must be held: a committed entry of the tenant references it (the applied catalog
    ///    here), never merely a file on this disk (a failed push leaves files behind).
    /// 3. The whole object's blake3 is computed over every chunk in order (held ones read back
    ///    here), and must match the header's.
    /// 4. An entry of hashes (`TenantCommand::PutSegmentRef`) is proposed and acked by
    ///    [`Writes::commit_and_ack`]. Every replica appends it only once it holds each chunk
    ///    durably (`raft/log_store.rs` fetches those a member missed), so the commit quorum, the
    ///    lag gate, the ack marks and promotion count only replicas that hold the bytes.
    pub(crate) async fn push_chunked(
        &self,
        tenant: &str,
        push: RefPush,
        mut body: ChunkStream,
    ) -> Result<PushOutcome, ApiError> {
        use futures::StreamExt;
        validate_name(&push.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        check_layout(push.size, push.chunks.len()).map_err(ApiError::BadRequest)?;
        let (rec, g, ignore_lease) = self.group_for_write(tenant).await?;
        if let Some(out) = self.ack_if_present(&g, &rec, &push.name, &push.blake3, ignore_lease).await? {
            return Ok(out);
        }
        let store = g.sm.read().await.state.chunks.clone();
        let (voters, learners) = self.upload_targets(&g).await;
        let mut hasher = ::blake3::Hasher::new();
        let mut next = 0usize;
        let mut inflight = futures::stream::FuturesUnordered::new();
        while let Some(item) = body.next().await {
            let (i, data) = item?;
            let i = i as usize;
            if i < next || i >= push.chunks.len() {
                return Err(ApiError::BadRequest(format!(
                    "chunk {i} arrived out of order (after chunk {next} of {} was expected)",
                    push.chunks.len()
                )));
            }
            let want = chunk_len(push.size, i);
            if data.len() != want {
                return Err(ApiError::BadRequest(format!(
                    "chunk {i} has {} bytes where {want} were declared",
                    data.len()
                )));
            }
            let h: Hash = *::blake3::hash(&data).as_bytes();
            if h != push.chunks[i] {
                return Err(ApiError::BadRequest(format!(
                    "chunk {i}'s bytes do not match the blake3 its header lists"
                )));
            }
            self.hash_held(&g, &store, tenant, &push.chunks[next..i], &mut hasher).await?;
            hasher.update(&data);
            blocking(|| store.put_verified(h, &data))
                .map_err(|e| ApiError::Internal(format!("writing chunk {i} of {}: {e}", push.name)))?;
            let data = Arc::new(data);
            self.send_to_learners(&g.name, &learners, h, &data);
            inflight.push(self.send_to_voters(g.name.clone(), voters.clone(), h, data));
            while inflight.len() >= UPLOAD_WINDOW {
                inflight.next().await;
            }
            next = i + 1;
        }
        self.hash_held(&g, &store, tenant, &push.chunks[next..], &mut hasher).await?;
        while inflight.next().await.is_some() {}
        if hasher.finalize().as_bytes() != &push.blake3 {
            return Err(ApiError::BadRequest(format!(
                "the chunks of {} do not hash to the blake3 in its header; nothing was stored",
                push.name
            )));
        }
        let proposed_at_ms = self.clock.wall_now_ms();
        let cmd = TenantCommand::PutSegmentRef {
            name: push.name.clone(),
            blake3: push.blake3,
            size: push.size,
            chunks: push.chunks,
            proposed_at_ms,
        };
        self.commit_and_ack(&g, &rec, &push.name, cmd, proposed_at_ms, ignore_lease).await
    }

    /// Which of `hashes` the tenant does not hold, by position: those no segment of the applied
    /// catalog here references (a committed entry), so a push by reference sends them. Only the
    /// leader answers (others say `not-leader`, naming it), so the question also finds the node
    /// the push goes to and no chunk bytes go to a node that would refuse them; the push itself
    /// checks again.
    pub(crate) async fn missing_chunks(&self, tenant: &str, hashes: &[Hash]) -> Result<Vec<u32>, ApiError> {
        if hashes.len() > MAX_HASHES_ASKED {
            return Err(ApiError::BadRequest(format!(
                "{} hashes asked at once; at most {MAX_HASHES_ASKED}",
                hashes.len()
            )));
        }
        let (_, g, _) = self.group_for_write(tenant).await?;
        let sm = g.sm.read().await;
        Ok((0..hashes.len() as u32).filter(|i| !sm.state.catalog.holds_chunk(&hashes[*i as usize])).collect())
    }

    /// The members a push by reference sends its chunks to, other than this node and those whose
    /// liveness has lapsed: the group's voters (waited for) and learners (not waited for).
    async fn upload_targets(&self, g: &TenantGroup) -> (Arc<Vec<NodeId>>, Arc<Vec<NodeId>>) {
        let st = g.status();
        let live = self.directory.live_nodes().await;
        let pick = |s: &std::collections::BTreeSet<NodeId>| -> Arc<Vec<NodeId>> {
            Arc::new(s.iter().copied().filter(|m| *m != self.me && live.contains_key(m)).collect())
        };
        (pick(&st.voters), pick(&st.learners))
    }

    /// Sends one chunk to every voter in `to` at once and waits for all of them. A voter that
    /// fails fetches the chunk when it appends the entry (`raft/log_store.rs`).
    fn send_to_voters(
        &self,
        group: String,
        to: Arc<Vec<NodeId>>,
        h: Hash,
        data: Arc<Vec<u8>>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let repair = Arc::clone(&self.repair);
        async move {
            let sends = to.iter().map(|m| {
                let (repair, group, data) = (&repair, &group, &data);
                async move {
                    if let Err(e) = repair.send_chunk(*m, group, h, data).await {
                        tracing::debug!(%group, member = m, error = %e, "a chunk of a push did not reach a voter; it fetches it on append");
                    }
                }
            });
            futures::future::join_all(sends).await;
        }
    }

    /// Sends one chunk to the learners in `to` in the background, while a send slot is free.
    fn send_to_learners(&self, group: &str, to: &Arc<Vec<NodeId>>, h: Hash, data: &Arc<Vec<u8>>) {
        for m in to.iter().copied() {
            let Ok(permit) = Arc::clone(&self.learner_sends).try_acquire_owned() else { return };
            let (repair, group, data) = (Arc::clone(&self.repair), group.to_string(), Arc::clone(data));
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = repair.send_chunk(m, &group, h, &data).await {
                    tracing::debug!(%group, member = m, error = %e, "a chunk of a push did not reach a learner; it fetches it on append");
                }
            });
        }
    }

    /// Feeds chunks the pusher did not send (`held`) into the object's hash, read back here: each
    /// must be one the tenant holds.
    async fn hash_held(
        &self,
        g: &TenantGroup,
        store: &ChunkStore,
        tenant: &str,
        held: &[Hash],
        hasher: &mut ::blake3::Hasher,
    ) -> Result<(), ApiError> {
        for h in held {
            if !g.sm.read().await.state.catalog.holds_chunk(h) {
                return Err(ApiError::Unavailable(format!(
                    "chunk {} was not sent, but tenant {tenant} does not hold it (a write that referenced it may have been lost in a failover); ask again which chunks are missing",
                    crate::storage::chunks::hex(h)
                )));
            }
            let bytes = store.get_or_repair(h).await.map_err(|e| {
                ApiError::Internal(format!("reading back held chunk {}: {e}", crate::storage::chunks::hex(h)))
            })?;
            hasher.update(&bytes);
        }
        Ok(())
    }

    /// Applies one record write (puts and deletes, all or nothing). Answers only once it is
    /// durable as the tenant's mode promises and this node's liveness lease is valid, exactly as
    /// a push ([`Writes::commit_and_ack`]); a failed condition is an answer too, given under the
    /// same rules (it says what the committed state was).
    pub(crate) async fn records(&self, tenant: &str, ops: Vec<RecordOp>) -> Result<RecordWrite, ApiError> {
        validate_write(&ops).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let (rec, g, ignore_lease) = self.group_for_write(tenant).await?;
        let proposed_at_ms = self.clock.wall_now_ms();
        let cmd = TenantCommand::Records { ops, proposed_at_ms };
        match self.commit_then_ack(&g, &rec, cmd, proposed_at_ms, ignore_lease).await? {
            (crate::raft::Reply::Tenant(TenantReply::Records(RecordReply::Invalid { reason })), _, _) => {
                Err(ApiError::BadRequest(reason))
            }
            (crate::raft::Reply::Tenant(TenantReply::Records(reply)), term, index) => {
                Ok(RecordWrite { reply, epoch: rec.epoch, term, index })
            }
            (other, _, _) => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// The tenant's record and group when this node leads it and may propose: not sealed,
    /// leading (after waiting out an election), lease valid. Also says whether the planted
    /// `ignore-lease` bug is on.
    async fn group_for_write(&self, tenant: &str) -> Result<(TenantRecord, TenantGroup, bool), ApiError> {
        let rec = self.directory.tenant_record(tenant).await?;
        if rec.sealed {
            return Err(ApiError::Unavailable(format!(
                "tenant {tenant}'s epoch {} is sealed: a failover is promoting a new epoch; retry shortly",
                rec.epoch
            )));
        }
        let Some(g) = self.hosted.get(&rec.group()) else {
            return Err(ApiError::NotLeader { leader: self.status.locate_leader(&rec).await });
        };
        if !g.status().is_leader {
            // No leader known here: an election is under way (or this replica is cut off).
            // Waiting for its outcome answers the client with the new leader, or takes the
            // write here if this node won, instead of sending it on a round of probes.
            let leader = match g.wait_leader(ELECTION_WAIT).await {
                Some(l) => Some(l),
                None => self.status.locate_leader(&rec).await,
            };
            if leader != Some(self.me) || !g.status().is_leader {
                return Err(ApiError::NotLeader { leader });
            }
        }
        let ignore_lease = crate::planted::on(crate::planted::Bug::IgnoreLease);
        if !self.liveness.is_valid() && !ignore_lease {
            return Err(ApiError::Unavailable(
                "this node's liveness lease is not valid; it acks nothing until it renews".into(),
            ));
        }
        Ok((rec, g, ignore_lease))
    }

    /// The ack of a write, on the leader of its tenant group, in this order:
    ///
    /// 1. **Durable commit** (`Group::write`): the entry is fdatasync'd on a quorum and applied
    ///    here. Nothing below may run before it: every check is about whether a write that is
    ///    already durable may be acked, and an ack of a write that is not durable is the loss the
    ///    product exists to prevent.
    /// 2. **Lag gate** (near-sync only, [`Writes::lag_gate`]): waits while an acked write has
    ///    been durable only in the primary region for longer than the RPO target (or commits the
    ///    switch to degraded). It comes after the commit because it holds back the ack, not the
    ///    commit: the write is already counted in the group's progress it measures.
    /// 3. **Lease** (`Liveness::is_valid`): checked again after the commit and the gate because
    ///    both can wait long enough for the lease to lapse, and a node without a valid lease may
    ///    already have been fenced and replaced by another epoch.
    /// 4. **Epoch current** (`Directory::epoch_current`): last, because a renewal counts only
    ///    once this node's directory has applied everything up to it (`liveness_loop`): a lease
    ///    valid at step 3 means the directory read here is recent enough to show a seal or a
    ///    newer epoch.
    ///
    /// Only then is the ack noted in the group's ack book ([`Writes::note_ack`]), which the gate
    /// and the meta group's loss accounting read: a write there is one the client is told is
    /// safe. A failed step 2, 3 or 4 answers `outcome-unknown` (the write is committed; a retry
    /// of the same push is idempotent).
    async fn commit_and_ack(
        &self,
        g: &TenantGroup,
        rec: &TenantRecord,
        name: &str,
        cmd: TenantCommand,
        proposed_at_ms: u64,
        ignore_lease: bool,
    ) -> Result<PushOutcome, ApiError> {
        #[cfg(feature = "planted-bugs")]
        if crate::planted::on(crate::planted::Bug::AckBeforeCommit) {
            return crate::planted::ack_before_commit(g, cmd, rec.epoch).await;
        }
        let (reply, _, _) = self.commit_then_ack(g, rec, cmd, proposed_at_ms, ignore_lease).await?;
        outcome_of(reply, name, rec.epoch)
    }

    /// Steps 1 to 4 of [`Writes::commit_and_ack`] and the note in the ack book, for any tenant
    /// command: the group's reply once the write may be acked, with the entry's term and index.
    async fn commit_then_ack(
        &self,
        g: &TenantGroup,
        rec: &TenantRecord,
        cmd: TenantCommand,
        proposed_at_ms: u64,
        ignore_lease: bool,
    ) -> Result<(crate::raft::Reply, u64, u64), ApiError> {
        let tenant = rec.spec.name.as_str();
        // 1. Durable commit.
        let (reply, term, index) = g.write(Command::Tenant(cmd)).await?;
        // 2. The lag gate, between the commit and the ack.
        self.lag_gate(g, tenant).await?;
        // 3. Fencing: the lease, checked after the write is durable and just before the ack.
        if !self.liveness.is_valid() && !ignore_lease {
            return Err(ApiError::OutcomeUnknown(
                "the write committed, but this node's liveness lease lapsed before the ack".into(),
            ));
        }
        // 4. The epoch, on the directory the valid lease vouches for.
        if !self.directory.epoch_current(tenant, rec.epoch).await && !ignore_lease {
            return Err(ApiError::OutcomeUnknown(format!(
                "the write committed in epoch {}, but the meta group has sealed or replaced that epoch",
                rec.epoch
            )));
        }
        let writes = g.sm.read().await.state.mark_at(index).map(|m| m.writes).unwrap_or(0);
        self.note_ack(g, rec, AckMark { term, index, writes, proposed_at_ms });
        Ok((reply, term, index))
    }

    /// A re-push of a segment the tenant already holds, acked without a proposal, so that its
    /// bytes never enter the log again (issue #12: before, every re-push carried its whole
    /// segment into every replica's log, across the WAN, only to be found present at apply).
    /// None: the segment is not held (or not yet safely), and the push proposes as any other.
    ///
    /// "Already present" is an ack like any other, in the order of [`Writes::commit_and_ack`]:
    /// 1. **Held, linearizably**: after a ReadIndex barrier the applied catalog holds the name
    ///    with this blake3, so a committed entry stored it (a file on this disk alone never counts).
    /// 2. **Lag gate** (near-sync): every entry this replica has applied is durable on the gate's
    ///    two members outside the primary region. The row's own position may be another
    ///    epoch's log (a promotion carries the catalog over), so the applied index of this
    ///    group stands for it; if replication does not reach it within [`REACK_PATIENCE`] the
    ///    push proposes, and the gate holds that ack as it holds any.
    /// 3. **Lease**, then 4. **epoch current**, as for a new write. Nothing was written, so a
    ///    failure here is `unavailable`, not `outcome-unknown`.
    ///
    /// The ack book is not touched: the write was acked, or its entry committed, before; the
    /// reported newest ack (a lower bound for loss accounting) stays one that was noted then.
    /// A name held with other bytes answers the conflict at once, from the same read.
    async fn ack_if_present(
        &self,
        g: &TenantGroup,
        rec: &TenantRecord,
        name: &str,
        blake3: &Hash,
        ignore_lease: bool,
    ) -> Result<Option<PushOutcome>, ApiError> {
        let tenant = rec.spec.name.as_str();
        // Most pushes are new: only a name the applied catalog holds is worth a barrier.
        if !g.sm.read().await.state.catalog.segments.contains_key(name) {
            return Ok(None);
        }
        // 1. Held, linearizably.
        g.read_barrier().await?;
        let (existing, applied) = {
            let sm = g.sm.read().await;
            (sm.state.catalog.segments.get(name).cloned(), sm.applied.map_or(0, |a| a.index))
        };
        let Some(existing) = existing else { return Ok(None) };
        if &existing.blake3 != blake3 {
            return Err(ApiError::Conflict {
                name: name.to_string(),
                existing: crate::storage::chunks::hex(&existing.blake3),
                existing_size: existing.size,
            });
        }
        // 2. The lag gate, for everything this replica holds.
        let Some(now_rec) = self.directory.local_record(tenant).await else {
            return Err(ApiError::UnknownTenant(tenant.to_string()));
        };
        if lag_gate::gate_applies(&now_rec) {
            let started = self.clock.mono_now();
            let region = self.directory.region_of(self.me).unwrap_or_default().to_string();
            loop {
                let st = g.status();
                if !st.is_leader {
                    return Ok(None);
                }
                if self.replicated_outside(&st, &region) >= applied {
                    break;
                }
                if self.clock.mono_now().saturating_sub(started) > REACK_PATIENCE {
                    return Ok(None);
                }
                tokio::time::sleep(GATE_POLL).await;
            }
        }
        // 3. The lease; 4. the epoch, on the directory the lease vouches for.
        if !self.liveness.is_valid() && !ignore_lease {
            return Err(ApiError::Unavailable(
                "this node's liveness lease is not valid; it acks nothing until it renews".into(),
            ));
        }
        if !self.directory.epoch_current(tenant, rec.epoch).await && !ignore_lease {
            return Err(ApiError::Unavailable(format!(
                "tenant {tenant}'s epoch {} was sealed or replaced; retry shortly",
                rec.epoch
            )));
        }
        Ok(Some(PushOutcome {
            already_present: true,
            size: existing.size,
            blake3: existing.blake3,
            epoch: rec.epoch,
            term: existing.term,
            index: existing.index,
        }))
    }

    /// The highest log index that the gate counts as durable outside `region`: on two members
    /// there (leader only; the rule is `tetrad_core::lag_gate::replicated_outside`).
    fn replicated_outside(&self, st: &GroupStatus, region: &str) -> u64 {
        // Planted `lag-gate-one-copy`: one copy outside the region counts (the rule before #18).
        let copies =
            if crate::planted::on(crate::planted::Bug::LagGateOneCopy) { 1 } else { lag_gate::GATE_COPIES_OUTSIDE };
        lag_gate::replicated_outside(&st.matched, region, |m| self.directory.region_of(m), copies)
    }

    /// The gate's current exposure for a group this node leads.
    pub(crate) fn exposure_of(&self, g: &Group<TenantState>) -> (Exposure, GroupStatus) {
        let st = g.status();
        let region = self.directory.region_of(self.me).unwrap_or_default().to_string();
        let replicated = self.replicated_outside(&st, &region);
        // Planted `lag-gate-off-by-one`: counts the entry after the replicated one as durable.
        let replicated =
            if crate::planted::on(crate::planted::Bug::LagGateOffByOne) { replicated + 1 } else { replicated };
        let now = self.clock.mono_now();
        let mut books = self.books();
        let book = books.entry(g.name.clone()).or_insert_with(|| AckBook::begin(st.term, st.last_index));
        book.follow_term(st.term, st.last_index);
        (book.exposure(replicated, now), st)
    }

    /// The near-sync lag gate, between the commit and the ack: waits while an acked write has
    /// been exposed (durable only in the primary region) longer than the tenant's RPO target,
    /// or switches the tenant to degraded first (committed in the meta group) when it says
    /// `on_lag = degrade`.
    async fn lag_gate(&self, g: &Group<TenantState>, tenant: &str) -> Result<(), ApiError> {
        let started = self.clock.mono_now();
        loop {
            let Some(rec) = self.directory.local_record(tenant).await else {
                return Err(ApiError::UnknownTenant(tenant.to_string()));
            };
            if !lag_gate::gate_applies(&rec) {
                return Ok(());
            }
            let rpo = Duration::from_millis(rec.spec.rpo_target_ms);
            let (exposure, st) = self.exposure_of(g);
            if !st.is_leader {
                return Err(ApiError::OutcomeUnknown(
                    "the write committed, but this node lost the lead at the lag gate".into(),
                ));
            }
            let verdict = lag_gate::verdict(exposure, rpo, rec.spec.on_lag);
            if verdict == GateVerdict::Open {
                return Ok(());
            }
            if verdict == GateVerdict::Degrade {
                let ev = TenantEvent::new(
                    EventKind::Degraded,
                    self.clock.wall_now_ms(),
                    rec.epoch,
                    rec.epoch,
                    format!("an acked write was not durable outside the primary region within {} ms", rpo.as_millis()),
                );
                let mut next = rec.clone();
                next.state = TState::Degraded;
                match self.directory.update_tenant(&rec, next, Some(ev)).await {
                    Ok(_) => {
                        tracing::warn!(%tenant, "tenant degraded: acking as async until replication catches up");
                        return Ok(());
                    }
                    Err(e) => tracing::debug!(%tenant, error = %e, "degrade did not commit yet"),
                }
            }
            if self.clock.mono_now().saturating_sub(started) > GATE_PATIENCE {
                return Err(ApiError::OutcomeUnknown(format!(
                    "the write committed in the primary region but no other region has made the writes before it durable within {} ms (the lag gate holds the ack)",
                    rpo.as_millis()
                )));
            }
            tokio::time::sleep(GATE_POLL).await;
        }
    }

    /// Records an ack in the leader's book (for the gate and the meta group's loss accounting);
    /// the first ack of a promoted epoch is reported at once (it ends the failover's RTO).
    fn note_ack(&self, g: &Group<TenantState>, rec: &TenantRecord, mark: AckMark) {
        let now = self.clock.mono_now();
        let first = {
            let mut books = self.books();
            let book = books.entry(g.name.clone()).or_insert_with(|| AckBook::begin(mark.term, mark.index - 1));
            book.follow_term(mark.term, mark.index - 1);
            book.acked(mark.index, now, mark);
            let first = !book.first_ack_reported && rec.base.is_some();
            book.first_ack_reported = true;
            first
        };
        if first {
            let directory = Arc::clone(&self.directory);
            let cmd = MetaCommand::FirstAck {
                tenant: rec.spec.name.clone(),
                epoch: rec.epoch,
                at_ms: self.clock.wall_now_ms(),
            };
            tokio::spawn(async move {
                let _ = directory.propose_meta(cmd).await;
            });
        }
    }

    /// Reports each led group's newest ack to the meta group (sent alongside each liveness
    /// renewal). The reports go out together, so they ride in one meta batch: one after another,
    /// each waited for a batch window of its own, and a node leading many tenants spent several
    /// seconds per round (issue #13: at 64 clients the round outlasted the lease).
    pub(crate) async fn report_acks(&self) {
        let due: Vec<(String, AckMark)> = {
            let books = self.books();
            books
                .iter()
                .filter(|(_, b)| b.newest != b.reported)
                .filter_map(|(g, b)| Some((g.clone(), b.newest?)))
                .collect()
        };
        let reports = due.into_iter().filter_map(|(group, mark)| {
            let (tenant, epoch) = parse_group(&group)?;
            let cmd = MetaCommand::ReportAcked { tenant, epoch, mark };
            Some(async move { (group, mark, self.directory.propose_meta(cmd).await.is_ok()) })
        });
        for (group, mark, ok) in futures::future::join_all(reports).await {
            if ok {
                if let Some(b) = self.books().get_mut(&group) {
                    b.reported = Some(mark);
                }
            }
        }
    }

    /// Drops the ack book of a group this node stopped for good.
    pub(crate) fn forget(&self, group: &str) {
        self.books().remove(group);
    }
}

/// What the client is told of an acked write, from the tenant group's reply.
fn outcome_of(reply: crate::raft::Reply, name: &str, epoch: u64) -> Result<PushOutcome, ApiError> {
    match reply {
        crate::raft::Reply::Tenant(TenantReply::Stored { already_present, size, blake3, index, term }) => {
            Ok(PushOutcome { already_present, size, blake3, epoch, term, index })
        }
        crate::raft::Reply::Tenant(TenantReply::Conflict { existing, existing_size }) => Err(ApiError::Conflict {
            name: name.to_string(),
            existing: crate::storage::chunks::hex(&existing),
            existing_size,
        }),
        crate::raft::Reply::Tenant(TenantReply::Invalid { reason }) => Err(ApiError::BadRequest(reason)),
        other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
    }
}
