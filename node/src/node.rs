//! A tetrad node: the meta group replica, the tenant groups it hosts, its liveness lease and the
//! loops that keep them in line with the meta directory. The gRPC service (`api.rs`) and the
//! simulator both drive a node through the methods here.

mod controller;
mod dispatch;
mod epochs;
mod failover;
mod ops;
mod repair;
mod report_batch;
mod takeover;
mod tasks;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::meta::liveness::Liveness;
use crate::meta::state::MetaState;
use crate::meta::META_GROUP;
use crate::raft::group::Group;
use crate::raft::peers::PeerBook;
use crate::seams::clock::ClockRef;
use crate::seams::disk::DiskRef;
use crate::seams::net::{NodeId, RpcHandler, RpcHandlerRef, TransportRef};
use crate::storage::store::{Store, StoreError, StoreOptions};
use crate::tenant::group_state::TenantState;

/// How long shutdown waits for one group.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub use ops::{ApiError, ClusterStatus, NodeView, PushOutcome, TenantView};

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

pub(crate) struct Inner {
    pub cfg: NodeConfig,
    pub me: NodeId,
    pub store: Arc<Store>,
    pub clock: ClockRef,
    pub transport: TransportRef,
    pub liveness: Liveness,
    pub meta: Group<MetaState>,
    pub meta_voters: Vec<NodeId>,
    /// Running tenant groups by group name (`t/<tenant>/<epoch>`).
    pub tenants: Mutex<BTreeMap<String, Arc<Group<TenantState>>>>,
    /// Why the meta group refused this node's heartbeats, if it did.
    pub refused: Mutex<Option<String>>,
    /// The directory's storage incarnation of every peer; replies from any other are ignored.
    pub peers: PeerBook,
    /// Tenant groups this node stopped because their epoch was sealed or superseded; never
    /// restarted (their rows and log stay, as the divergent tail's record).
    pub sealed: Mutex<std::collections::BTreeSet<String>>,
    /// Per tenant group this node leads: the lag gate's acked writes and the newest ack.
    pub acks: Mutex<BTreeMap<String, epochs::AckBook>>,
    /// The failover controller's view, while this node leads the meta group.
    pub controller: Mutex<controller::Observations>,
    pub stop: watch::Sender<bool>,
    /// Monotonic time the node started.
    pub started: std::time::Duration,
    /// Per group this node leads: the term and the monotonic time it was first seen leading in
    /// it (see `Node::led_for`).
    pub leading_since: Mutex<std::collections::HashMap<String, (u64, std::time::Duration)>>,
    /// Reports waiting for the next meta batch while this node leads the meta group.
    pub reports: report_batch::ReportBatcher,
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
        let meta =
            Group::<MetaState>::start(META_GROUP, store.clone(), transport.clone(), &cfg.raft, me, peers.clone())
                .await
                .map_err(|e| StartError::Meta(e.to_string()))?;
        let meta_voters =
            cfg.meta_voters.iter().filter_map(|n| cfg.nodes.iter().find(|p| &p.name == n).map(|p| p.id)).collect();
        let liveness = Liveness::new(deps.clock.clone(), cfg.liveness.period());
        let (stop, _) = watch::channel(false);
        let started = deps.clock.mono_now();
        let inner = Arc::new(Inner {
            me,
            store,
            clock: deps.clock,
            transport,
            liveness,
            meta,
            meta_voters,
            tenants: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(None),
            peers,
            sealed: Mutex::new(Default::default()),
            acks: Mutex::new(BTreeMap::new()),
            controller: Mutex::new(Default::default()),
            started,
            leading_since: Mutex::new(Default::default()),
            reports: Default::default(),
            stop,
            cfg,
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
        let groups: Vec<_> = self.inner.tenants.lock().expect("tenants lock").values().cloned().collect();
        // A group whose core is wedged (its disk died under it, say) must not hold the node's
        // shutdown forever: give each a bounded time.
        for g in groups {
            if tokio::time::timeout(SHUTDOWN_GRACE, g.shutdown()).await.is_err() {
                tracing::warn!(node = %self.name(), group = %g.name, "group did not shut down in time; abandoning it");
            }
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, self.inner.meta.shutdown()).await.is_err() {
            tracing::warn!(node = %self.name(), "meta group did not shut down in time; abandoning it");
        }
    }

    pub(crate) fn region_of(&self, id: NodeId) -> Option<&str> {
        self.inner.cfg.nodes.iter().find(|p| p.id == id).map(|p| p.region.as_str())
    }

    pub fn api_addr_of(&self, id: NodeId) -> Option<std::net::SocketAddr> {
        self.inner.cfg.nodes.iter().find(|p| p.id == id).map(|p| p.api_addr)
    }

    pub(crate) fn tenant_group(&self, group: &str) -> Option<Arc<Group<TenantState>>> {
        self.inner.tenants.lock().expect("tenants lock").get(group).cloned()
    }
}
