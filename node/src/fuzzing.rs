//! Fuzz targets: one function per decoder of bytes that come from the network or the disk, each
//! of which must return (never panic, never allocate on a claimed length, never loop) on any
//! input. The cargo-fuzz crate (`tests/fuzz/`) and the stable regression test over its committed
//! corpus (`node/tests/fuzz_corpus.rs`) call the same functions, so a crash the fuzzer finds is
//! replayed by every CI run once its input is in the corpus (ARCHITECTURE.md, "Fuzzing").
//!
//! Where it is cheap a target also checks a round trip: a value that decodes encodes to bytes
//! that decode and encode to the same bytes (bytes, not values, so a NaN compares equal).
//!
//! Not an API: hidden from the docs and used by nothing but fuzzing.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::meta::state::MetaState;
use crate::raft::types::{LogId, StoredMembership, Vote};
use crate::raft::wire::{self, Envelope, ReplyEnvelope};
use crate::seams::disk::{Disk, DiskRef, RandomAccessFile};
use crate::storage::log_files::LogFiles;
use crate::storage::raft_log::{self, EntryBytes};
use crate::storage::versioned;
use crate::tenant::catalog::SegmentRecord;

/// A fuzz target: runs one decoder on any bytes.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory (`tests/fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_request", wire_request),
    ("wire_reply", wire_reply),
    ("log_file", log_file),
    ("log_record", log_record),
    ("raft_kv_value", raft_kv_value),
    ("sm_snapshot_file", sm_snapshot_file),
    ("tenant_snapshot", tenant_snapshot),
    ("catalog_row", catalog_row),
    ("meta_state", meta_state),
    ("meta_audit", meta_audit),
    ("node_config", node_config),
    ("grpc_message", grpc_message),
    ("cert_role", cert_role),
];

/// The role in a client or node certificate (`tetrad_config::role`), read after rustls has
/// verified the certificate but before anything trusts its contents; and the same bytes as a
/// bare role value, whose decoding round-trips.
pub fn cert_role(data: &[u8]) {
    use tetrad_config::role::{role_from_cert_der, Role};
    let _ = role_from_cert_der(data);
    round_trip(data, |b| Role::decode_value(b).ok(), Role::encode_value);
}

/// `decode` then, if it decoded, `encode(decode(encode(v))) == encode(v)`.
fn round_trip<T>(data: &[u8], decode: impl Fn(&[u8]) -> Option<T>, encode: impl Fn(&T) -> Vec<u8>) {
    let Some(v) = decode(data) else { return };
    let once = encode(&v);
    let again = decode(&once).unwrap_or_else(|| panic!("re-encoded value does not decode: {once:?}"));
    assert_eq!(encode(&again), once, "encode(decode(encode(v))) differs from encode(v)");
}

/// A peer request as it arrives over QUIC (`raft::wire::decode`).
pub fn wire_request(data: &[u8]) {
    round_trip(data, |b| wire::decode::<Envelope>(b).ok(), wire::encode);
}

/// A peer reply as it arrives over QUIC.
pub fn wire_reply(data: &[u8]) {
    round_trip(data, |b| wire::decode::<ReplyEnvelope>(b).ok(), wire::encode);
}

/// A Raft log file as `LogFiles::open` finds it after a crash or damage: the first byte says
/// whether the rest is the head (bit 0 clear) or an older file before an empty head (set), and
/// whether a valid file header is put in front of it (bit 1), so the fuzzer reaches the batches.
/// Every record recovered is then decoded as `raft_log` and `log_store` do on replay.
pub fn log_file(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let dir = Path::new("/fuzz/raftlog");
    let disk = MemDisk::default();
    let mut first = Vec::new();
    if mode & 2 != 0 {
        first.extend_from_slice(&raft_log_file_header(0));
    }
    first.extend_from_slice(rest);
    disk.put(&dir.join(format!("{:016x}.log", 0)), first);
    if mode & 1 != 0 {
        disk.put(&dir.join(format!("{:016x}.log", 1)), raft_log_file_header(1).to_vec());
    }
    let disk: DiskRef = Arc::new(disk);
    let _ = LogFiles::open(disk, dir, 1 << 20, |_, payload| {
        log_record(payload);
        Ok(())
    });
}

/// The 16-byte header of Raft log file `seq` (`storage/log_files.rs`).
fn raft_log_file_header(seq: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(b"TETRADLG");
    h[8..].copy_from_slice(&seq.to_be_bytes());
    h
}

/// One Raft log record's payload: its kind, group and index (`raft_log`), then, for an entry,
/// the entry itself in the versioned or the legacy form (`log_store`).
pub fn log_record(data: &[u8]) {
    let Ok((kind, group, _index, start)) = raft_log::decode(data) else { return };
    let bytes = EntryBytes { payload: data.to_vec(), start };
    if raft_log::is_entry(kind) {
        let _ = crate::raft::log_store::decode_record(group, &bytes);
    }
}

/// A value of the `kv` table the Raft layer keeps (vote, purged, applied, membership), read as
/// each of the types stored there.
pub fn raft_kv_value(data: &[u8]) {
    fn one<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) {
        round_trip(data, |b| versioned::decode_value::<T>("fuzz", b).ok(), |v| versioned::encode_value(v));
    }
    one::<Vote>(data);
    one::<Option<LogId>>(data);
    one::<StoredMembership>(data);
}

/// A state machine's snapshot file (`raft/state_machine.rs`), of every version it reads; the
/// snapshot data inside is then read as a tenant snapshot, as an install would.
pub fn sm_snapshot_file(data: &[u8]) {
    use crate::raft::state_machine::{decode_snapshot_file, encode_snapshot_file};
    round_trip(data, |b| decode_snapshot_file("fuzz", b).ok(), encode_snapshot_file);
    if let Ok(file) = decode_snapshot_file("fuzz", data) {
        tenant_snapshot(&file.data);
    }
}

/// A tenant group's snapshot data (`tenant/group_state.rs`), by reference or legacy.
pub fn tenant_snapshot(data: &[u8]) {
    use crate::tenant::group_state::{decode_snapshot, Decoded};
    let by_ref = |b: &[u8]| match decode_snapshot(b) {
        Ok(Decoded::ByRef(s)) => Some(s),
        _ => None,
    };
    round_trip(data, by_ref, |s| s.encode());
}

/// A catalog row as stored in redb (`group_state::encode_row`: a version byte, then postcard).
pub fn catalog_row(data: &[u8]) {
    round_trip(data, |b| crate::tenant::group_state::decode_row(b).ok(), crate::tenant::group_state::encode_row);
    // A row of a format-1 store before its upgrade: bare postcard.
    round_trip(
        data,
        |b| postcard::from_bytes::<SegmentRecord>(b).ok(),
        |v| postcard::to_stdvec(v).expect("a record encodes"),
    );
}

/// The meta directory as stored per apply (postcard `MetaState`, `meta/state.rs`).
pub fn meta_state(data: &[u8]) {
    round_trip(
        data,
        |b| postcard::from_bytes::<MetaState>(b).ok(),
        |v| postcard::to_stdvec(v).expect("a meta state encodes"),
    );
}

/// The meta group's audit log as stored and sent (`meta/state.rs`): a snapshot (the directory's
/// encoding, then the log's), one audit row (an `AuditEntry`), and the retained range row.
pub fn meta_audit(data: &[u8]) {
    use crate::meta::state::{AuditEntry, AuditLog};
    if let Ok((_, rest)) = postcard::take_from_bytes::<MetaState>(data) {
        let _ = postcard::from_bytes::<AuditLog>(rest);
    }
    round_trip(
        data,
        |b| postcard::from_bytes::<AuditEntry>(b).ok(),
        |v| postcard::to_stdvec(v).expect("an audit entry encodes"),
    );
    let _ = postcard::from_bytes::<(u64, u64)>(data);
}

/// A node config file (TOML, `tetrad-config`): parse and validate, and a config that passes
/// prints to TOML that parses again.
pub fn node_config(data: &[u8]) {
    use tetrad_config::file::NodeConfig;
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.toml");
    round_trip(
        text.as_bytes(),
        |b| NodeConfig::parse(std::str::from_utf8(b).ok()?, path).ok(),
        |c| c.to_toml().into_bytes(),
    );
}

/// A gRPC message body as the API server (requests) or tetradctl (replies) decodes it with
/// prost; the first byte picks the message type.
pub fn grpc_message(data: &[u8]) {
    use prost::Message;
    use tetrad_proto::v1 as p;
    fn one<M: Message + Default>(data: &[u8]) {
        round_trip(data, |b| M::decode(b).ok(), |m| m.encode_to_vec());
    }
    let Some((&which, body)) = data.split_first() else { return };
    let all: &[fn(&[u8])] = &[
        one::<p::CreateTenantRequest>,
        one::<p::GetTenantRequest>,
        one::<p::PushWalRequest>,
        one::<p::FetchWalRequest>,
        one::<p::ListWalRequest>,
        one::<p::SwitchoverTenantRequest>,
        one::<p::FailoverTenantRequest>,
        one::<p::SetTenantModeRequest>,
        one::<p::TenantHistoryRequest>,
        one::<p::StatusReply>,
        one::<p::PushWalReply>,
        one::<p::FetchWalReply>,
        one::<p::ListWalReply>,
        one::<p::ListTenantsReply>,
        one::<p::TenantInfo>,
        one::<p::TenantHistoryReply>,
    ];
    all[usize::from(which) % all.len()](body);
}

/// An in-memory disk for [`log_file`]: no syscalls, nothing left behind, one fuzz input per
/// instance.
#[derive(Debug, Default)]
struct MemDisk {
    files: Mutex<BTreeMap<PathBuf, Arc<MemFile>>>,
}

#[derive(Debug, Default)]
struct MemFile(Mutex<Vec<u8>>);

impl MemDisk {
    fn put(&self, path: &Path, bytes: Vec<u8>) {
        self.files.lock().expect("mem disk").insert(path.to_path_buf(), Arc::new(MemFile(Mutex::new(bytes))));
    }
}

impl RandomAccessFile for Arc<MemFile> {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.lock().expect("mem file").len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let b = self.0.lock().expect("mem file");
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start.checked_add(out.len()).and_then(|end| b.get(start..end)).ok_or(io::ErrorKind::UnexpectedEof)?;
        out.copy_from_slice(src);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut b = self.0.lock().expect("mem file");
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        if b.len() < start + data.len() {
            b.resize(start + data.len(), 0);
        }
        b[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        self.0.lock().expect("mem file").resize(len, 0);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
}

impl Disk for MemDisk {
    fn open_backend(&self, path: &Path) -> io::Result<Box<dyn RandomAccessFile>> {
        let mut files = self.files.lock().expect("mem disk");
        Ok(Box::new(files.entry(path.to_path_buf()).or_default().clone()))
    }
    fn write_file_durable(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.put(path, data.to_vec());
        Ok(())
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let files = self.files.lock().expect("mem disk");
        let f = files.get(path).ok_or(io::ErrorKind::NotFound)?;
        let bytes = f.0.lock().expect("mem file").clone();
        Ok(bytes)
    }
    fn exists(&self, path: &Path) -> bool {
        self.files.lock().expect("mem disk").contains_key(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.files.lock().expect("mem disk").remove(path);
        Ok(())
    }
    fn create_dir_all(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let files = self.files.lock().expect("mem disk");
        Ok(files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }
}

/// Real encodings of each target's input, written by the code that writes them in production:
/// the seed corpus (`node/tests/fuzz_corpus.rs` writes them under `tests/fuzz/corpus/` when
/// `TETRAD_FUZZ_WRITE_SEEDS=1`, and runs them through the targets on every run).
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    use crate::raft::types::{Command, Entry, SnapshotMeta};
    use crate::raft::wire::{RaftRpc, Reply, Request, VoteRequest};
    use crate::tenant::catalog::TenantCommand;
    use crate::tenant::group_state::TenantSnapshot;
    use openraft::EntryPayload;

    let log_id = |i: u64| LogId::new(1u64.into(), i);
    let data = b"a wal segment's bytes".to_vec();
    let hash = *blake3::hash(&data).as_bytes();
    let put = Entry {
        log_id: log_id(7),
        payload: EntryPayload::Normal(Command::Tenant(TenantCommand::PutSegment {
            name: "000000010000000000000001".into(),
            blake3: hash,
            data: data.clone(),
            proposed_at_ms: 1_700_000_000_000,
        })),
    };
    let blank = Entry { log_id: log_id(3), payload: EntryPayload::Blank };
    let vote = Vote::new(3, 1);
    let env = |body| wire::encode(&Envelope { from_incarnation: 42, body });
    let requests = vec![
        env(Request::GroupProbe { group: "t/acme/1".into() }),
        env(Request::Raft { group: "t/acme/1".into(), rpc: RaftRpc::Vote(VoteRequest::new(vote, Some(log_id(9)))) }),
        env(Request::Raft {
            group: "t/acme/1".into(),
            rpc: RaftRpc::Append(crate::raft::wire::AppendRequest {
                vote,
                prev_log_id: Some(log_id(2)),
                entries: vec![blank.clone(), put.clone()],
                leader_commit: Some(log_id(2)),
            }),
        }),
        env(Request::Raft {
            group: "t/acme/1".into(),
            rpc: RaftRpc::Snapshot { vote, meta: SnapshotMeta::default(), data: vec![0, 0] },
        }),
        env(Request::FetchChunk { group: "t/acme/1".into(), hash }),
        env(Request::CatalogNames { group: "t/acme/1".into() }),
        env(Request::JoinMeta { node: 4 }),
        env(Request::Seal { group: "t/acme/1".into() }),
    ];
    let reply = |body| wire::encode(&ReplyEnvelope { from_incarnation: 42, body });
    let replies = vec![
        reply(Reply::Chunk(data.clone())),
        reply(Reply::Names(vec![("000000010000000000000001".into(), hash)])),
        reply(Reply::Joined),
        reply(Reply::Tenant(None)),
        reply(Reply::Error(wire::WireError::NotLeader(Some(2)))),
        reply(Reply::Probe(wire::GroupProbeReply {
            leader: Some(1),
            term: 3,
            is_leader: true,
            last_index: 10,
            applied_index: 9,
            lag: vec![wire::RegionLagWire { region: "eu".into(), writes: 1, bytes: 100, seconds: 0.5 }],
            segments: 2,
        })),
    ];

    // Log records: the versioned form is the version byte, the `Record` variant (0: whole,
    // 1: sideloaded) and the value; the legacy form is the bare entry.
    let versioned_whole = |e: &Entry| {
        let mut b = vec![versioned::LOG_ENTRY_VERSION, 0];
        b.extend(postcard::to_stdvec(e).expect("entry encodes"));
        b
    };
    let sideloaded = crate::raft::log_store::SideloadedPut {
        log_id: log_id(7),
        name: "000000010000000000000001".into(),
        blake3: hash,
        size: data.len() as u64,
        chunks: vec![(hash, data.len() as u32)],
        proposed_at_ms: 1_700_000_000_000,
    };
    let mut side = vec![versioned::LOG_ENTRY_VERSION, 1];
    side.extend(postcard::to_stdvec(&sideloaded).expect("encodes"));
    let rec = |kind, body: &[u8]| raft_log::encode(kind, "t/acme/1", 7, body).expect("record encodes");
    let records = vec![
        rec(raft_log::KIND_ENTRY_VERSIONED, &versioned_whole(&blank)),
        rec(raft_log::KIND_ENTRY_VERSIONED, &versioned_whole(&put)),
        rec(raft_log::KIND_ENTRY_VERSIONED, &side),
        rec(raft_log::KIND_ENTRY, &postcard::to_stdvec(&put).expect("encodes")),
        rec(raft_log::KIND_TRUNCATE, &[]),
    ];

    // Log files, written by `LogFiles` itself on the in-memory disk: one batch of every record,
    // then a torn copy of a second batch.
    let mem = Arc::new(MemDisk::default());
    let dir = Path::new("/seed/raftlog");
    let files = LogFiles::open(mem.clone(), dir, 1 << 20, |_, _| Ok(())).expect("empty log opens");
    files.append(&records, &vec![true; records.len()], true).expect("append");
    let whole = mem.read_file(&dir.join(format!("{:016x}.log", 0))).expect("log file");
    let torn = {
        files.append(&records[..2], &[true, true], true).expect("append");
        let mut b = mem.read_file(&dir.join(format!("{:016x}.log", 0))).expect("log file");
        b.truncate(b.len() - 5);
        b
    };
    let with_mode = |mode: u8, b: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(b);
        v
    };
    let log_files = vec![with_mode(0, &whole), with_mode(0, &torn), with_mode(1, &whole), with_mode(2, &whole[16..])];

    let segment = SegmentRecord {
        name: "000000010000000000000001".into(),
        size: data.len() as u64,
        blake3: hash,
        chunks: vec![hash],
        proposed_at_ms: 1_700_000_000_000,
        term: 1,
        index: 7,
    };
    let snap = TenantSnapshot {
        segments: vec![segment.clone()],
        chunks: vec![crate::tenant::group_state::ChunkRef {
            hash,
            size: data.len() as u64,
            refs: 1,
            location: crate::tenant::group_state::ChunkLocation::Hot,
        }],
        records: vec![],
        record_counters: Default::default(),
    };
    let tenant_snaps = vec![
        snap.encode(),
        TenantSnapshot { segments: vec![], chunks: vec![], records: vec![], record_counters: Default::default() }
            .encode(),
        vec![0, 0],
    ];
    let sm_files = vec![
        crate::raft::state_machine::encode_snapshot_file(&crate::raft::state_machine::SnapshotFile {
            meta: SnapshotMeta { last_log_id: Some(log_id(7)), ..SnapshotMeta::default() },
            data: snap.encode(),
        }),
        versioned::encode_snapshot_file(&crate::raft::state_machine::SnapshotFile {
            meta: SnapshotMeta::default(),
            data: vec![0, 0],
        }),
    ];

    let kv = vec![
        versioned::encode_value(&vote),
        versioned::encode_value(&Some(log_id(5))),
        versioned::encode_value(&StoredMembership::default()),
    ];

    let config = "name = \"eu-west-1\"\ndata_dir = \"/tmp/x\"\nmeta_voters = [\"eu-west-1\"]\n\
                  [tls]\nca_cert = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
                  [[nodes]]\nid = 1\nname = \"eu-west-1\"\nregion = \"eu-west\"\n\
                  raft_addr = \"127.0.0.1:7000\"\napi_addr = \"127.0.0.1:8000\"\n";

    let grpc = {
        use prost::Message;
        use tetrad_proto::v1 as p;
        let tagged = |which: u8, b: Vec<u8>| {
            let mut v = vec![which];
            v.extend(b);
            v
        };
        vec![
            tagged(1, p::GetTenantRequest { name: "acme".into() }.encode_to_vec()),
            tagged(15, p::TenantHistoryReply::default().encode_to_vec()),
            tagged(13, p::ListTenantsReply { tenants: vec![p::TenantInfo::default()] }.encode_to_vec()),
        ]
    };

    vec![
        ("wire_request", requests),
        ("wire_reply", replies),
        ("log_file", log_files),
        ("log_record", records),
        ("raft_kv_value", kv),
        ("sm_snapshot_file", sm_files),
        ("tenant_snapshot", tenant_snaps),
        (
            "catalog_row",
            vec![crate::tenant::group_state::encode_row(&segment), postcard::to_stdvec(&segment).expect("encodes")],
        ),
        ("meta_state", vec![postcard::to_stdvec(&MetaState::default()).expect("encodes")]),
        ("meta_audit", audit_seeds()),
        ("node_config", vec![config.as_bytes().to_vec()]),
        ("grpc_message", grpc),
        ("cert_role", cert_role_seeds()),
    ]
}

/// An audit entry, and a snapshot with a one-entry log.
fn audit_seeds() -> Vec<Vec<u8>> {
    use crate::meta::state::{AuditEntry, AuditLog, AuditOutcome};
    let entry = AuditEntry {
        at_ms: 1_700_000_000_000,
        last_at_ms: 1_700_000_000_500,
        node: 3,
        subject: "acme-app".into(),
        role: "tenant:acme".into(),
        peer: "127.0.0.1".into(),
        action: "FailoverTenant".into(),
        tenant: Some("acme".into()),
        outcome: AuditOutcome::Refused { reason: "permission denied".into() },
        count: 2,
    };
    let mut snapshot = postcard::to_stdvec(&MetaState::default()).expect("encodes");
    let log = AuditLog { first_seq: 7, entries: [entry.clone()].into() };
    snapshot.extend(postcard::to_stdvec(&log).expect("encodes"));
    vec![postcard::to_stdvec(&entry).expect("encodes"), snapshot]
}

/// Certificates with each kind of role, one without, and a bare role value.
fn cert_role_seeds() -> Vec<Vec<u8>> {
    use tetrad_config::certs::{single_cert, CaBundle};
    use tetrad_config::role::Role;
    let ca = CaBundle::generate("fuzz").expect("a CA");
    let der = |pem: &str| single_cert(pem, "seed").expect("one certificate").to_vec();
    let tenant = Role::Tenant { tenant: "acme".into(), read_only: true };
    vec![
        der(&ca.issue_client("ops", &Role::Admin).expect("cert").cert_pem),
        der(&ca.issue_client("acme-reader", &tenant).expect("cert").cert_pem),
        der(&ca.issue_node("eu-west-1", 201, "eu-west").expect("cert").cert_pem),
        der(&ca.issue("plain").expect("cert").cert_pem),
        tenant.encode_value(),
    ]
}
