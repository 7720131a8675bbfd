//! The production transport: node-to-node requests over QUIC with mutual TLS.
//!
//! [`QuicTransport`] owns one quinn endpoint, bound to one UDP address, that both dials peers and
//! accepts them. It implements the network seam ([`Transport`]) for outgoing requests and serves
//! incoming ones with an [`RpcHandler`].
//!
//! Wire format: every request gets its own bidirectional stream, so a heartbeat never waits behind
//! a snapshot. The caller writes one frame (a big-endian `u32` length, then that many bytes) and
//! finishes its side; the callee writes one frame back and finishes. A callee that cannot answer
//! resets the stream with one of the `RESET_*` codes. A call completes only when the reply frame
//! has arrived in full, never on a transport acknowledgement.
//!
//! Connections: one outgoing connection per peer, opened on the first call, shared by all calls,
//! and replaced by the next call once it has closed (peer restart, idle timeout after a partition).
//! Each peer also dials us, so a pair of nodes holds two connections, one per direction; that keeps
//! "who dialled" out of the question of whom a connection belongs to.
//!
//! Identity: dialling, rustls checks that the server's certificate names the peer we meant to
//! reach. Accepting, we read the DNS names of the client's (CA-verified) certificate and look them
//! up in the peer table; the certificate must also carry the node role for that peer's id and
//! name (`tetrad_config::role`), so a client certificate is never taken for a node. A connection
//! whose certificate names no peer, or more than one, or lacks the node role, is closed with
//! [`CLOSE_PEER_REJECTED`] before any of its streams is read. See `crate::tls`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::rustls::pki_types::CertificateDer;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{
    AsyncUdpSocket, Connection, ConnectionError, Endpoint, EndpointConfig, IdleTimeout, Incoming, ReadError,
    ReadExactError, RecvStream, SendStream, TransportConfig, UdpPoller, VarInt, WriteError,
};
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tracing::{debug, error, warn};

use crate::seams::net::{NetError, NodeId, RpcHandlerRef, Transport, MAX_MESSAGE_BYTES};
use crate::tls::{self, Role, TlsError};

/// Streams one peer may have open towards us at once; quinn withholds further stream credit, so
/// this also bounds the handler tasks per connection.
const MAX_CONCURRENT_STREAMS_PER_CONNECTION: u32 = 1024;
/// Inbound connections, authenticated or still handshaking, beyond which new ones are refused.
const MAX_INBOUND_CONNECTIONS: usize = 256;
/// Flow-control windows sized so that a 16 MiB append or a snapshot chunk flows at line rate on a
/// cross-region path (16 MiB at 150 ms is about 100 MiB/s per stream) and in one go on loopback.
const STREAM_RECEIVE_WINDOW_BYTES: u32 = 16 << 20;
const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 64 << 20;
const CONNECTION_SEND_WINDOW_BYTES: u64 = 64 << 20;
/// Keep-alives make a silent peer's connection time out after the idle timeout instead of
/// lingering, so the next call redials.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT_MS: u32 = 10_000;
/// What a message buffer starts at; it grows with the bytes that actually arrive, so a peer's
/// length header alone cannot make us allocate a gigabyte.
const READ_BUFFER_INITIAL_BYTES: usize = 1 << 20;
/// How long `shutdown` waits for connections to close and the socket to be released. A connection
/// whose handshake was aborted can linger until the idle timeout, so this waits a little longer.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(IDLE_TIMEOUT_MS as u64 + 2_000);

const FRAME_HEADER_BYTES: usize = 4;
const _: () = assert!(MAX_MESSAGE_BYTES <= u32::MAX as usize, "the frame header is a u32");

/// Connection close code: this endpoint is shutting down.
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
/// Connection close code: the peer's certificate names no node in our peer table (or several).
pub const CLOSE_PEER_REJECTED: VarInt = VarInt::from_u32(1);
/// Stream reset code: the request frame was malformed, truncated or over the size limit.
pub const RESET_BAD_REQUEST: VarInt = VarInt::from_u32(1);
/// Stream reset code: the handler's reply was over the size limit.
pub const RESET_REPLY_TOO_LARGE: VarInt = VarInt::from_u32(2);

/// Where a peer is and the name its certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub name: String,
    pub addr: SocketAddr,
}

#[derive(Clone)]
pub struct QuicConfig {
    pub node_id: NodeId,
    /// The one address the endpoint binds, for both accepting and dialling.
    pub listen: SocketAddr,
    /// Every node this one may call or accept calls from, by id.
    pub peers: BTreeMap<NodeId, PeerAddr>,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

// The key must never reach a log line through `{:?}`.
impl fmt::Debug for QuicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicConfig")
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the TLS configuration cannot be used for QUIC: {0}")]
    QuicCrypto(String),
    #[error("peer {node}: {source}")]
    PeerName {
        node: NodeId,
        #[source]
        source: TlsError,
    },
    #[error("peers {first} and {second} are both named {name:?}; a name must identify one node")]
    DuplicatePeerName { name: String, first: NodeId, second: NodeId },
    #[error("the QUIC transport must be started inside a Tokio runtime")]
    NoRuntime,
    #[error("could not bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// The QUIC transport of one node. Dropping it stops it abruptly; [`QuicTransport::shutdown`]
/// stops it cleanly.
pub struct QuicTransport {
    shared: Arc<Shared>,
    inbound: Arc<Inbound>,
    local_addr: SocketAddr,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    socket_released: Mutex<Option<oneshot::Receiver<()>>>,
}

/// What outgoing calls need; each call's future holds it.
struct Shared {
    node_id: NodeId,
    /// `None` once shut down. Calls clone the endpoint only while dialling, so that after shutdown
    /// nothing but quinn's own tasks keeps the socket open.
    endpoint: Mutex<Option<Endpoint>>,
    peers: BTreeMap<NodeId, Peer>,
}

struct Peer {
    name: String,
    addr: SocketAddr,
    /// The cached outgoing connection. Held across dialling so that concurrent first calls share
    /// one handshake instead of racing to open one connection each.
    connection: tokio::sync::Mutex<Option<Connection>>,
}

/// What the accept side needs.
struct Inbound {
    node_id: NodeId,
    peers_by_name: BTreeMap<String, NodeId>,
    handler: RpcHandlerRef,
    /// Connections whose certificate was accepted, since bind. For operators and tests.
    connections_accepted: AtomicU64,
}

impl QuicTransport {
    /// Binds `cfg.listen` and starts accepting. Must run inside a Tokio runtime.
    pub fn bind(cfg: QuicConfig, handler: RpcHandlerRef) -> Result<Arc<QuicTransport>, QuicError> {
        let socket =
            std::net::UdpSocket::bind(cfg.listen).map_err(|source| QuicError::Bind { addr: cfg.listen, source })?;
        Self::with_socket(cfg, socket, handler)
    }

    /// Like [`QuicTransport::bind`] on an already bound socket (`cfg.listen` is not used), so that
    /// tests can learn every node's port before any transport starts.
    fn with_socket(
        cfg: QuicConfig,
        socket: std::net::UdpSocket,
        handler: RpcHandlerRef,
    ) -> Result<Arc<QuicTransport>, QuicError> {
        tokio::runtime::Handle::try_current().map_err(|_| QuicError::NoRuntime)?;
        let bind_error = |source| QuicError::Bind { addr: cfg.listen, source };

        let mut peers_by_name = BTreeMap::new();
        for (&node, peer) in &cfg.peers {
            tls::validate_node_name(&peer.name).map_err(|source| QuicError::PeerName { node, source })?;
            if let Some(first) = peers_by_name.insert(peer.name.clone(), node) {
                return Err(QuicError::DuplicatePeerName { name: peer.name.clone(), first, second: node });
            }
        }

        let transport = Arc::new(transport_config());
        let server_tls = tls::server_config(&cfg.ca_pem, &cfg.cert_pem, &cfg.key_pem)?;
        let server_tls = QuicServerConfig::try_from(server_tls).map_err(|e| QuicError::QuicCrypto(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(transport.clone());
        let client_tls = tls::client_config(&cfg.ca_pem, &cfg.cert_pem, &cfg.key_pem)?;
        let client_tls = QuicClientConfig::try_from(client_tls).map_err(|e| QuicError::QuicCrypto(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
        client.transport_config(transport);

        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let (released_tx, released_rx) = oneshot::channel();
        let socket = Arc::new(ReleaseNotifyingSocket {
            inner: runtime.wrap_udp_socket(socket).map_err(bind_error)?,
            _released: ReleaseSignal(Some(released_tx)),
        });
        let mut endpoint = Endpoint::new_with_abstract_socket(EndpointConfig::default(), Some(server), socket, runtime)
            .map_err(bind_error)?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint.local_addr().map_err(bind_error)?;

        let inbound =
            Arc::new(Inbound { node_id: cfg.node_id, peers_by_name, handler, connections_accepted: AtomicU64::new(0) });
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), inbound.clone()));
        let peers = cfg
            .peers
            .into_iter()
            .map(|(node, peer)| {
                (node, Peer { name: peer.name, addr: peer.addr, connection: tokio::sync::Mutex::new(None) })
            })
            .collect();
        Ok(Arc::new(QuicTransport {
            shared: Arc::new(Shared { node_id: cfg.node_id, endpoint: Mutex::new(Some(endpoint)), peers }),
            inbound,
            local_addr,
            accept_task: Mutex::new(Some(accept_task)),
            socket_released: Mutex::new(Some(released_rx)),
        }))
    }

    /// The address actually bound (the port chosen when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Inbound connections accepted since bind (their certificates named a peer).
    pub fn connections_accepted(&self) -> u64 {
        self.inbound.connections_accepted.load(Ordering::Relaxed)
    }

    /// Closes every connection, stops serving, and returns once the UDP port is free again (or
    /// after a bounded wait). Calls made afterwards fail with `NetError::Unreachable`.
    pub async fn shutdown(&self) {
        let Some(endpoint) = lock(&self.shared.endpoint).take() else {
            return;
        };
        debug!(node = self.shared.node_id, "QUIC transport shutting down");
        endpoint.close(CLOSE_SHUTDOWN, b"node shutting down");
        let accept_task = lock(&self.accept_task).take();
        let released = lock(&self.socket_released).take();
        let wind_down = async {
            if let Some(task) = accept_task {
                log_task_end(task.await);
            }
            // Lets the close frames reach the peers, so they redial at once instead of waiting
            // out the idle timeout.
            endpoint.wait_idle().await;
            // Only now: dropping the last handle of a connection that has not yet seen the close
            // would close it without a reason.
            for peer in self.shared.peers.values() {
                peer.connection.lock().await.take();
            }
            drop(endpoint);
            if let Some(released) = released {
                // An error only means the sender was dropped, which is the release itself.
                let _ = released.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_WAIT, wind_down).await.is_err() {
            warn!(node = self.shared.node_id, "QUIC transport did not wind down within {SHUTDOWN_WAIT:?}");
        }
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        if let Some(endpoint) = lock(&self.shared.endpoint).take() {
            endpoint.close(CLOSE_SHUTDOWN, b"node shutting down");
        }
        if let Some(task) = lock(&self.accept_task).take() {
            task.abort();
        }
    }
}

impl Transport for QuicTransport {
    fn call(&self, to: NodeId, request: Bytes, timeout: Duration) -> BoxFuture<'static, Result<Bytes, NetError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            if request.len() > MAX_MESSAGE_BYTES {
                return Err(NetError::TooLarge(request.len()));
            }
            match tokio::time::timeout(timeout, shared.call(to, request)).await {
                Ok(result) => result,
                Err(_elapsed) => Err(NetError::Timeout(to, timeout)),
            }
        })
    }
}

impl Shared {
    async fn call(&self, to: NodeId, request: Bytes) -> Result<Bytes, NetError> {
        let peer = self.peers.get(&to).ok_or(NetError::UnknownNode(to))?;
        let (mut send, mut recv) = self.open_stream(to, peer).await?;
        write_frame(&mut send, request).await.map_err(|e| write_failed(to, e))?;
        send.finish().map_err(|e| NetError::Closed(to, format!("finishing the request: {e}")))?;
        read_frame(&mut recv).await.map_err(|e| reply_failed(to, e))
    }

    async fn open_stream(&self, to: NodeId, peer: &Peer) -> Result<(SendStream, RecvStream), NetError> {
        let connection = self.connection(to, peer).await?;
        match connection.open_bi().await {
            Ok(streams) => Ok(streams),
            // Opening fails only on a connection that has already closed, before anything was
            // sent, so one retry on a fresh connection cannot deliver the request twice.
            Err(stale) => {
                debug!(node = self.node_id, peer = to, error = %stale, "cached connection was closed; redialling");
                let connection = self.connection(to, peer).await?;
                connection.open_bi().await.map_err(|e| connection_lost(to, "opening a stream", &e))
            }
        }
    }

    /// The cached connection to `peer`, or a new one if there is none or it has closed.
    async fn connection(&self, to: NodeId, peer: &Peer) -> Result<Connection, NetError> {
        let mut cached = peer.connection.lock().await;
        if let Some(connection) = cached.as_ref() {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        *cached = None;
        let endpoint = lock(&self.endpoint)
            .clone()
            .ok_or_else(|| NetError::Unreachable(to, "this node's transport is shut down".to_owned()))?;
        let unreachable = |e: &dyn fmt::Display| {
            NetError::Unreachable(to, format!("could not connect to {} at {}: {e}", peer.name, peer.addr))
        };
        let connecting = endpoint.connect(peer.addr, &peer.name).map_err(|e| unreachable(&e))?;
        drop(endpoint);
        let connection = connecting.await.map_err(|e| unreachable(&e))?;
        debug!(node = self.node_id, peer = to, "connected");
        *cached = Some(connection.clone());
        Ok(connection)
    }
}

async fn accept_loop(endpoint: Endpoint, inbound: Arc<Inbound>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                // `None` once the endpoint is closed.
                let Some(incoming) = incoming else { break };
                if connections.len() >= MAX_INBOUND_CONNECTIONS {
                    warn!(node = inbound.node_id, remote = %incoming.remote_address(),
                        "refusing connection: {MAX_INBOUND_CONNECTIONS} inbound connections already open");
                    incoming.refuse();
                    continue;
                }
                connections.spawn(serve_connection(incoming, inbound.clone()));
            }
            Some(joined) = connections.join_next(), if !connections.is_empty() => log_task_end(joined),
        }
    }
    drop(endpoint);
    // Closing the endpoint closed every connection, so these tasks are ending.
    while let Some(joined) = connections.join_next().await {
        log_task_end(joined);
    }
}

async fn serve_connection(incoming: Incoming, inbound: Arc<Inbound>) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(e) => {
            debug!(node = inbound.node_id, %remote, error = %e, "inbound handshake failed");
            return;
        }
    };
    let from = match identify(&connection, &inbound.peers_by_name) {
        Ok(from) => from,
        Err(reason) => {
            warn!(node = inbound.node_id, %remote, %reason, "rejecting inbound connection");
            connection.close(CLOSE_PEER_REJECTED, reason.as_bytes());
            return;
        }
    };
    inbound.connections_accepted.fetch_add(1, Ordering::Relaxed);
    debug!(node = inbound.node_id, peer = from, %remote, "accepted connection");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(serve_stream(from, send, recv, inbound.handler.clone()));
                }
                Err(e) => {
                    debug!(node = inbound.node_id, peer = from, error = %e, "inbound connection ended");
                    break;
                }
            },
            Some(joined) = streams.join_next(), if !streams.is_empty() => log_task_end(joined),
        }
    }
    // The connection is gone, so no reply can be delivered: stop the handlers still running.
    streams.shutdown().await;
}

/// The node whose certificate the connection presented: the one peer named among the
/// certificate's DNS names. rustls has already checked that the CA issued it.
fn identify(connection: &Connection, peers_by_name: &BTreeMap<String, NodeId>) -> Result<NodeId, String> {
    let identity = connection.peer_identity().ok_or("no client certificate was presented")?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "the TLS layer reported an identity that is not a certificate chain")?;
    let leaf = chain.first().ok_or("the client certificate chain is empty")?;
    let names = tls::cert_dns_names(leaf).map_err(|e| e.to_string())?;
    let nodes: BTreeSet<NodeId> = names.iter().filter_map(|name| peers_by_name.get(name).copied()).collect();
    let mut nodes = nodes.into_iter();
    let node = match (nodes.next(), nodes.next()) {
        (Some(node), None) => node,
        (None, _) => return Err(format!("the certificate names {names:?}, none of which is a peer")),
        (Some(_), Some(_)) => return Err(format!("the certificate names {names:?}, more than one peer")),
    };
    // The name alone is not enough: a client certificate (tetradctl's, a tenant's) must never
    // pass for a node, so the certificate must carry the node role, bound to this node's id and
    // name. The region in the role is not checked here: the peer table does not hold regions.
    match tls::cert_role(leaf) {
        Ok(Some(Role::Node { id, name, .. })) if id == node && peers_by_name.get(&name) == Some(&node) => Ok(node),
        Ok(Some(role)) => Err(format!("the certificate names {names:?} but carries role {role}, not node {node}'s")),
        Ok(None) => Err(format!("the certificate names {names:?} but carries no node role")),
        Err(e) => Err(format!("the certificate names {names:?} but its role is unreadable: {e}")),
    }
}

async fn serve_stream(from: NodeId, mut send: SendStream, mut recv: RecvStream, handler: RpcHandlerRef) {
    let request = match read_request(&mut recv).await {
        Ok(request) => request,
        Err(reason) => {
            debug!(peer = from, %reason, "bad request stream");
            let _ = send.reset(RESET_BAD_REQUEST);
            let _ = recv.stop(RESET_BAD_REQUEST);
            return;
        }
    };
    drop(recv);
    let reply = handler.handle(from, request).await;
    if reply.len() > MAX_MESSAGE_BYTES {
        error!(peer = from, len = reply.len(), "handler reply exceeds {MAX_MESSAGE_BYTES} bytes; resetting the stream");
        let _ = send.reset(RESET_REPLY_TOO_LARGE);
        return;
    }
    if let Err(e) = write_frame(&mut send, reply).await {
        // The caller gave up (timeout) or the connection closed; it will hear of neither.
        debug!(peer = from, error = %e, "could not send reply");
        return;
    }
    // Fails only if the caller already stopped the stream, and then there is nobody to tell.
    let _ = send.finish();
}

/// Reads the request frame and checks that the caller finished the stream right after it.
async fn read_request(recv: &mut RecvStream) -> Result<Bytes, String> {
    let request = read_frame(recv).await.map_err(|e| e.to_string())?;
    match recv.read_chunk(1, true).await {
        Ok(None) => Ok(request),
        Ok(Some(_)) => Err("bytes follow the request frame".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes one frame without copying `message`: quinn sends from the `Bytes` in place, in pieces
/// as flow control allows.
async fn write_frame(send: &mut SendStream, message: Bytes) -> Result<(), WriteError> {
    let len = u32::try_from(message.len()).expect("callers check messages against MAX_MESSAGE_BYTES");
    let header = Bytes::copy_from_slice(&len.to_be_bytes());
    send.write_all_chunks(&mut [header, message]).await
}

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("the frame claims {0} bytes, over the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("the stream ended after {received} of {expected} bytes")]
    Truncated { expected: usize, received: usize },
    #[error(transparent)]
    Read(#[from] ReadError),
}

async fn read_frame(recv: &mut RecvStream) -> Result<Bytes, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    recv.read_exact(&mut header).await.map_err(|e| match e {
        ReadExactError::FinishedEarly(received) => FrameError::Truncated { expected: FRAME_HEADER_BYTES, received },
        ReadExactError::ReadError(e) => FrameError::Read(e),
    })?;
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if len > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut message = BytesMut::new();
    while message.len() < len {
        let Some(chunk) = recv.read_chunk(len - message.len(), true).await? else {
            return Err(FrameError::Truncated { expected: len, received: message.len() });
        };
        if message.is_empty() && chunk.bytes.len() == len {
            // The whole message arrived in one piece (most small messages): no copy at all.
            return Ok(chunk.bytes);
        }
        if message.capacity() == 0 {
            message.reserve(len.min(READ_BUFFER_INITIAL_BYTES));
        }
        message.extend_from_slice(&chunk.bytes);
    }
    Ok(message.freeze())
}

fn write_failed(to: NodeId, e: WriteError) -> NetError {
    match e {
        WriteError::ConnectionLost(e) => connection_lost(to, "sending the request", &e),
        WriteError::Stopped(code) => {
            NetError::Closed(to, format!("it stopped reading the request ({})", reset_meaning(code)))
        }
        other => NetError::Closed(to, format!("sending the request: {other}")),
    }
}

fn reply_failed(to: NodeId, e: FrameError) -> NetError {
    match e {
        FrameError::Read(ReadError::ConnectionLost(e)) => connection_lost(to, "waiting for the reply", &e),
        FrameError::Read(ReadError::Reset(code)) => {
            NetError::Closed(to, format!("it reset the stream ({})", reset_meaning(code)))
        }
        other => NetError::Closed(to, format!("reading the reply: {other}")),
    }
}

/// A connection that closed under a call. A peer that rejected our certificate is unreachable
/// rather than flaky, and says so.
fn connection_lost(to: NodeId, during: &str, e: &ConnectionError) -> NetError {
    match e {
        ConnectionError::ApplicationClosed(close) if close.error_code == CLOSE_PEER_REJECTED => NetError::Unreachable(
            to,
            format!("it rejected this node's certificate: {}", String::from_utf8_lossy(&close.reason)),
        ),
        e => NetError::Closed(to, format!("connection lost {during}: {e}")),
    }
}

fn reset_meaning(code: VarInt) -> String {
    match code {
        RESET_BAD_REQUEST => "it found the request malformed or too large".to_owned(),
        RESET_REPLY_TOO_LARGE => format!("its reply exceeded {MAX_MESSAGE_BYTES} bytes"),
        code => format!("code {code}"),
    }
}

fn transport_config() -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_STREAMS_PER_CONNECTION))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW_BYTES))
        .send_window(CONNECTION_SEND_WINDOW_BYTES)
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))))
        .datagram_receive_buffer_size(None);
    config
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain `Option`s that no panic can leave half-updated.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn log_task_end(joined: Result<(), JoinError>) {
    if let Err(e) = joined {
        if e.is_panic() {
            error!(error = %e, "a QUIC connection or request handler panicked");
        }
    }
}

/// The endpoint's socket, reporting when quinn lets go of it. quinn closes the UDP socket only
/// once its driver task and every connection have ended, some time after the endpoint is dropped;
/// `shutdown` waits for this so that whoever binds the port next (a restarted node) can.
#[derive(Debug)]
struct ReleaseNotifyingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    // Declared after `inner` so that it is dropped after it: the signal means the socket is closed.
    _released: ReleaseSignal,
}

#[derive(Debug)]
struct ReleaseSignal(Option<oneshot::Sender<()>>);

impl Drop for ReleaseSignal {
    fn drop(&mut self) {
        if let Some(released) = self.0.take() {
            // Nobody waiting (no shutdown in progress) is fine.
            let _ = released.send(());
        }
    }
}

impl AsyncUdpSocket for ReleaseNotifyingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // The inner poller holds the inner socket; tie it to this wrapper so the socket cannot
        // outlive the signal.
        Box::pin(PollerHoldingSocket { inner: self.inner.clone().create_io_poller(), _socket: self })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[derive(Debug)]
struct PollerHoldingSocket {
    inner: Pin<Box<dyn UdpPoller>>,
    // Dropped after `inner`.
    _socket: Arc<ReleaseNotifyingSocket>,
}

impl UdpPoller for PollerHoldingSocket {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner.as_mut().poll_writable(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::net::RpcHandler;
    use crate::tls::CaBundle;
    use futures::future::join_all;

    const CALL_TIMEOUT: Duration = Duration::from_secs(20);
    /// Guards tests against hanging; far above any expected duration.
    const TEST_BOUND: Duration = Duration::from_secs(60);

    /// Records who called and echoes the request; `b"boom"` makes it panic.
    #[derive(Default)]
    struct Echo {
        callers: std::sync::Mutex<Vec<NodeId>>,
    }

    impl Echo {
        fn callers(&self) -> Vec<NodeId> {
            self.callers.lock().unwrap().clone()
        }
    }

    impl RpcHandler for Echo {
        fn handle(&self, from: NodeId, request: Bytes) -> BoxFuture<'static, Bytes> {
            self.callers.lock().unwrap().push(from);
            Box::pin(async move {
                assert_ne!(&request[..], b"boom", "planted handler panic");
                request
            })
        }
    }

    struct Node {
        transport: Arc<QuicTransport>,
        handler: Arc<Echo>,
        config: QuicConfig,
    }

    fn loopback_socket() -> std::net::UdpSocket {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
    }

    /// Binds a socket for every node first, so every peer table holds every real address.
    fn start(ca: &CaBundle, nodes: &[(NodeId, &str)]) -> Vec<Node> {
        let sockets: Vec<_> = nodes.iter().map(|_| loopback_socket()).collect();
        let peers: BTreeMap<NodeId, PeerAddr> = nodes
            .iter()
            .zip(&sockets)
            .map(|(&(id, name), socket)| (id, PeerAddr { name: name.to_owned(), addr: socket.local_addr().unwrap() }))
            .collect();
        nodes
            .iter()
            .zip(sockets)
            .map(|(&(id, name), socket)| {
                let cert = ca.issue_node(name, id, "test-region").unwrap();
                let config = QuicConfig {
                    node_id: id,
                    listen: socket.local_addr().unwrap(),
                    peers: peers.clone(),
                    ca_pem: ca.cert_pem.clone(),
                    cert_pem: cert.cert_pem,
                    key_pem: cert.key_pem,
                };
                let handler = Arc::new(Echo::default());
                let transport = QuicTransport::with_socket(config.clone(), socket, handler.clone()).unwrap();
                Node { transport, handler, config }
            })
            .collect()
    }

    async fn bounded<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(TEST_BOUND, f).await.expect("test step hung")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_in_both_directions_names_the_caller() {
        let ca = CaBundle::generate("test").unwrap();
        let nodes = start(&ca, &[(1, "eu-west-2"), (2, "us-east-1")]);
        let (a, b) = (&nodes[0], &nodes[1]);

        let reply = bounded(a.transport.call(2, Bytes::from_static(b"ping from 1"), CALL_TIMEOUT)).await;
        assert_eq!(reply, Ok(Bytes::from_static(b"ping from 1")));
        let reply = bounded(b.transport.call(1, Bytes::from_static(b"ping from 2"), CALL_TIMEOUT)).await;
        assert_eq!(reply, Ok(Bytes::from_static(b"ping from 2")));
        let reply = bounded(a.transport.call(2, Bytes::new(), CALL_TIMEOUT)).await;
        assert_eq!(reply, Ok(Bytes::new()), "an empty message is a message");

        assert_eq!(b.handler.callers(), vec![1, 1]);
        assert_eq!(a.handler.callers(), vec![2]);
        bounded(a.transport.shutdown()).await;
        bounded(b.transport.shutdown()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_one_connection_and_each_gets_its_own_reply() {
        let ca = CaBundle::generate("test").unwrap();
        let nodes = start(&ca, &[(1, "eu-west-2"), (2, "us-east-1")]);
        let (a, b) = (&nodes[0], &nodes[1]);

        let requests: Vec<Bytes> =
            (0..100u32).map(|i| Bytes::from(format!("request {i}").repeat(1 + i as usize))).collect();
        let calls = requests.iter().map(|r| a.transport.call(2, r.clone(), CALL_TIMEOUT));
        let replies = bounded(join_all(calls)).await;
        for (request, reply) in requests.iter().zip(replies) {
            assert_eq!(reply.as_ref(), Ok(request));
        }
        assert_eq!(b.handler.callers().len(), 100);
        assert_eq!(b.transport.connections_accepted(), 1, "all calls share one connection");
        bounded(a.transport.shutdown()).await;
        bounded(b.transport.shutdown()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_24_mib_message_is_echoed_byte_identical() {
        let ca = CaBundle::generate("test").unwrap();
        let nodes = start(&ca, &[(1, "eu-west-2"), (2, "us-east-1")]);
        // Not a repeating pattern of a power-of-two period, so a misplaced chunk shows.
        let request: Bytes = (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let reply = bounded(nodes[0].transport.call(2, request.clone(), CALL_TIMEOUT)).await.unwrap();
        assert_eq!(reply.len(), request.len());
        assert!(reply == request, "reply differs from the request");
        bounded(nodes[0].transport.shutdown()).await;
        bounded(nodes[1].transport.shutdown()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_and_misaddressed_calls_fail_without_reaching_the_peer() {
        let ca = CaBundle::generate("test").unwrap();
        let nodes = start(&ca, &[(1, "eu-west-2"), (2, "us-east-1")]);
        let a = &nodes[0];
        // Zeroed memory is not touched until written, so this costs no real gigabyte.
        let huge = Bytes::from(vec![0u8; MAX_MESSAGE_BYTES + 1]);
        assert_eq!(
            bounded(a.transport.call(2, huge, CALL_TIMEOUT)).await,
            Err(NetError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
        assert_eq!(bounded(a.transport.call(7, Bytes::new(), CALL_TIMEOUT)).await, Err(NetError::UnknownNode(7)));
        assert!(nodes[1].handler.callers().is_empty());
        assert_eq!(nodes[1].transport.connections_accepted(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_request_frames_are_reset_and_never_reach_the_handler() {
        let ca = CaBundle::generate("test").unwrap();
        let nodes = start(&ca, &[(1, "eu-west-2"), (2, "us-east-1")]);
        let shared = &nodes[0].transport.shared;
        let peer = &shared.peers[&2];
        let frames: [&[u8]; 4] = [
            &u32::MAX.to_be_bytes(), // claims more than the limit
            &[0, 0, 0, 10, 1, 2, 3], // ends before its length
            &[0, 0],                 // ends inside the header
            &[0, 0, 0, 1, 42, 43],   // bytes after the frame
        ];
        for frame in frames {
            let connection = bounded(shared.connection(2, peer)).await.unwrap();
            let (mut send, mut recv) = bounded(connection.open_bi()).await.unwrap();
            send.write_all(frame).await.unwrap();
            send.finish().unwrap();
            let outcome = bounded(read_frame(&mut recv)).await;
            assert!(
                matches!(outcome, Err(FrameError::Read(ReadError::Reset(RESET_BAD_REQUEST)))),
                "{frame:?}: {outcome:?}"
            );
        }
        assert!(nodes[1].handler.callers().is_empty());
        // The connection survives bad streams.
        let reply = bounded(nodes[0].transport.call(2, Bytes::from_static(b"fine"), CALL_TIMEOUT)).await;
        assert_eq!(reply, Ok(Bytes::from_static(b"fine")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_handler_fails_only_its_own_call() {
        let ca = CaBundle::generate("test").unwrap();
        let nodes = start(&ca, &[(1, "eu-west-2"), (2, "us-east-1")]);
        let a = &nodes[0].transport;
        let failed = bounded(a.call(2, Bytes::from_static(b"boom"), CALL_TIMEOUT)).await;
        assert!(matches!(failed, Err(NetError::Closed(2, _))), "{failed:?}");
        let reply = bounded(a.call(2, Bytes::from_static(b"after"), CALL_TIMEOUT)).await;
        assert_eq!(reply, Ok(Bytes::from_static(b"after")));
        assert_eq!(nodes[1].transport.connections_accepted(), 1);
    }

    /// A node that knows the cluster's addresses, claims to be node 2, and trusts `ca_pem` and
    /// presents `cert`, whatever they are.
    fn impostor(victim: &Node, ca_pem: &str, cert: tls::NodeCert) -> Arc<QuicTransport> {
        let socket = loopback_socket();
        let config = QuicConfig {
            node_id: 2,
            listen: socket.local_addr().unwrap(),
            peers: victim.config.peers.clone(),
            ca_pem: ca_pem.to_owned(),
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
        };
        QuicTransport::with_socket(config, socket, Arc::new(Echo::default())).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_with_a_certificate_from_another_ca_is_rejected() {
        let ca = CaBundle::generate("test").unwrap();
        let rogue_ca = CaBundle::generate("test").unwrap();
        let nodes = start(&ca, &[(1, "eu-west-2"), (2, "us-east-1")]);
        let victim = &nodes[0];

        // Trusting the real CA and using a real peer's name, so that only the victim's check of
        // the client certificate stands in the way.
        let attacker = impostor(victim, &ca.cert_pem, rogue_ca.issue("us-east-1").unwrap());
        let outcome = bounded(attacker.call(1, Bytes::from_static(b"let me in"), CALL_TIMEOUT)).await;
        assert!(matches!(outcome, Err(NetError::Closed(1, _) | NetError::Unreachable(1, _))), "{outcome:?}");
        // A node entirely of another cluster already fails at its own check of the victim.
        let outsider = impostor(victim, &rogue_ca.cert_pem, rogue_ca.issue("us-east-1").unwrap());
        let outcome = bounded(outsider.call(1, Bytes::from_static(b"hello?"), CALL_TIMEOUT)).await;
        assert!(matches!(outcome, Err(NetError::Unreachable(1, _))), "{outcome:?}");

        assert!(victim.handler.callers().is_empty());
        assert_eq!(victim.transport.connections_accepted(), 0);
        // The real node 2 is still welcome.
        let reply = bounded(nodes[1].transport.call(1, Bytes::from_static(b"hi"), CALL_TIMEOUT)).await;
        assert_eq!(reply, Ok(Bytes::from_static(b"hi")));
        assert_eq!(victim.handler.callers(), vec![2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_whose_certificate_names_no_peer_is_rejected() {
        let ca = CaBundle::generate("test").unwrap();
        let nodes = start(&ca, &[(1, "eu-west-2"), (2, "us-east-1")]);
        let victim = &nodes[0];
        let intruder = impostor(victim, &ca.cert_pem, ca.issue("intruder").unwrap());
        let outcome = bounded(intruder.call(1, Bytes::from_static(b"let me in"), CALL_TIMEOUT)).await;
        match outcome {
            Err(NetError::Unreachable(1, reason)) => {
                assert!(reason.contains("rejected this node's certificate"), "{reason}");
                assert!(reason.contains("intruder"), "{reason}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert!(victim.handler.callers().is_empty());
        assert_eq!(victim.transport.connections_accepted(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_certificate_without_the_peers_node_role_is_rejected() {
        let ca = CaBundle::generate("test").unwrap();
        let nodes = start(&ca, &[(1, "eu-west-2"), (2, "us-east-1")]);
        let victim = &nodes[0];
        let region = "test-region";
        for (what, cert, expect) in [
            ("a client certificate", ca.issue_client("us-east-1", &Role::Admin).unwrap(), "carries role admin"),
            ("a certificate without a role", ca.issue("us-east-1").unwrap(), "carries no node role"),
            ("another node's role", ca.issue_node("us-east-1", 3, region).unwrap(), "carries role node:3"),
        ] {
            let intruder = impostor(victim, &ca.cert_pem, cert);
            let outcome = bounded(intruder.call(1, Bytes::from_static(b"let me in"), CALL_TIMEOUT)).await;
            match outcome {
                Err(NetError::Unreachable(1, reason)) => {
                    assert!(reason.contains("rejected this node's certificate"), "{what}: {reason}");
                    assert!(reason.contains(expect), "{what}: {reason}");
                }
                other => panic!("{what}: expected a rejection, got {other:?}"),
            }
        }
        assert!(victim.handler.callers().is_empty());
        assert_eq!(victim.transport.connections_accepted(), 0);
        let reply = bounded(nodes[1].transport.call(1, Bytes::from_static(b"hi"), CALL_TIMEOUT)).await;
        assert_eq!(reply, Ok(Bytes::from_static(b"hi")), "the real node 2 is still welcome");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_to_a_silent_address_ends_with_its_timeout() {
        let ca = CaBundle::generate("test").unwrap();
        // A bound socket that never reads: datagrams to it vanish, as to a partitioned peer.
        let silent = loopback_socket();
        let socket = loopback_socket();
        let cert = ca.issue("eu-west-2").unwrap();
        let config = QuicConfig {
            node_id: 1,
            listen: socket.local_addr().unwrap(),
            peers: BTreeMap::from([(3, PeerAddr { name: "ap-south-1".into(), addr: silent.local_addr().unwrap() })]),
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
        };
        let transport = QuicTransport::with_socket(config, socket, Arc::new(Echo::default())).unwrap();
        let timeout = Duration::from_millis(300);
        // Two calls at once: the second must not wait out the first's dial and then its own.
        let (first, second) = bounded(futures::future::join(
            transport.call(3, Bytes::from_static(b"anyone?"), timeout),
            transport.call(3, Bytes::from_static(b"anyone?"), timeout),
        ))
        .await;
        assert_eq!(first, Err(NetError::Timeout(3, timeout)));
        assert_eq!(second, Err(NetError::Timeout(3, timeout)));
        // No clean shutdown: the abandoned dial would keep the endpoint draining for seconds.
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_succeed_again_after_the_peer_restarts_on_the_same_address() {
        let ca = CaBundle::generate("test").unwrap();
        let mut nodes = start(&ca, &[(1, "eu-west-2"), (2, "us-east-1")]);
        let b = nodes.pop().unwrap();
        let a = nodes.pop().unwrap();
        assert_eq!(
            bounded(a.transport.call(2, Bytes::from_static(b"one"), CALL_TIMEOUT)).await,
            Ok(Bytes::from_static(b"one"))
        );
        let old_connection = a.transport.shared.peers[&2].connection.lock().await.clone().unwrap();

        bounded(b.transport.shutdown()).await;
        // The close reaches the caller's side of the connection; wait for exactly that.
        bounded(old_connection.closed()).await;
        // A connection handle keeps its endpoint's socket open, so the test must not hold one.
        drop(old_connection);
        let down = bounded(a.transport.call(2, Bytes::from_static(b"two"), Duration::from_millis(300))).await;
        assert!(matches!(down, Err(NetError::Timeout(2, _) | NetError::Unreachable(2, _))), "{down:?}");
        let after_shutdown = bounded(b.transport.call(1, Bytes::new(), CALL_TIMEOUT)).await;
        assert!(matches!(after_shutdown, Err(NetError::Unreachable(1, _))), "{after_shutdown:?}");

        // `shutdown` returned only once the port was free, so binding it again succeeds at once.
        let handler = Arc::new(Echo::default());
        let restarted = QuicTransport::bind(b.config.clone(), handler.clone()).unwrap();
        assert_eq!(restarted.local_addr(), b.transport.local_addr());
        let reply = bounded(a.transport.call(2, Bytes::from_static(b"three"), CALL_TIMEOUT)).await;
        assert_eq!(reply, Ok(Bytes::from_static(b"three")));
        assert_eq!(handler.callers(), vec![1]);
        assert_eq!(b.handler.callers(), vec![1], "the old instance saw only the first call");
        // No clean shutdown here: the dial abandoned by the timed-out call keeps both endpoints
        // draining for seconds, which would only slow the test down.
    }

    /// Single-threaded, so that nothing of quinn's runs between `shutdown` returning and the
    /// bind: the port is free because `shutdown` waited for it, not because a task happened to run.
    #[tokio::test(flavor = "current_thread")]
    async fn shutdown_returns_only_once_the_port_is_free() {
        let ca = CaBundle::generate("test").unwrap();
        let nodes = start(&ca, &[(1, "eu-west-2"), (2, "us-east-1")]);
        for (from, to) in [(0, 2), (1, 1)] {
            let reply = bounded(nodes[from].transport.call(to, Bytes::from_static(b"x"), CALL_TIMEOUT)).await;
            assert_eq!(reply, Ok(Bytes::from_static(b"x")));
        }
        for node in &nodes {
            bounded(node.transport.shutdown()).await;
            std::net::UdpSocket::bind(node.transport.local_addr()).expect("port is free after shutdown");
        }
    }

    #[test]
    fn peer_tables_with_bad_or_duplicate_names_are_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = runtime.enter();
        let ca = CaBundle::generate("test").unwrap();
        let cert = ca.issue("eu-west-2").unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = |peers: &[(NodeId, &str)]| QuicConfig {
            node_id: 1,
            listen: addr,
            peers: peers.iter().map(|&(id, name)| (id, PeerAddr { name: name.into(), addr })).collect(),
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
        };
        let handler: RpcHandlerRef = Arc::new(Echo::default());
        let duplicate = QuicTransport::bind(config(&[(1, "eu-west-2"), (2, "eu-west-2")]), handler.clone());
        assert!(matches!(duplicate, Err(QuicError::DuplicatePeerName { first: 1, second: 2, .. })));
        let reserved = QuicTransport::bind(config(&[(1, "eu-west-2"), (2, "localhost")]), handler.clone());
        assert!(matches!(reserved, Err(QuicError::PeerName { node: 2, .. })));
        let mut bad_pem = config(&[(1, "eu-west-2")]);
        bad_pem.key_pem = "no key here".into();
        assert!(matches!(QuicTransport::bind(bad_pem, handler), Err(QuicError::Tls(TlsError::NoPrivateKey { .. }))));
    }

    #[test]
    fn binding_outside_a_runtime_is_an_error_not_a_panic() {
        let ca = CaBundle::generate("test").unwrap();
        let cert = ca.issue("eu-west-2").unwrap();
        let config = QuicConfig {
            node_id: 1,
            listen: "127.0.0.1:0".parse().unwrap(),
            peers: BTreeMap::new(),
            ca_pem: ca.cert_pem,
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
        };
        assert!(matches!(QuicTransport::bind(config, Arc::new(Echo::default())), Err(QuicError::NoRuntime)));
    }
}
