//! A fake tetrad node: a real tonic server on 127.0.0.1:0 implementing the `Tetrad` service with
//! an in-memory segment store, whose answers a test scripts per method (serve, redirect, fail
//! with a `tetrad-error`, fail without metadata, drop the connection, hang, corrupt a fetch).

#![allow(dead_code)] // each test file uses a different part

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tetrad_proto::v1::tetrad_server::{Tetrad, TetradServer};
use tetrad_proto::v1::*;
use tetrad_proto::{ERROR_KIND_KEY, LEADER_API_KEY};
use tonic::{Code, Request, Response, Status, Streaming};

/// The tenant every fake knows; any other is `unknown-tenant`.
pub const TENANT: &str = "acme";

#[derive(Debug, Clone)]
pub enum Act {
    /// Answer as a healthy leader would.
    Serve,
    /// `not-leader`, with the leader's api address if given.
    NotLeader(Option<String>),
    /// Fail with this `tetrad-error` kind.
    Fail(&'static str),
    /// Fail with a status that has no tetrad metadata (as the transport would).
    Bare(Code),
    /// Shut the TCP connections down (after reading a push whole).
    DropConnection,
    /// Never answer.
    Hang,
    /// Fetch: serve the header, then bytes that do not match it.
    Corrupt,
}

#[derive(Default)]
struct Inner {
    name: String,
    script: Mutex<HashMap<&'static str, VecDeque<Act>>>,
    fallback: Mutex<Option<Act>>,
    calls: Mutex<Vec<&'static str>>,
    /// Every push received whole: (tenant, name, bytes).
    pushes: Mutex<Vec<(String, String, Vec<u8>)>>,
    segments: Mutex<HashMap<String, Vec<u8>>>,
    /// Chunks of pushes by reference, by blake3, kept even when the push then fails (as a node
    /// keeps a chunk it made durable), and the chunk bytes received over all pushes.
    chunks: Mutex<HashMap<[u8; 32], Vec<u8>>>,
    chunk_bytes: Mutex<u64>,
    conns: Mutex<Vec<std::net::TcpStream>>,
    /// Every operator request received: switchovers, failovers, mode changes.
    switchovers: Mutex<Vec<SwitchoverTenantRequest>>,
    failovers: Mutex<Vec<FailoverTenantRequest>>,
    mode_changes: Mutex<Vec<SetTenantModeRequest>>,
    /// What `tenant_history` answers, and what a switchover or failover appends and answers.
    history: Mutex<Vec<TenantEventInfo>>,
    /// The event the next failover answers (its loss record); default: an event without one.
    failover_event: Mutex<Option<TenantEventInfo>>,
}

/// One CA for every fake of a test binary, the fakes' certificate and an admin client's, made once.
fn tls_material(
) -> &'static (tetrad_config::certs::CaBundle, tetrad_config::certs::NodeCert, tetrad_config::certs::NodeCert) {
    static MATERIAL: std::sync::OnceLock<(
        tetrad_config::certs::CaBundle,
        tetrad_config::certs::NodeCert,
        tetrad_config::certs::NodeCert,
    )> = std::sync::OnceLock::new();
    MATERIAL.get_or_init(|| {
        let ca = tetrad_config::certs::CaBundle::generate("fake").expect("CA");
        let node = ca.issue_node("fake", 1, "fake").expect("node cert");
        let admin = ca.issue_client("admin", &tetrad_config::role::Role::Admin).expect("client cert");
        (ca, node, admin)
    })
}

/// The identity tetradctl presents to the fakes: an admin of their CA.
pub fn identity() -> tetrad_ops::client::Identity {
    let (ca, _, admin) = tls_material();
    tetrad_ops::client::Identity::from_pem(
        "fake/admin".into(),
        ca.cert_pem.clone(),
        admin.cert_pem.clone(),
        admin.key_pem.clone(),
    )
}

/// Writes [`identity`] as `DIR/admin.crt`, `DIR/admin.key` and `DIR/ca.crt`, where a cluster
/// directory keeps its admin identity.
pub fn write_admin_identity(dir: &std::path::Path) {
    let (ca, _, admin) = tls_material();
    std::fs::create_dir_all(dir).expect("identity dir");
    std::fs::write(dir.join("admin.crt"), &admin.cert_pem).expect("write");
    std::fs::write(dir.join("admin.key"), &admin.key_pem).expect("write");
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem).expect("write");
}

#[derive(Clone)]
pub struct FakeNode(Arc<Inner>);

impl FakeNode {
    /// Starts a fake on a free loopback port; returns it and its `host:port`.
    pub async fn start(name: &str) -> (FakeNode, String) {
        let fake = FakeNode(Arc::new(Inner { name: name.to_owned(), ..Default::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let me = fake.clone();
        let incoming = futures::stream::unfold((listener, me), |(listener, me)| async move {
            let conn = match listener.accept().await {
                Ok((stream, _)) => me.track(stream),
                Err(e) => Err(e),
            };
            Some((conn, (listener, me)))
        });
        let service = TetradServer::new(fake.clone());
        let (ca, cert, _) = tls_material();
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&cert.cert_pem, &cert.key_pem))
            .client_ca_root(tonic::transport::Certificate::from_pem(&ca.cert_pem));
        let mut server = tonic::transport::Server::builder().tls_config(tls).expect("TLS config");
        tokio::spawn(server.add_service(service).serve_with_incoming(incoming));
        (fake, addr)
    }

    /// Chunk bytes received by pushes by reference, over all of them.
    pub fn chunk_bytes(&self) -> u64 {
        *self.0.chunk_bytes.lock().unwrap()
    }

    /// Keeps a second handle on every accepted socket, so [`Act::DropConnection`] can shut it.
    fn track(&self, stream: tokio::net::TcpStream) -> std::io::Result<tokio::net::TcpStream> {
        let std_stream = stream.into_std()?;
        self.0.conns.lock().unwrap().push(std_stream.try_clone()?);
        tokio::net::TcpStream::from_std(std_stream)
    }

    /// Queues answers for `method`; once they are used up the fallback (default: serve) applies.
    pub fn script(&self, method: &'static str, acts: impl IntoIterator<Item = Act>) {
        self.0.script.lock().unwrap().entry(method).or_default().extend(acts);
    }

    pub fn always(&self, act: Act) {
        *self.0.fallback.lock().unwrap() = Some(act);
    }

    pub fn calls(&self, method: &str) -> usize {
        self.0.calls.lock().unwrap().iter().filter(|m| **m == method).count()
    }

    pub fn pushes(&self) -> Vec<(String, String, Vec<u8>)> {
        self.0.pushes.lock().unwrap().clone()
    }

    pub fn put_segment(&self, name: &str, data: &[u8]) {
        self.0.segments.lock().unwrap().insert(name.to_owned(), data.to_vec());
    }

    pub fn segment(&self, name: &str) -> Option<Vec<u8>> {
        self.0.segments.lock().unwrap().get(name).cloned()
    }

    pub fn set_history(&self, events: Vec<TenantEventInfo>) {
        *self.0.history.lock().unwrap() = events;
    }

    pub fn set_failover_event(&self, event: TenantEventInfo) {
        *self.0.failover_event.lock().unwrap() = Some(event);
    }

    pub fn switchovers(&self) -> Vec<SwitchoverTenantRequest> {
        self.0.switchovers.lock().unwrap().clone()
    }

    pub fn failovers(&self) -> Vec<FailoverTenantRequest> {
        self.0.failovers.lock().unwrap().clone()
    }

    pub fn mode_changes(&self) -> Vec<SetTenantModeRequest> {
        self.0.mode_changes.lock().unwrap().clone()
    }

    fn next_act(&self, method: &'static str) -> Act {
        self.0.calls.lock().unwrap().push(method);
        let queued = self.0.script.lock().unwrap().get_mut(method).and_then(|q| q.pop_front());
        queued.or_else(|| self.0.fallback.lock().unwrap().clone()).unwrap_or(Act::Serve)
    }

    fn drop_connections(&self) {
        for c in self.0.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Carries out every act but `Serve` and `Corrupt`, which the handler does itself.
    async fn act(&self, act: &Act) -> Result<(), Status> {
        match act {
            Act::Serve | Act::Corrupt => Ok(()),
            Act::NotLeader(leader) => {
                let mut s = error("not-leader", "not the leader");
                if let Some(l) = leader {
                    s.metadata_mut().insert(LEADER_API_KEY, l.parse().unwrap());
                }
                Err(s)
            }
            Act::Fail(kind) => Err(error(kind, "scripted failure")),
            Act::Bare(code) => Err(Status::new(*code, "scripted transport failure")),
            Act::DropConnection => {
                self.drop_connections();
                std::future::pending().await
            }
            Act::Hang => std::future::pending().await,
        }
    }

    fn known_tenant(tenant: &str) -> Result<(), Status> {
        if tenant == TENANT {
            Ok(())
        } else {
            Err(error("unknown-tenant", &format!("no tenant {tenant}")))
        }
    }
}

pub fn error(kind: &str, message: &str) -> Status {
    let code = match kind {
        "unknown-tenant" | "unknown-segment" => Code::NotFound,
        "segment-conflict" => Code::AlreadyExists,
        "bad-request" => Code::InvalidArgument,
        "not-leader" => Code::FailedPrecondition,
        "unavailable" | "outcome-unknown" => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut s = Status::new(code, message);
    s.metadata_mut().insert(ERROR_KIND_KEY, kind.parse().unwrap());
    s
}

type FetchStream = futures::stream::BoxStream<'static, Result<FetchWalReply, Status>>;

#[tonic::async_trait]
impl Tetrad for FakeNode {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.act(&self.next_act("status")).await?;
        Ok(Response::new(StatusReply { meta_leader: self.0.name.clone(), ..Default::default() }))
    }

    async fn init_cluster(&self, _: Request<InitClusterRequest>) -> Result<Response<InitClusterReply>, Status> {
        self.act(&self.next_act("init_cluster")).await?;
        Ok(Response::new(InitClusterReply { already_initialized: false, meta_leader: self.0.name.clone() }))
    }

    async fn create_tenant(&self, req: Request<CreateTenantRequest>) -> Result<Response<TenantInfo>, Status> {
        self.act(&self.next_act("create_tenant")).await?;
        let r = req.into_inner();
        Ok(Response::new(TenantInfo { name: r.name, mode: r.mode, primary: r.primary, epoch: 1, ..Default::default() }))
    }

    async fn list_tenants(&self, _: Request<ListTenantsRequest>) -> Result<Response<ListTenantsReply>, Status> {
        self.act(&self.next_act("list_tenants")).await?;
        Ok(Response::new(ListTenantsReply { tenants: vec![TenantInfo { name: TENANT.into(), ..Default::default() }] }))
    }

    async fn get_tenant(&self, req: Request<GetTenantRequest>) -> Result<Response<TenantInfo>, Status> {
        self.act(&self.next_act("get_tenant")).await?;
        let name = req.into_inner().name;
        Self::known_tenant(&name)?;
        Ok(Response::new(TenantInfo { name, ..Default::default() }))
    }

    async fn missing_chunks(&self, req: Request<MissingChunksRequest>) -> Result<Response<MissingChunksReply>, Status> {
        self.act(&self.next_act("missing_chunks")).await?;
        let r = req.into_inner();
        Self::known_tenant(&r.tenant)?;
        let chunks = self.0.chunks.lock().unwrap();
        let missing =
            (0..r.hashes.len() as u32).filter(|i| !chunks.contains_key(r.hashes[*i as usize].as_slice())).collect();
        Ok(Response::new(MissingChunksReply { missing }))
    }

    async fn push_wal(&self, req: Request<Streaming<PushWalRequest>>) -> Result<Response<PushWalReply>, Status> {
        // Read the whole push first, so every scripted act happens "after receiving the push".
        let mut stream = req.into_inner();
        let header = match stream.message().await?.and_then(|m| m.msg) {
            Some(push_wal_request::Msg::Header(h)) => h,
            _ => return Err(error("bad-request", "header first")),
        };
        let mut data = Vec::new();
        let mut sent = HashMap::new();
        while let Some(m) = stream.message().await? {
            match m.msg {
                Some(push_wal_request::Msg::Data(d)) if header.chunks.is_empty() => data.extend_from_slice(&d),
                Some(push_wal_request::Msg::Chunk(c)) if !header.chunks.is_empty() => {
                    let h = *blake3::hash(&c.data).as_bytes();
                    if header.chunks.get(c.index as usize).map(Vec::as_slice) != Some(&h[..]) {
                        return Err(error("bad-request", "a chunk that does not match its hash"));
                    }
                    *self.0.chunk_bytes.lock().unwrap() += c.data.len() as u64;
                    self.0.chunks.lock().unwrap().insert(h, c.data.clone());
                    sent.insert(c.index, c.data);
                }
                _ => return Err(error("bad-request", "data after the header")),
            }
        }
        for (i, h) in header.chunks.iter().enumerate() {
            let held = self.0.chunks.lock().unwrap().get(h.as_slice()).cloned();
            match sent.remove(&(i as u32)).or(held) {
                Some(c) => data.extend_from_slice(&c),
                None => return Err(error("unavailable", "a chunk neither sent nor held")),
            }
        }
        let act = self.next_act("push_wal");
        if data.len() as u64 != header.size || blake3::hash(&data).to_hex().as_str() != header.blake3 {
            return Err(error("bad-request", "size or blake3 does not match the header"));
        }
        self.0.pushes.lock().unwrap().push((header.tenant.clone(), header.name.clone(), data.clone()));
        self.act(&act).await?;
        Self::known_tenant(&header.tenant)?;
        let mut segments = self.0.segments.lock().unwrap();
        let already_present = match segments.get(&header.name) {
            Some(existing) if *existing == data => true,
            Some(_) => return Err(error("segment-conflict", "a different segment has this name")),
            None => {
                segments.insert(header.name.clone(), data);
                false
            }
        };
        Ok(Response::new(PushWalReply {
            name: header.name,
            size: header.size,
            blake3: header.blake3,
            already_present,
            epoch: 1,
            term: 2,
            index: 3,
        }))
    }

    type FetchWalStream = FetchStream;
    type VerifyTenantStream = futures::stream::BoxStream<'static, Result<VerifyTenantReply, Status>>;

    async fn verify_tenant(
        &self,
        _: Request<VerifyTenantRequest>,
    ) -> Result<Response<Self::VerifyTenantStream>, Status> {
        Err(Status::unimplemented("the fake node does not verify"))
    }

    async fn put_record(&self, _: Request<PutRecordRequest>) -> Result<Response<RecordWriteReply>, Status> {
        Err(Status::unimplemented("the fake node has no records"))
    }

    async fn delete_record(&self, _: Request<DeleteRecordRequest>) -> Result<Response<RecordWriteReply>, Status> {
        Err(Status::unimplemented("the fake node has no records"))
    }

    async fn get_record(&self, _: Request<GetRecordRequest>) -> Result<Response<RecordInfo>, Status> {
        Err(Status::unimplemented("the fake node has no records"))
    }

    async fn list_records(&self, _: Request<ListRecordsRequest>) -> Result<Response<ListRecordsReply>, Status> {
        Err(Status::unimplemented("the fake node has no records"))
    }

    async fn fetch_wal(&self, req: Request<FetchWalRequest>) -> Result<Response<FetchStream>, Status> {
        let act = self.next_act("fetch_wal");
        self.act(&act).await?;
        let r = req.into_inner();
        Self::known_tenant(&r.tenant)?;
        let Some(mut data) = self.segment(&r.name) else {
            return Err(error("unknown-segment", &format!("no segment {}", r.name)));
        };
        let header =
            SegmentHeader { name: r.name, size: data.len() as u64, blake3: blake3::hash(&data).to_hex().to_string() };
        if matches!(act, Act::Corrupt) {
            if let Some(b) = data.first_mut() {
                *b ^= 0xff;
            }
        }
        let mut messages = vec![Ok(FetchWalReply { msg: Some(fetch_wal_reply::Msg::Header(header)) })];
        for chunk in data.chunks(1 << 20) {
            messages.push(Ok(FetchWalReply { msg: Some(fetch_wal_reply::Msg::Data(chunk.to_vec())) }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn list_wal(&self, req: Request<ListWalRequest>) -> Result<Response<ListWalReply>, Status> {
        self.act(&self.next_act("list_wal")).await?;
        let r = req.into_inner();
        Self::known_tenant(&r.tenant)?;
        let mut segments: Vec<SegmentInfo> = self
            .0
            .segments
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.starts_with(&r.prefix))
            .map(|(n, d)| SegmentInfo {
                name: n.clone(),
                size: d.len() as u64,
                blake3: blake3::hash(d).to_hex().to_string(),
                proposed_at_ms: 0,
            })
            .collect();
        segments.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListWalReply { segments, ..Default::default() }))
    }

    async fn switchover_tenant(
        &self,
        req: Request<SwitchoverTenantRequest>,
    ) -> Result<Response<TenantEventInfo>, Status> {
        let act = self.next_act("switchover_tenant");
        let r = req.into_inner();
        self.0.switchovers.lock().unwrap().push(r.clone());
        self.act(&act).await?;
        Self::known_tenant(&r.name)?;
        let event = TenantEventInfo {
            kind: "switchover".into(),
            at_ms: 1_700_000_000_000,
            from_epoch: 1,
            to_epoch: 1,
            lost_writes_min: Some(0),
            lost_writes_max: Some(0),
            detail: format!("primary moved to {}", r.to_region),
            ..Default::default()
        };
        self.0.history.lock().unwrap().push(event.clone());
        Ok(Response::new(event))
    }

    async fn failover_tenant(&self, req: Request<FailoverTenantRequest>) -> Result<Response<TenantEventInfo>, Status> {
        let act = self.next_act("failover_tenant");
        let r = req.into_inner();
        self.0.failovers.lock().unwrap().push(r.clone());
        self.act(&act).await?;
        Self::known_tenant(&r.name)?;
        if !r.accept_data_loss {
            return Err(error("bad-request", "manual failover needs accept_data_loss"));
        }
        let event = self.0.failover_event.lock().unwrap().clone().unwrap_or_else(|| TenantEventInfo {
            kind: "manual-failover".into(),
            at_ms: 1_700_000_000_000,
            from_epoch: 1,
            to_epoch: 2,
            detail: format!("promoted a replica in {}", r.to_region),
            ..Default::default()
        });
        self.0.history.lock().unwrap().push(event.clone());
        Ok(Response::new(event))
    }

    async fn set_tenant_mode(&self, req: Request<SetTenantModeRequest>) -> Result<Response<TenantInfo>, Status> {
        let act = self.next_act("set_tenant_mode");
        let r = req.into_inner();
        self.0.mode_changes.lock().unwrap().push(r.clone());
        self.act(&act).await?;
        Self::known_tenant(&r.name)?;
        Ok(Response::new(TenantInfo {
            name: r.name,
            mode: r.mode,
            rpo_target_ms: r.rpo_target_ms.unwrap_or(0),
            on_lag: r.on_lag.unwrap_or_default(),
            epoch: 1,
            ..Default::default()
        }))
    }

    async fn tenant_history(&self, req: Request<TenantHistoryRequest>) -> Result<Response<TenantHistoryReply>, Status> {
        self.act(&self.next_act("tenant_history")).await?;
        Self::known_tenant(&req.into_inner().name)?;
        Ok(Response::new(TenantHistoryReply { events: self.0.history.lock().unwrap().clone() }))
    }

    async fn list_audit(&self, _req: Request<ListAuditRequest>) -> Result<Response<ListAuditReply>, Status> {
        self.act(&self.next_act("list_audit")).await?;
        Ok(Response::new(ListAuditReply::default()))
    }
}

/// A loopback address nothing listens on: bound, then released.
pub fn closed_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}
