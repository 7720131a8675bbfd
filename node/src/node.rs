//! A tetrad node: the meta group replica, the tenant groups it hosts, its liveness lease and the
//! loops that keep them in line with the meta directory. The gRPC service (`api.rs`) and the
//! simulator both drive a node through the methods here.
//!
//! This file only wires: it builds the services of `node/` (each owns its state and is handed
//! its collaborators), spawns the loops (`tasks.rs`) and delegates each public method to the
//! service that answers it. Which service owns what: ARCHITECTURE.md, "Node services".

mod controller;
mod directory;
mod dispatch;
mod hosted;
mod operator;
mod reads;
mod reconcile;
mod repair;
mod report_batch;
mod status;
mod takeover;
mod tasks;
mod writes;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;

use self::controller::Controller;
use self::directory::Directory;
use self::hosted::HostedGroups;
use self::operator::Operator;
use self::reads::Reads;
pub use self::reads::{page_limit, SegmentPage, LIST_PAGE_MAX};
use self::reconcile::{Reconcile, ReconcileDeps};
use self::repair::Repair;
use self::status::Status;
use self::writes::Writes;
use crate::config::NodeConfig;
use crate::meta::liveness::Liveness;
use crate::meta::state::{MetaCommand, MetaReply, MetaState, TenantEvent, TenantRecord};
use crate::meta::META_GROUP;
use crate::raft::group::Group;
use crate::raft::peers::PeerBook;
use crate::raft::wire::GroupProbeReply;
use crate::seams::clock::ClockRef;
use crate::seams::disk::DiskRef;
use crate::seams::net::{NodeId, RpcHandler, RpcHandlerRef, TransportRef};
use crate::storage::chunks::Hash;
use crate::storage::store::{Store, StoreError, StoreOptions};
use crate::tenant::catalog::SegmentRecord;

/// How long shutdown waits for one group.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub use crate::api::error::ApiError;
pub use crate::api::status::{ClusterStatus, NodeView, TenantView};
pub use writes::{ChunkStream, PushOutcome, RecordWrite, RefPush, MAX_HASHES_ASKED};

/// What a node needs from the outside world, all through the seams.
#[derive(Clone)]
pub struct NodeDeps {
    pub clock: ClockRef,
    pub disk: DiskRef,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the transport: {0}")]
    Transport(String),
    #[error("cannot start the meta group: {0}")]
    Meta(String),
}

/// The node's services, wired together once at start. Each service owns its state; what they
/// share (the store, the clock, the transport, the meta replica through the directory, the
/// registry of hosted tenant groups) they were handed when they were built.
pub(crate) struct Inner {
    cfg: Arc<NodeConfig>,
    me: NodeId,
    store: Arc<Store>,
    clock: ClockRef,
    liveness: Liveness,
    stop: watch::Sender<bool>,
    hosted: Arc<HostedGroups>,
    directory: Arc<Directory>,
    status: Arc<Status>,
    writes: Arc<Writes>,
    reads: Reads,
    operator: Operator,
    repair: Arc<Repair>,
    reconcile: Arc<Reconcile>,
    controller: Controller,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

/// Routes inbound peer requests to a node once it exists; until then (and after it stopped)
/// every request is refused, which peers treat as the node being unreachable.
struct LateHandler {
    node: Arc<Mutex<Weak<Inner>>>,
    incarnation: u64,
}

impl RpcHandler for LateHandler {
    fn handle(&self, from: NodeId, request: bytes::Bytes) -> futures::future::BoxFuture<'static, bytes::Bytes> {
        let inner = self.node.lock().expect("handler lock").upgrade();
        let incarnation = self.incarnation;
        Box::pin(async move {
            match inner {
                Some(inner) => dispatch::handle(Node { inner }, from, request).await,
                None => bytes::Bytes::from(crate::raft::wire::encode(&crate::raft::wire::ReplyEnvelope {
                    from_incarnation: incarnation,
                    body: crate::raft::wire::Reply::Error(crate::raft::wire::WireError::Failed(
                        "node is starting or stopped".into(),
                    )),
                })),
            }
        })
    }
}

impl Node {
    /// Opens the store, starts the transport (built by `make_transport` around the node's
    /// request handler), the meta group replica and the background loops.
    pub async fn start(
        cfg: NodeConfig,
        deps: NodeDeps,
        make_transport: impl FnOnce(RpcHandlerRef) -> Result<TransportRef, String>,
    ) -> Result<Node, StartError> {
        let me = cfg.me().id;
        let options = StoreOptions { log_file_bytes: cfg.raft.log_file_bytes };
        let store = Store::open_with(deps.disk.clone(), &cfg.data_dir, &cfg.name, &options)?;
        crate::raft::log_store::apply_purge_markers(&store)?;
        let slot = Arc::new(Mutex::new(Weak::new()));
        let transport = make_transport(Arc::new(LateHandler { node: slot.clone(), incarnation: store.incarnation() }))
            .map_err(StartError::Transport)?;
        let peers = PeerBook::default();
        let meta = Arc::new(
            Group::<MetaState>::start(META_GROUP, store.clone(), transport.clone(), &cfg.raft, me, peers.clone())
                .await
                .map_err(|e| StartError::Meta(e.to_string()))?,
        );
        let cfg = Arc::new(cfg);
        let clock = deps.clock;
        let liveness = Liveness::new(clock.clone(), cfg.liveness.period());
        let (stop, _) = watch::channel(false);
        let started = clock.mono_now();
        let hosted = Arc::new(HostedGroups::default());
        let directory = Arc::new(Directory::new(
            me,
            cfg.clone(),
            meta,
            store.incarnation(),
            transport.clone(),
            peers.clone(),
            clock.clone(),
        ));
        let status = Arc::new(Status::new(me, cfg.clone(), clock.clone(), directory.clone(), hosted.clone()));
        let repair = Arc::new(Repair::new(
            me,
            cfg.clone(),
            store.clone(),
            transport.clone(),
            peers.clone(),
            directory.clone(),
            hosted.clone(),
        ));
        let writes = Arc::new(Writes::new(
            me,
            clock.clone(),
            liveness.clone(),
            directory.clone(),
            status.clone(),
            hosted.clone(),
            repair.clone(),
        ));
        let reads = Reads::new(directory.clone(), status.clone(), hosted.clone());
        let operator = Operator::new(cfg.clone(), clock.clone(), directory.clone(), status.clone());
        let reconcile = Arc::new(Reconcile::new(ReconcileDeps {
            me,
            cfg: cfg.clone(),
            clock: clock.clone(),
            store: store.clone(),
            transport,
            peers,
            liveness: liveness.clone(),
            started,
            directory: directory.clone(),
            writes: writes.clone(),
            repair: repair.clone(),
            hosted: hosted.clone(),
        }));
        let controller = Controller::new(me, cfg.clone(), clock.clone(), directory.clone(), reconcile.clone());
        let inner = Arc::new(Inner {
            cfg,
            me,
            store,
            clock,
            liveness,
            stop,
            hosted,
            directory,
            status,
            writes,
            reads,
            operator,
            repair,
            reconcile,
            controller,
        });
        *slot.lock().expect("handler lock") = Arc::downgrade(&inner);
        let node = Node { inner };
        tasks::spawn_all(&node);
        tracing::info!(node = %node.inner.cfg.name, id = me, incarnation = format!("{:016x}", node.inner.store.incarnation()), "node started");
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.me
    }

    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.cfg
    }

    /// Whether the node's liveness lease is valid now.
    pub fn is_live(&self) -> bool {
        self.inner.liveness.is_valid()
    }

    /// Stops every loop and group. Used for orderly shutdown and by the simulator's crashes.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let groups = self.inner.hosted.all();
        // A group whose core is wedged (its disk died under it, say) must not hold the node's
        // shutdown forever: give each a bounded time.
        for g in groups {
            if tokio::time::timeout(SHUTDOWN_GRACE, g.shutdown()).await.is_err() {
                tracing::warn!(node = %self.name(), group = %g.name, "group did not shut down in time; abandoning it");
            }
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, self.inner.directory.meta().shutdown()).await.is_err() {
            tracing::warn!(node = %self.name(), "meta group did not shut down in time; abandoning it");
        }
    }

    pub fn api_addr_of(&self, id: NodeId) -> Option<std::net::SocketAddr> {
        self.inner.cfg.nodes.iter().find(|p| p.id == id).map(|p| p.api_addr)
    }

    // What clients and operators ask of a node: thin delegations to the service that answers.

    /// Proposes a meta command through whichever node leads the meta group.
    pub async fn propose_meta(&self, cmd: MetaCommand) -> Result<MetaReply, ApiError> {
        self.inner.directory.propose_meta(cmd).await
    }

    /// Like [`Node::propose_meta`], with the meta log index the command committed at (0 when
    /// the answer carries none: a refusal by a peer).
    pub async fn propose_meta_at(&self, cmd: MetaCommand) -> Result<(MetaReply, u64), ApiError> {
        self.inner.directory.propose_meta_at(cmd).await
    }

    /// Bootstraps the meta group. Only a meta voter can; idempotent.
    pub async fn init_cluster(&self) -> Result<bool, ApiError> {
        self.inner.directory.init_cluster().await
    }

    pub fn meta_leader(&self) -> Option<NodeId> {
        self.inner.directory.meta_leader()
    }

    /// A tenant's record, confirmed with the meta leader when this node's replica lacks it.
    pub async fn tenant_record(&self, name: &str) -> Result<TenantRecord, ApiError> {
        self.inner.directory.tenant_record(name).await
    }

    pub async fn tenant_records(&self) -> Vec<TenantRecord> {
        self.inner.directory.tenant_records().await
    }

    pub async fn create_tenant(
        &self,
        name: &str,
        mode: &str,
        primary: Option<&str>,
        rpo_target_ms: u64,
        on_lag: &str,
        regions: &[String],
    ) -> Result<TenantRecord, ApiError> {
        self.inner.operator.create_tenant(name, mode, primary, rpo_target_ms, on_lag, regions).await
    }

    /// Stores one WAL segment; the ack sequence is `Writes::commit_and_ack` (`node/writes.rs`).
    pub async fn push(&self, tenant: &str, name: &str, blake3: Hash, data: Vec<u8>) -> Result<PushOutcome, ApiError> {
        self.inner.writes.push(tenant, name, blake3, data).await
    }

    /// Stores one segment pushed by reference: its chunk list first, then the bytes of the chunks
    /// the tenant lacks (`Writes::push_chunked`, same ack as [`Node::push`]).
    pub async fn push_chunked(&self, tenant: &str, push: RefPush, body: ChunkStream) -> Result<PushOutcome, ApiError> {
        self.inner.writes.push_chunked(tenant, push, body).await
    }

    /// Which of `hashes` tenant `tenant` does not hold (their positions in `hashes`): the chunks
    /// a push by reference must send.
    pub async fn missing_chunks(&self, tenant: &str, hashes: &[Hash]) -> Result<Vec<u32>, ApiError> {
        self.inner.writes.missing_chunks(tenant, hashes).await
    }

    /// Looks a segment up (linearizable).
    pub async fn segment(&self, tenant: &str, name: &str) -> Result<SegmentRecord, ApiError> {
        self.inner.reads.segment(tenant, name).await
    }

    /// Reads one chunk of a tenant's segment, verified (and repaired first when damaged).
    pub async fn read_chunk(&self, tenant: &str, hash: &Hash) -> Result<Vec<u8>, ApiError> {
        self.inner.reads.read_chunk(tenant, hash).await
    }

    /// Reads a whole segment (linearizable), verifying every chunk and the whole.
    pub async fn fetch(&self, tenant: &str, name: &str) -> Result<(SegmentRecord, Vec<u8>), ApiError> {
        self.inner.reads.fetch(tenant, name).await
    }

    /// Lists a tenant's segments (linearizable).
    pub async fn list(&self, tenant: &str, prefix: &str) -> Result<Vec<SegmentRecord>, ApiError> {
        self.inner.reads.list(tenant, prefix).await
    }

    /// One page of a tenant's segments after `after` (linearizable), at most `limit`.
    pub async fn list_page(
        &self,
        tenant: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<SegmentPage, ApiError> {
        self.inner.reads.list_page(tenant, prefix, after, limit).await
    }

    /// Applies one record write (puts and deletes, all or nothing), acked as a push is; answers
    /// the group's reply and the epoch it was acked in.
    pub async fn records(
        &self,
        tenant: &str,
        ops: Vec<tetrad_core::records::RecordOp>,
    ) -> Result<RecordWrite, ApiError> {
        self.inner.writes.records(tenant, ops).await
    }

    /// Looks a record up (linearizable).
    pub async fn record(&self, tenant: &str, key: &str) -> Result<tetrad_core::records::RecordRow, ApiError> {
        self.inner.reads.record(tenant, key).await
    }

    /// One page of a tenant's records (linearizable), at most `limit`.
    pub async fn record_page(
        &self,
        tenant: &str,
        prefix: &str,
        after: &str,
        limit: usize,
        with_values: bool,
    ) -> Result<crate::node::reads::RecordPage, ApiError> {
        self.inner.reads.record_page(tenant, prefix, after, limit, with_values).await
    }

    /// What this node knows of a group it hosts (with lag per region if it leads).
    pub async fn probe_local(&self, group: &str) -> Option<GroupProbeReply> {
        self.inner.status.probe_local(group).await
    }

    pub async fn status(&self) -> ClusterStatus {
        self.inner.status.status().await
    }

    /// A digest of this replica's applied catalog for `group`: (applied index, segments, hash).
    pub async fn replica_digest(&self, group: &str) -> Option<(u64, u64, [u8; 32])> {
        self.inner.status.replica_digest(group).await
    }

    /// For every tenant group this node leads: each member's matched log index.
    pub fn led_group_matched(&self) -> Vec<(String, BTreeMap<NodeId, Option<u64>>)> {
        self.inner.status.led_group_matched()
    }

    /// (term, leader) of every group this node runs, for the one-leader-per-term oracle.
    pub fn group_leaders(&self) -> Vec<(String, u64, Option<NodeId>)> {
        self.inner.status.group_leaders()
    }

    /// Chunks this node repaired from peers since its tenant groups started here.
    /// One batch of `tetradctl verify` on `member`: its counts and the next batch's cursor
    /// (`None`: the member is done). An error: the member did not answer (after a retry).
    pub async fn verify_batch(
        &self,
        member: crate::seams::net::NodeId,
        group: &str,
        after: Option<String>,
        max_bytes: u64,
    ) -> Result<(crate::raft::wire::VerifyCounts, Option<String>), String> {
        self.inner.repair.verify_batch_on(member, group, after, max_bytes).await
    }

    pub async fn chunk_repairs(&self) -> u64 {
        self.inner.repair.chunk_repairs().await
    }

    /// Every recorded event of a tenant, oldest first (read on the meta leader).
    pub async fn tenant_history(&self, tenant: &str) -> Result<Vec<TenantEvent>, ApiError> {
        self.inner.operator.tenant_history(tenant).await
    }

    /// Changes a live tenant's mode (and its near-sync parameters).
    pub async fn set_mode(
        &self,
        tenant: &str,
        mode: &str,
        rpo_target_ms: Option<u64>,
        on_lag: Option<&str>,
    ) -> Result<TenantRecord, ApiError> {
        self.inner.operator.set_mode(tenant, mode, rpo_target_ms, on_lag).await
    }

    /// Planned switchover of a tenant's primary region, with zero loss.
    pub async fn switchover(&self, tenant: &str, to_region: &str) -> Result<TenantEvent, ApiError> {
        self.inner.operator.switchover(tenant, to_region).await
    }

    /// Manual failover to `to_region`; refused without `accept_data_loss`.
    pub async fn manual_failover(
        &self,
        tenant: &str,
        to_region: &str,
        accept_data_loss: bool,
    ) -> Result<TenantEvent, ApiError> {
        self.inner.operator.manual_failover(tenant, to_region, accept_data_loss).await
    }

    /// Wall-clock ms on this node's clock.
    pub fn wall_now_ms(&self) -> u64 {
        self.inner.clock.wall_now_ms()
    }

    /// The audit log's entries about `tenant` (or all) since `since_ms`, at most `limit`, and the
    /// count retention dropped.
    pub async fn audit_log(
        &self,
        tenant: Option<&str>,
        since_ms: u64,
        limit: usize,
    ) -> (Vec<(u64, crate::meta::state::AuditEntry)>, u64) {
        self.inner.operator.audit_log(tenant, since_ms, limit).await
    }
}
