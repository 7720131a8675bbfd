//! The gRPC service (tonic) for clients and operators: maps `tetrad_proto` messages to
//! [`Node`] operations and [`ApiError`]s to statuses carrying the `tetrad-error` kind (and, for
//! redirects, the leader's address) that tetradctl relies on. Every call is first authorized by
//! the role in the caller's client certificate (`auth.rs`); a refusal is `unauthenticated` or
//! `permission-denied`, with the subject, its role and the refused action in the message.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tetrad_proto::v1::tetrad_server::Tetrad;
use tetrad_proto::v1::*;
use tetrad_proto::{ERROR_KIND_KEY, LEADER_API_KEY};
use tonic::{Request, Response, Status, Streaming};

use crate::api::audit::{self, AuditSink};
use crate::api::auth::{authorize, Action, AuthError, Subject};
use crate::meta::state::{AuditOutcome, TenantEvent, TenantRecord, AUDIT_RETAINED_MAX};
use crate::node::{ApiError, Node};
use crate::storage::chunks::{hex, parse_hex, CHUNK_BYTES};
use crate::tenant::catalog::MAX_SEGMENT_BYTES;
use tetrad_core::records::{RecordOp, RecordOutcome, RecordReply};

/// The wire form of a record write's answer. `Invalid` never gets here (it is a bad-request
/// error, `Writes::records`).
fn record_write_reply(reply: RecordReply, epoch: u64) -> RecordWriteReply {
    match reply {
        RecordReply::Done(outcomes) => RecordWriteReply {
            results: outcomes
                .into_iter()
                .map(|o| match o {
                    RecordOutcome::Put { key, version, changed } => {
                        RecordResult { key, version, changed, deleted: false }
                    }
                    RecordOutcome::Deleted { key, version } => {
                        RecordResult { key, version, changed: version != 0, deleted: true }
                    }
                })
                .collect(),
            epoch,
            ..Default::default()
        },
        RecordReply::ConditionFailed { key, expected, current } => RecordWriteReply {
            condition_failed: true,
            failed_key: key,
            expected_version: expected,
            current_version: current,
            epoch,
            ..Default::default()
        },
        RecordReply::Invalid { reason } => {
            unreachable!("an invalid record write is answered as bad-request: {reason}")
        }
    }
}

/// Segment bytes one verification batch covers on a member.
const VERIFY_BATCH_BYTES: u64 = 16 << 20;

fn counts_msg(c: &crate::raft::wire::VerifyCounts) -> VerifyCounts {
    VerifyCounts {
        checked: c.checked,
        bytes: c.bytes,
        missing: c.missing,
        damaged: c.damaged,
        repaired: c.repaired,
        unrepaired: c.unrepaired,
    }
}

/// Longest a push may go without a message before it is refused (`push_idle_timeout_ms`).
pub const PUSH_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The answer to a push, whole or by reference.
fn push_reply(name: String, out: crate::node::PushOutcome) -> PushWalReply {
    PushWalReply {
        name,
        size: out.size,
        blake3: hex(&out.blake3),
        already_present: out.already_present,
        epoch: out.epoch,
        term: out.term,
        index: out.index,
    }
}

/// Hashes as they travel (32 bytes each), checked.
fn chunk_hashes(raw: &[Vec<u8>]) -> Result<Vec<crate::storage::chunks::Hash>, String> {
    raw.iter()
        .enumerate()
        .map(|(i, h)| {
            <[u8; 32]>::try_from(h.as_slice())
                .map_err(|_| format!("chunk hash {i} has {} bytes; a blake3 hash has 32", h.len()))
        })
        .collect()
}

/// The stream's next message, or an error naming the idle limit when none arrives in time.
async fn next_within<T>(stream: &mut Streaming<T>) -> Result<Option<Result<T, Status>>, String> {
    tokio::time::timeout(PUSH_IDLE_TIMEOUT, stream.next()).await.map_err(|_| {
        format!(
            "the push sent nothing for {} s: limit push_idle_timeout_ms = {}",
            PUSH_IDLE_TIMEOUT.as_secs(),
            PUSH_IDLE_TIMEOUT.as_millis()
        )
    })
}

/// Largest gRPC message accepted or sent (pushes and fetches stream in 1 MiB pieces).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 4 << 20;

pub struct Api {
    node: Node,
    audit: std::sync::Arc<AuditSink>,
}

/// The caller's IP address, for the audit log.
fn peer_of<T>(req: &Request<T>) -> String {
    req.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default()
}

impl Api {
    pub fn new(node: Node) -> Self {
        let audit = AuditSink::new(node.clone());
        Self { node, audit }
    }

    pub fn into_server(self) -> tetrad_proto::v1::tetrad_server::TetradServer<Api> {
        tetrad_proto::v1::tetrad_server::TetradServer::new(self)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
    }

    fn status(&self, e: ApiError) -> Status {
        let (code, kind) = match &e {
            ApiError::UnknownTenant(_) => (tonic::Code::NotFound, "unknown-tenant"),
            ApiError::UnknownSegment(_) => (tonic::Code::NotFound, "unknown-segment"),
            ApiError::UnknownRecord(_) => (tonic::Code::NotFound, "unknown-record"),
            ApiError::Conflict { .. } => (tonic::Code::AlreadyExists, "segment-conflict"),
            ApiError::BadRequest(_) => (tonic::Code::InvalidArgument, "bad-request"),
            ApiError::NotLeader { .. } => (tonic::Code::FailedPrecondition, "not-leader"),
            ApiError::Unavailable(_) => (tonic::Code::Unavailable, "unavailable"),
            ApiError::OutcomeUnknown(_) => (tonic::Code::Aborted, "outcome-unknown"),
            ApiError::Internal(_) => (tonic::Code::Internal, "internal"),
        };
        let mut s = Status::new(code, e.to_string());
        s.metadata_mut().insert(ERROR_KIND_KEY, kind.parse().expect("ascii kind"));
        if let ApiError::NotLeader { leader: Some(l) } = e {
            if let Some(addr) = self.node.api_addr_of(l) {
                if let Ok(v) = addr.to_string().parse() {
                    s.metadata_mut().insert(LEADER_API_KEY, v);
                }
            }
        }
        s
    }

    /// The caller, from its verified client certificate.
    /// (`rpc` names the call in the audit log when the caller is refused before its action is
    /// known.)
    fn subject<T>(&self, req: &Request<T>, rpc: &'static str) -> Result<Subject, Status> {
        let certs = req.peer_certs();
        Subject::from_peer_certs(certs.as_deref().map(Vec::as_slice))
            .map_err(|e| self.refusal(e, rpc, None, &peer_of(req)))
    }

    /// The caller, if it may do `action`.
    fn allow<T>(&self, req: &Request<T>, action: Action<'_>) -> Result<Subject, Status> {
        let subject = self.subject(req, action.name())?;
        authorize(&subject, &action).map_err(|e| self.refusal(e, action.name(), action.tenant(), &peer_of(req)))?;
        Ok(subject)
    }

    /// Writes an admin action's outcome to the audit log (before the reply goes out) and maps an
    /// error to its status.
    async fn audited<R>(
        &self,
        subject: &Subject,
        action: Action<'_>,
        peer: &str,
        result: Result<R, ApiError>,
        detail: impl FnOnce(&R) -> String,
    ) -> Result<R, Status> {
        debug_assert!(action.is_admin());
        let outcome = match &result {
            Ok(r) => AuditOutcome::Done { detail: detail(r) },
            Err(e) => AuditOutcome::Failed { reason: e.to_string() },
        };
        let role = subject.role.text();
        let who = audit::Request {
            subject: &subject.name,
            role: &role,
            peer,
            action: action.name(),
            tenant: action.tenant(),
        };
        self.audit.action(&who, outcome).await;
        result.map_err(|e| self.status(e))
    }

    fn refusal(&self, e: AuthError, rpc: &str, tenant: Option<&str>, peer: &str) -> Status {
        let (code, kind) = match &e {
            AuthError::Unauthenticated(_) => (tonic::Code::Unauthenticated, "unauthenticated"),
            AuthError::Denied { .. } => (tonic::Code::PermissionDenied, "permission-denied"),
        };
        // Logged here, where the refusal is decided: the one record of it until the audit log.
        tracing::warn!(action = rpc, tenant = tenant.unwrap_or(""), reason = %e, "refused an API call");
        let (subject, role) = match &e {
            AuthError::Unauthenticated(_) => ("<unauthenticated>", ""),
            AuthError::Denied { subject, role, .. } => (subject.as_str(), role.as_str()),
        };
        self.audit.refused(&audit::Request { subject, role, peer, action: rpc, tenant }, &e.to_string());
        let mut s = Status::new(code, e.to_string());
        s.metadata_mut().insert(ERROR_KIND_KEY, kind.parse().expect("ascii kind"));
        s
    }

    fn tenant_info(&self, r: &TenantRecord, leader: Option<u64>, term: u64) -> TenantInfo {
        let name = |id: &u64| {
            self.node.config().nodes.iter().find(|p| p.id == *id).map(|p| p.name.clone()).unwrap_or_default()
        };
        TenantInfo {
            name: r.spec.name.clone(),
            mode: r.spec.mode.as_str().to_string(),
            primary: r.spec.primary.clone(),
            epoch: r.epoch,
            voters: r.voters.iter().map(name).collect(),
            learners: r.learners.iter().map(name).collect(),
            state: r.state.as_str().to_string(),
            created_at_ms: r.created_at_ms,
            leader: leader.as_ref().map(name).unwrap_or_default(),
            term,
            rpo_target_ms: r.spec.rpo_target_ms,
            on_lag: r.spec.on_lag.as_str().to_string(),
            regions: r.spec.regions.clone(),
        }
    }

    /// A recorded event in wire form; node ids become node names.
    fn event_info(&self, e: &TenantEvent) -> TenantEventInfo {
        TenantEventInfo {
            kind: e.kind.as_str().to_string(),
            at_ms: e.at_ms,
            from_epoch: e.from_epoch,
            to_epoch: e.to_epoch,
            rto_ms: e.rto_ms,
            lost_writes_min: e.lost_writes_min,
            lost_writes_max: e.lost_writes_max,
            loss_window_start_ms: e.loss_window_start_ms,
            loss_window_end_ms: e.loss_window_end_ms,
            old_voters: e.old_voters.iter().map(|v| self.node_label(*v)).collect(),
            divergent: e
                .tails
                .iter()
                .map(|(node, writes)| DivergentTail {
                    node: self.node_label(*node),
                    writes: writes
                        .iter()
                        .map(|w| TailWriteInfo {
                            name: w.name.clone(),
                            term: w.term,
                            index: w.index,
                            proposed_at_ms: w.proposed_at_ms,
                        })
                        .collect(),
                })
                .collect(),
            detail: e.detail.clone(),
        }
    }

    /// The rest of a push by reference (`PushHeader.chunks` set): the chunk frames, streamed into
    /// `Node::push_chunked` one at a time, so no more than a few chunks of the object are in memory.
    async fn push_by_ref(
        &self,
        header: PushHeader,
        stream: Streaming<PushWalRequest>,
    ) -> Result<Response<PushWalReply>, Status> {
        let bad = |m: String| self.status(ApiError::BadRequest(m));
        let Some(blake3) = parse_hex(&header.blake3) else {
            return Err(bad(format!("blake3 {:?} is not 64 hex digits", header.blake3)));
        };
        let chunks = chunk_hashes(&header.chunks).map_err(&bad)?;
        self.node.tenant_record(&header.tenant).await.map_err(|e| self.status(e))?;
        let body = futures::stream::unfold(stream, |mut stream| async move {
            let item = match next_within(&mut stream).await {
                Err(m) => Err(ApiError::BadRequest(m)),
                Ok(None) => return None,
                Ok(Some(Err(status))) => Err(ApiError::BadRequest(format!("the push broke off: {}", status.message()))),
                Ok(Some(Ok(PushWalRequest { msg: Some(push_wal_request::Msg::Chunk(c)) }))) => Ok((c.index, c.data)),
                Ok(Some(Ok(_))) => {
                    Err(ApiError::BadRequest("a push by reference carries one header, then chunks".into()))
                }
            };
            Some((item, stream))
        });
        let push = crate::node::RefPush { name: header.name.clone(), blake3, size: header.size, chunks };
        let out = self.node.push_chunked(&header.tenant, push, Box::pin(body)).await.map_err(|e| self.status(e))?;
        Ok(Response::new(push_reply(header.name, out)))
    }

    fn node_name(&self, id: u64) -> String {
        self.node.config().nodes.iter().find(|p| p.id == id).map(|p| p.name.clone()).unwrap_or_default()
    }

    /// A node's name, or its id when this node's configuration does not list it: a record of
    /// where lost writes sit must never show a blank.
    fn node_label(&self, id: u64) -> String {
        let name = self.node_name(id);
        if name.is_empty() {
            format!("node-{id}")
        } else {
            name
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Tetrad for Api {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let subject = self.allow(&req, Action::ViewCluster)?;
        let st = self.node.status().await;
        let nodes = st
            .nodes
            .iter()
            .map(|n| NodeStatus {
                id: n.name.clone(),
                region: n.region.clone(),
                up: n.up,
                api_addr: n.api_addr.to_string(),
                last_heartbeat_ago_ms: n.last_heartbeat_ago_ms.map(|x| x as i64).unwrap_or(-1),
            })
            .collect();
        let tenants = st
            .tenants
            .iter()
            .filter(|t| subject.sees_tenant(&t.record.spec.name))
            .map(|t| {
                let p = t.probe.as_ref();
                TenantStatus {
                    name: t.record.spec.name.clone(),
                    mode: t.record.spec.mode.as_str().to_string(),
                    state: t.record.state.as_str().to_string(),
                    epoch: t.record.epoch,
                    leader: p.and_then(|p| p.leader).map(|l| self.node_name(l)).unwrap_or_default(),
                    term: p.map(|p| p.term).unwrap_or(0),
                    lag: p
                        .map(|p| {
                            p.lag
                                .iter()
                                .map(|l| RegionLag {
                                    region: l.region.clone(),
                                    writes: l.writes,
                                    bytes: l.bytes,
                                    seconds: l.seconds,
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    primary: t.record.spec.primary.clone(),
                    voters: t.record.voters.iter().map(|v| self.node_name(*v)).collect(),
                    segments: p.map(|p| p.segments).unwrap_or(0),
                    learners: t.record.learners.iter().map(|v| self.node_name(*v)).collect(),
                    rpo_target_ms: t.record.spec.rpo_target_ms,
                    on_lag: t.record.spec.on_lag.as_str().to_string(),
                    regions: t.record.spec.regions.clone(),
                }
            })
            .collect();
        Ok(Response::new(StatusReply {
            nodes,
            meta_leader: st.meta_leader.map(|l| self.node_name(l)).unwrap_or_default(),
            tenants,
        }))
    }

    async fn init_cluster(&self, req: Request<InitClusterRequest>) -> Result<Response<InitClusterReply>, Status> {
        let subject = self.allow(&req, Action::InitCluster)?;
        let did = self.node.init_cluster().await;
        let detail = |d: &bool| if *d { "initialized the cluster" } else { "already initialized" }.to_string();
        let did = self.audited(&subject, Action::InitCluster, &peer_of(&req), did, detail).await?;
        Ok(Response::new(InitClusterReply {
            already_initialized: !did,
            meta_leader: self.node.meta_leader().map(|l| self.node_name(l)).unwrap_or_default(),
        }))
    }

    async fn create_tenant(&self, req: Request<CreateTenantRequest>) -> Result<Response<TenantInfo>, Status> {
        let subject = self.allow(&req, Action::CreateTenant(&req.get_ref().name))?;
        let peer = peer_of(&req);
        let r = req.into_inner();
        let primary = if r.primary.is_empty() { None } else { Some(r.primary.as_str()) };
        let rec = self.node.create_tenant(&r.name, &r.mode, primary, r.rpo_target_ms, &r.on_lag, &r.regions).await;
        let detail = |t: &TenantRecord| {
            format!("{} tenant, primary {}, epoch {}", t.spec.mode.as_str(), t.spec.primary, t.epoch)
        };
        let rec = self.audited(&subject, Action::CreateTenant(&r.name), &peer, rec, detail).await?;
        Ok(Response::new(self.tenant_info(&rec, None, 0)))
    }

    async fn list_tenants(&self, req: Request<ListTenantsRequest>) -> Result<Response<ListTenantsReply>, Status> {
        let subject = self.allow(&req, Action::ViewCluster)?;
        let recs = self.node.tenant_records().await;
        Ok(Response::new(ListTenantsReply {
            tenants: recs
                .iter()
                .filter(|r| subject.sees_tenant(&r.spec.name))
                .map(|r| self.tenant_info(r, None, 0))
                .collect(),
        }))
    }

    async fn get_tenant(&self, req: Request<GetTenantRequest>) -> Result<Response<TenantInfo>, Status> {
        self.allow(&req, Action::GetTenant(&req.get_ref().name))?;
        let name = req.into_inner().name;
        let rec = self.node.tenant_record(&name).await.map_err(|e| self.status(e))?;
        let st = self.node.status().await;
        let probe = st.tenants.iter().find(|t| t.record.spec.name == name).and_then(|t| t.probe.clone());
        Ok(Response::new(self.tenant_info(
            &rec,
            probe.as_ref().and_then(|p| p.leader),
            probe.map(|p| p.term).unwrap_or(0),
        )))
    }

    async fn push_wal(&self, req: Request<Streaming<PushWalRequest>>) -> Result<Response<PushWalReply>, Status> {
        // The tenant is in the first message: the caller is known now, its right to the tenant
        // is checked as soon as the header arrives, before any data is read.
        let subject = self.subject(&req, "PushWal")?;
        let peer = peer_of(&req);
        let mut stream = req.into_inner();
        let bad = |m: String| self.status(ApiError::BadRequest(m));
        let header = match next_within(&mut stream).await.map_err(&bad)? {
            Some(Ok(PushWalRequest { msg: Some(push_wal_request::Msg::Header(h)) })) => h,
            Some(Ok(_)) => return Err(bad("the first message of a push must be its header".into())),
            Some(Err(e)) => return Err(e),
            None => return Err(bad("empty push".into())),
        };
        let action = Action::PushWal(&header.tenant);
        authorize(&subject, &action).map_err(|e| self.refusal(e, action.name(), action.tenant(), &peer))?;
        if !header.chunks.is_empty() {
            return self.push_by_ref(header, stream).await;
        }
        if header.size > MAX_SEGMENT_BYTES {
            return Err(bad(format!(
                "segment of {} bytes exceeds the limit max_segment_bytes = {MAX_SEGMENT_BYTES}",
                header.size
            )));
        }
        let Some(hash) = parse_hex(&header.blake3) else {
            return Err(bad(format!("blake3 {:?} is not 64 hex digits", header.blake3)));
        };
        // Validate cheap things before receiving the bytes.
        crate::tenant::catalog::validate_name(&header.name).map_err(|e| bad(e.to_string()))?;
        self.node.tenant_record(&header.tenant).await.map_err(|e| self.status(e))?;
        // Memory grows with the bytes that arrive, never with what the header claims: a header
        // that claims the maximum and sends nothing costs one chunk's reservation, and ends when
        // the idle deadline passes.
        let mut data = Vec::with_capacity(header.size.min(CHUNK_BYTES as u64) as usize);
        while let Some(msg) = next_within(&mut stream).await.map_err(&bad)? {
            match msg?.msg {
                Some(push_wal_request::Msg::Data(d)) => {
                    if data.len() + d.len() > header.size as usize {
                        return Err(bad(format!("more bytes than the header's size {}", header.size)));
                    }
                    data.extend_from_slice(&d);
                }
                _ => return Err(bad("a push carries one header, then data".into())),
            }
        }
        if data.len() as u64 != header.size {
            return Err(bad(format!("received {} bytes, header said {}", data.len(), header.size)));
        }
        let out = self.node.push(&header.tenant, &header.name, hash, data).await.map_err(|e| self.status(e))?;
        Ok(Response::new(push_reply(header.name, out)))
    }

    async fn missing_chunks(&self, req: Request<MissingChunksRequest>) -> Result<Response<MissingChunksReply>, Status> {
        self.allow(&req, Action::PushWal(&req.get_ref().tenant))?;
        let r = req.into_inner();
        let hashes = chunk_hashes(&r.hashes).map_err(|m| self.status(ApiError::BadRequest(m)))?;
        let missing = self.node.missing_chunks(&r.tenant, &hashes).await.map_err(|e| self.status(e))?;
        Ok(Response::new(MissingChunksReply { missing }))
    }

    type FetchWalStream = BoxStream<FetchWalReply>;

    async fn fetch_wal(&self, req: Request<FetchWalRequest>) -> Result<Response<Self::FetchWalStream>, Status> {
        self.allow(&req, Action::FetchWal(&req.get_ref().tenant))?;
        let r = req.into_inner();
        let rec = self.node.segment(&r.tenant, &r.name).await.map_err(|e| self.status(e))?;
        let node = self.node.clone();
        let tenant = r.tenant.clone();
        let header = FetchWalReply {
            msg: Some(fetch_wal_reply::Msg::Header(SegmentHeader {
                name: rec.name.clone(),
                size: rec.size,
                blake3: hex(&rec.blake3),
            })),
        };
        // Chunks are read one at a time as the client consumes them, so a large segment never
        // sits in memory whole.
        let chunks = rec.chunks.clone();
        let body = futures::stream::iter(chunks).then(move |h| {
            let node = node.clone();
            let tenant = tenant.clone();
            async move {
                match node.read_chunk(&tenant, &h).await {
                    Ok(bytes) => {
                        debug_assert!(bytes.len() <= CHUNK_BYTES);
                        Ok(FetchWalReply { msg: Some(fetch_wal_reply::Msg::Data(bytes)) })
                    }
                    Err(e) => {
                        let mut s = Status::internal(format!("reading segment data failed: {e}"));
                        s.metadata_mut().insert(ERROR_KIND_KEY, "internal".parse().expect("ascii"));
                        Err(s)
                    }
                }
            }
        });
        let stream = futures::stream::once(async move { Ok(header) }).chain(body);
        Ok(Response::new(Box::pin(stream)))
    }

    type VerifyTenantStream = BoxStream<VerifyTenantReply>;

    async fn verify_tenant(
        &self,
        req: Request<VerifyTenantRequest>,
    ) -> Result<Response<Self::VerifyTenantStream>, Status> {
        self.allow(&req, Action::VerifyTenant(&req.get_ref().tenant))?;
        let r = req.into_inner();
        let rec = self.node.tenant_record(&r.tenant).await.map_err(|e| self.status(e))?;
        // The progress bar's total: the tenant's segment bytes (0 when the list fails; the
        // verification itself does not need it).
        let expected_bytes = match self.node.list(&r.tenant, "").await {
            Ok(segs) => segs.iter().map(|s| s.size).sum(),
            Err(_) => 0,
        };
        let group = rec.group();
        let members: Vec<(u64, String)> = rec.members().map(|m| (m, self.node_label(m))).collect();
        let node = self.node.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        // Members one after the other, batch by batch: each batch has its own deadline (in
        // `verify_batch`), so a large tenant takes as long as its batches, and a client that
        // went away stops the run at its next message.
        tokio::spawn(async move {
            for (id, label) in members {
                let mut total = crate::raft::wire::VerifyCounts::default();
                let mut after = None;
                let error = loop {
                    match node.verify_batch(id, &group, after.clone(), VERIFY_BATCH_BYTES).await {
                        Ok((c, next)) => {
                            total.add(&c);
                            let progress = VerifyProgress {
                                member: label.clone(),
                                so_far: Some(counts_msg(&total)),
                                expected_bytes,
                            };
                            if tx
                                .send(Ok(VerifyTenantReply { msg: Some(verify_tenant_reply::Msg::Progress(progress)) }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            match next {
                                Some(n) => after = Some(n),
                                None => break None,
                            }
                        }
                        Err(e) => break Some(e),
                    }
                };
                let summary = VerifyMemberSummary {
                    member: label,
                    reachable: error.is_none(),
                    error: error.unwrap_or_default(),
                    counts: Some(counts_msg(&total)),
                };
                if tx
                    .send(Ok(VerifyTenantReply { msg: Some(verify_tenant_reply::Msg::Member(summary)) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_wal(&self, req: Request<ListWalRequest>) -> Result<Response<ListWalReply>, Status> {
        self.allow(&req, Action::ListWal(&req.get_ref().tenant))?;
        let r = req.into_inner();
        // No page size: an old client, which cannot follow a token, gets the whole list as before.
        let (segs, next_after) = match r.page_size {
            None => (self.node.list(&r.tenant, &r.prefix).await.map_err(|e| self.status(e))?, None),
            Some(n) => {
                let page = self
                    .node
                    .list_page(&r.tenant, &r.prefix, &r.after, crate::node::page_limit(n))
                    .await
                    .map_err(|e| self.status(e))?;
                (page.segments, page.next_after)
            }
        };
        Ok(Response::new(ListWalReply {
            segments: segs
                .into_iter()
                .map(|s| SegmentInfo {
                    name: s.name,
                    size: s.size,
                    blake3: hex(&s.blake3),
                    proposed_at_ms: s.proposed_at_ms,
                })
                .collect(),
            next_after: next_after.unwrap_or_default(),
        }))
    }

    async fn put_record(&self, req: Request<PutRecordRequest>) -> Result<Response<RecordWriteReply>, Status> {
        self.allow(&req, Action::PutRecord(&req.get_ref().tenant))?;
        let r = req.into_inner();
        let ops = r
            .records
            .into_iter()
            .map(|p| RecordOp::Put { key: p.key, value: p.value, if_version: p.if_version })
            .collect();
        let w = self.node.records(&r.tenant, ops).await.map_err(|e| self.status(e))?;
        Ok(Response::new(record_write_reply(w.reply, w.epoch)))
    }

    async fn delete_record(&self, req: Request<DeleteRecordRequest>) -> Result<Response<RecordWriteReply>, Status> {
        self.allow(&req, Action::DeleteRecord(&req.get_ref().tenant))?;
        let r = req.into_inner();
        let ops = vec![RecordOp::Delete { key: r.key, if_version: r.if_version }];
        let w = self.node.records(&r.tenant, ops).await.map_err(|e| self.status(e))?;
        Ok(Response::new(record_write_reply(w.reply, w.epoch)))
    }

    async fn get_record(&self, req: Request<GetRecordRequest>) -> Result<Response<RecordInfo>, Status> {
        self.allow(&req, Action::GetRecord(&req.get_ref().tenant))?;
        let r = req.into_inner();
        let row = self.node.record(&r.tenant, &r.key).await.map_err(|e| self.status(e))?;
        Ok(Response::new(RecordInfo {
            key: row.key,
            value: row.value,
            version: row.version,
            proposed_at_ms: row.proposed_at_ms,
        }))
    }

    async fn list_records(&self, req: Request<ListRecordsRequest>) -> Result<Response<ListRecordsReply>, Status> {
        self.allow(&req, Action::ListRecords(&req.get_ref().tenant))?;
        let r = req.into_inner();
        let page = self
            .node
            .record_page(&r.tenant, &r.prefix, &r.after, crate::node::page_limit(r.page_size), r.with_values)
            .await
            .map_err(|e| self.status(e))?;
        Ok(Response::new(ListRecordsReply {
            records: page
                .records
                .into_iter()
                .map(|row| RecordInfo {
                    key: row.key,
                    value: row.value,
                    version: row.version,
                    proposed_at_ms: row.proposed_at_ms,
                })
                .collect(),
            next_after: page.next_after.unwrap_or_default(),
        }))
    }

    // The operator calls below go through the meta group's leader (the node forwards its
    // proposals there), so whichever node tetradctl reaches serves them: no redirect.

    async fn switchover_tenant(
        &self,
        req: Request<SwitchoverTenantRequest>,
    ) -> Result<Response<TenantEventInfo>, Status> {
        let subject = self.allow(&req, Action::Switchover(&req.get_ref().name))?;
        let peer = peer_of(&req);
        let r = req.into_inner();
        let ev = if r.to_region.is_empty() {
            Err(ApiError::BadRequest("a switchover needs a target region".into()))
        } else {
            self.node.switchover(&r.name, &r.to_region).await
        };
        let detail = |e: &TenantEvent| format!("to {}: {}", r.to_region, event_detail(e));
        let ev = self.audited(&subject, Action::Switchover(&r.name), &peer, ev, detail).await?;
        Ok(Response::new(self.event_info(&ev)))
    }

    async fn failover_tenant(&self, req: Request<FailoverTenantRequest>) -> Result<Response<TenantEventInfo>, Status> {
        let subject = self.allow(&req, Action::Failover(&req.get_ref().name))?;
        let peer = peer_of(&req);
        let r = req.into_inner();
        let ev = if r.to_region.is_empty() {
            Err(ApiError::BadRequest("a manual failover needs a target region".into()))
        } else {
            self.node.manual_failover(&r.name, &r.to_region, r.accept_data_loss).await
        };
        let detail = |e: &TenantEvent| format!("to {}: {}", r.to_region, event_detail(e));
        let ev = self.audited(&subject, Action::Failover(&r.name), &peer, ev, detail).await?;
        Ok(Response::new(self.event_info(&ev)))
    }

    async fn set_tenant_mode(&self, req: Request<SetTenantModeRequest>) -> Result<Response<TenantInfo>, Status> {
        let subject = self.allow(&req, Action::SetMode(&req.get_ref().name))?;
        let peer = peer_of(&req);
        let r = req.into_inner();
        let rec = self.node.set_mode(&r.name, &r.mode, r.rpo_target_ms, r.on_lag.as_deref()).await;
        let detail = |t: &TenantRecord| {
            format!(
                "mode {}, rpo target {} ms, on lag {}",
                t.spec.mode.as_str(),
                t.spec.rpo_target_ms,
                t.spec.on_lag.as_str()
            )
        };
        let rec = self.audited(&subject, Action::SetMode(&r.name), &peer, rec, detail).await?;
        Ok(Response::new(self.tenant_info(&rec, None, 0)))
    }

    async fn tenant_history(&self, req: Request<TenantHistoryRequest>) -> Result<Response<TenantHistoryReply>, Status> {
        self.allow(&req, Action::TenantHistory(&req.get_ref().name))?;
        let name = req.into_inner().name;
        let events = self.node.tenant_history(&name).await.map_err(|e| self.status(e))?;
        Ok(Response::new(TenantHistoryReply { events: events.iter().map(|e| self.event_info(e)).collect() }))
    }

    async fn list_audit(&self, req: Request<ListAuditRequest>) -> Result<Response<ListAuditReply>, Status> {
        self.allow(&req, Action::ReadAudit)?;
        let r = req.into_inner();
        let limit = if r.limit == 0 { AUDIT_RETAINED_MAX } else { (r.limit as usize).min(AUDIT_RETAINED_MAX) };
        let tenant = (!r.tenant.is_empty()).then_some(r.tenant.as_str());
        let (entries, dropped) = self.node.audit_log(tenant, r.since_ms, limit).await;
        let entries = entries
            .into_iter()
            .map(|(seq, e)| AuditEntryInfo {
                seq,
                at_ms: e.at_ms,
                last_at_ms: e.last_at_ms,
                node: self.node_name(e.node),
                subject: e.subject,
                role: e.role,
                peer: e.peer,
                action: e.action,
                tenant: e.tenant.unwrap_or_default(),
                outcome: e.outcome.kind().to_string(),
                detail: e.outcome.text().to_string(),
                count: e.count,
            })
            .collect();
        Ok(Response::new(ListAuditReply { entries, dropped, retained_max: AUDIT_RETAINED_MAX as u64 }))
    }
}

/// An event in one line, for the audit log.
fn event_detail(e: &TenantEvent) -> String {
    let lost = e.lost_writes_min.map(|n| format!(", at least {n} acked writes lost")).unwrap_or_default();
    format!("{} epoch {} -> {}{lost}", e.kind.as_str(), e.from_epoch, e.to_epoch)
}
