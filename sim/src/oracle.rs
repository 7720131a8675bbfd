//! The oracles checked once the faults heal, from the clients' ack log against what the cluster
//! serves:
//!
//! - liveness (within the budget): the tenant acks a new write within [`LIVENESS_BOUND`];
//! - sync claim (within the budget): every acked write is served, with its exact bytes. A replica
//!   whose copy rotted does not make a write lost when a healthy replica still has it; a write
//!   served with bytes that do not match its blake3 is a safety violation at any budget;
//! - safety (always): nothing is served that no client wrote, and every segment is served with
//!   the blake3 its writer sent; no two writes were acked at one log position (two leaders); no two
//!   epochs of a tenant acked at overlapping times;
//! - convergence (within the budget): the tenant's replicas that still have their identity hold
//!   identical catalogs;
//! - chunks held (within the budget, once converged): every member of the current epoch holds,
//!   durably on its own disk (read directly), every chunk of the catalog it applied, except
//!   chunk files the simulator rotted and nothing rewrote since.
//!
//! One leader per term is checked during the run (`monitor.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;

use tetrad_node::meta::state::{Mode, TenantEvent};
use tetrad_node::node::{ApiError, Node};

use crate::cluster::SimCluster;
use crate::fault::TenantInfo;
use crate::workload::{Ack, AckLog};

/// How long after healing the tenant has to ack a new write (and to elect a leader).
pub const LIVENESS_BOUND: Duration = Duration::from_secs(30);
/// How long after healing the replicas have to converge.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(60);
/// Acked writes read at once by the durability oracle.
const READS_IN_FLIGHT: usize = 64;
/// Most lines one oracle reports; the rest are counted.
const MAX_LINES: usize = 8;

#[derive(Debug, Default)]
pub struct Findings {
    pub violations: Vec<String>,
    /// Acked writes that are not served.
    pub lost: Vec<Ack>,
    /// Things worth knowing that break no claim (bit rot served around, say).
    pub notes: Vec<String>,
    pub checked: Vec<&'static str>,
    /// The tenant's recorded history (near-sync and async).
    pub history: Vec<TenantEvent>,
}

/// Collects the lines of one oracle, keeping at most [`MAX_LINES`].
struct Lines {
    kept: Vec<String>,
    more: usize,
}

impl Lines {
    fn new() -> Self {
        Self { kept: vec![], more: 0 }
    }
    fn push(&mut self, s: String) {
        if self.kept.len() < MAX_LINES {
            self.kept.push(s);
        } else {
            self.more += 1;
        }
    }
    fn into_vec(mut self, what: &str) -> Vec<String> {
        if self.more > 0 {
            self.kept.push(format!("{what}: and {} more like these", self.more));
        }
        self.kept
    }
}

/// A leader of the tenant among the nodes that serve, waiting at most `limit`.
pub async fn leader_of(c: &SimCluster, tenant: &str, limit: Duration) -> Option<Node> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        for n in c.reachable() {
            if n.list(tenant, "zz").await.is_ok() {
                return Some(n);
            }
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_corruption(e: &ApiError) -> bool {
    matches!(e, ApiError::Internal(m) if m.contains("corrupt") || m.contains("blake3 check"))
}

/// How reading one acked write ended.
#[derive(Default)]
enum Read {
    #[default]
    Served,
    Lost(String),
    /// No answer either way.
    Unknown(String),
}

pub async fn after_heal(
    c: &SimCluster,
    tenant: &TenantInfo,
    acks: &AckLog,
    within: bool,
    ctx: &crate::claims::Context,
) -> Findings {
    let mut f = Findings::default();
    let name = tenant.name.as_str();

    // Liveness.
    let probe = b"post-heal probe".to_vec();
    let h = *blake3::hash(&probe).as_bytes();
    acks.attempt("zz-probe", h);
    let live = async {
        let deadline = tokio::time::Instant::now() + LIVENESS_BOUND;
        loop {
            for n in c.reachable() {
                if n.push(name, "zz-probe", h, probe.clone()).await.is_ok() {
                    return true;
                }
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let acked_again = live.await;
    f.checked.push("liveness-after-heal");
    if !acked_again {
        let msg = format!("liveness: {name} acked no write within {LIVENESS_BOUND:?} after healing");
        if within {
            f.violations.push(msg);
        } else {
            f.notes.push(msg);
        }
    }
    let Some(leader) = leader_of(c, name, LIVENESS_BOUND).await else {
        let msg =
            format!("liveness: no leader for {name} within {LIVENESS_BOUND:?} after healing; nothing could be read");
        if within {
            f.violations.push(msg);
        } else {
            f.notes.push(msg);
        }
        return f;
    };

    // Every acked write, with its bytes: many reads at once, as many clients would, so that the
    // check costs little simulated time.
    let acked = acks.all();
    let mut safety = Lines::new();
    let mut lost_lines = Lines::new();
    let mut unread = Lines::new();
    let reads = futures::stream::iter(acked.iter().map(|a| {
        let leader = leader.clone();
        async move {
            let mut leader = leader;
            let mut out = Checked::default();
            for _ in 0..3 {
                out = read_acked(c, &leader, name, a).await;
                if !matches!(out.read, Read::Unknown(_)) {
                    break;
                }
                if let Some(l) = leader_of(c, name, Duration::from_secs(10)).await {
                    leader = l;
                }
            }
            out
        }
    }))
    .buffered(READS_IN_FLIGHT)
    .collect::<Vec<Checked>>()
    .await;
    for (a, out) in acked.iter().zip(reads) {
        out.safety.into_iter().for_each(|s| safety.push(s));
        f.notes.extend(out.notes);
        match out.read {
            Read::Served => {}
            Read::Lost(e) => {
                f.lost.push(a.clone());
                lost_lines.push(format!(
                    "sync claim: acked write {} (acked at {} ms by node {}, epoch {}) is lost: {e}",
                    a.name, a.acked_at_ms, a.by, a.epoch
                ));
            }
            Read::Unknown(e) => unread.push(format!("liveness: acked write {} could not be read: {e}", a.name)),
        }
    }
    f.checked.push("acked-bytes-match");
    let sync = tenant.mode == Mode::Sync;
    if sync {
        f.checked.push("sync-no-acked-loss");
    }
    if within {
        if sync {
            f.violations.extend(lost_lines.into_vec("sync claim"));
        }
        f.violations.extend(unread.into_vec("liveness"));
    } else if !f.lost.is_empty() {
        f.notes.push(format!("{} acked writes lost beyond the budget (not a violation)", f.lost.len()));
    }

    // Nothing served that was not written.
    let written = acks.written();
    match leader.list(name, "").await {
        Ok(list) => {
            let acked_names: BTreeSet<&str> = acked.iter().map(|a| a.name.as_str()).collect();
            for rec in list {
                match written.get(&rec.name) {
                    None => safety.push(format!("safety: segment {} is served but no client ever wrote it", rec.name)),
                    Some(b) if *b != rec.blake3 => safety
                        .push(format!("safety: segment {} is served with a blake3 its writer never sent", rec.name)),
                    Some(b) if !acked_names.contains(rec.name.as_str()) => {
                        if let Ok((_, data)) = leader.fetch(name, &rec.name).await {
                            if blake3::hash(&data).as_bytes() != b {
                                safety.push(format!("safety: unacked segment {} is served with wrong bytes", rec.name));
                            }
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        Err(e) => f.notes.push(format!("could not list {name} to check what it serves: {e}")),
    }
    // Nor a record.
    let mut after = String::new();
    loop {
        match leader.record_page(name, "", &after, 10_000, true).await {
            Ok(page) => {
                for r in &page.records {
                    let n = format!("record/{}", r.key);
                    if written.get(&n) != Some(blake3::hash(&r.value).as_bytes()) {
                        safety.push(format!("safety: record {} is served with bytes no client wrote under it", r.key));
                    }
                }
                match page.next_after {
                    Some(n) => after = n,
                    None => break,
                }
            }
            Err(e) => {
                f.notes.push(format!("could not list {name}'s records to check what it serves: {e}"));
                break;
            }
        }
    }
    f.checked.push("nothing-served-unwritten");
    // Conditions: what the clients saw (a conditional write that succeeded against a version it
    // never saw, a retry not recognised), in or beyond the budget alike.
    f.checked.push("record-conditions-hold");
    f.violations.extend(acks.condition_violations().into_iter().map(|v| format!("record conditions: {v}")));

    // One write per acked log position, and no two epochs acking at once.
    let mut at: BTreeMap<(u64, u64, u64), &str> = BTreeMap::new();
    let mut spans: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for a in &acked {
        let s = spans.entry(a.epoch).or_insert((a.acked_at_ms, a.acked_at_ms));
        s.0 = s.0.min(a.acked_at_ms);
        s.1 = s.1.max(a.acked_at_ms);
        // An already-present write's position is the entry that first stored it, maybe in an
        // older epoch (a promotion carries the catalog over): not a new ack at that position.
        if a.term == 0 || a.index == 0 || a.already_present {
            continue;
        }
        match at.get(&(a.epoch, a.term, a.index)) {
            Some(other) if *other != a.name => safety.push(format!(
                "safety: writes {other} and {} were both acked at epoch {} term {} index {}",
                a.name, a.epoch, a.term, a.index
            )),
            _ => {
                at.insert((a.epoch, a.term, a.index), &a.name);
            }
        }
    }
    let spans: Vec<_> = spans.into_iter().collect();
    for w in spans.windows(2) {
        if w[1].1 .0 <= w[0].1 .1 {
            safety.push(format!("safety: epochs {} and {} of {name} acked at overlapping times", w[0].0, w[1].0));
        }
    }
    f.checked.push("one-write-per-log-position");
    f.checked.push("epochs-never-ack-together");
    f.violations.extend(safety.into_vec("safety"));

    let claims = crate::claims::check(c, tenant, &acked, &f.lost, within, ctx).await;
    f.violations.extend(claims.violations);
    f.notes.extend(claims.notes);
    f.checked.extend(claims.checked);
    f.history = claims.history;

    if within && check_convergence(c, tenant, &leader, &mut f).await {
        check_chunks_held(c, tenant, &leader, &mut f).await;
    }
    f
}

/// Once the members converged (each applied the catalog the leader serves), each holds every
/// chunk of it durably: read from its simulated disk's durable image, the bytes that would
/// survive a power loss now. A snapshot install reported before its chunks are durable, or an
/// entry flushed before its chunks are, leaves a member counted (matched, promotable) without
/// the bytes. Chunk files the simulator rotted (and nothing rewrote) are left to the scrub.
async fn check_chunks_held(c: &SimCluster, tenant: &TenantInfo, leader: &Node, f: &mut Findings) {
    f.checked.push("members-hold-referenced-chunks");
    let (Ok(rec), Ok(segments)) = (leader.tenant_record(&tenant.name).await, leader.list(&tenant.name, "").await)
    else {
        f.notes.push(format!("chunks held: could not read {}'s record and catalog", tenant.name));
        return;
    };
    let all: Vec<u64> = rec.members().collect();
    let serving: Vec<u64> = c.serving().iter().map(|n| n.id()).filter(|id| all.contains(id)).collect();
    let mut lines = Lines::new();
    for id in serving {
        let Some(n) = c.nodes.get(&id) else { continue };
        let mut seen = BTreeSet::new();
        for seg in &segments {
            for h in &seg.chunks {
                if !seen.insert(*h) {
                    continue;
                }
                let x = tetrad_node::storage::chunks::hex(h);
                let path = tetrad_node::storage::chunks::tenant_chunk_path(&n.cfg.data_dir, &tenant.name, h);
                if n.disk.is_rotted(&path) {
                    continue;
                }
                let why = match n.disk.durable_contents(&path) {
                    None => "not on its disk".to_string(),
                    Some(d) if blake3::hash(&d).as_bytes() != h => {
                        format!("{} durable bytes that are not the chunk", d.len())
                    }
                    Some(_) => continue,
                };
                lines.push(format!(
                    "chunks held: node {} ({id}), a member of {} epoch {}, lacks chunk {x} of segment {}: {why}",
                    n.cfg.name, tenant.name, rec.epoch, seg.name
                ));
            }
        }
    }
    f.violations.extend(lines.into_vec("chunks held"));
}

/// What reading one acked write found.
#[derive(Default)]
struct Checked {
    read: Read,
    safety: Vec<String>,
    notes: Vec<String>,
}

/// Reads one acked write from `leader`; on a rotten copy there, from the other replicas.
async fn read_acked(c: &SimCluster, leader: &Node, tenant: &str, a: &Ack) -> Checked {
    let mut out = Checked::default();
    if let Some(version) = a.record {
        out.read = read_acked_record(leader, tenant, a, version, &mut out.safety).await;
        return out;
    }
    out.read = match leader.fetch(tenant, &a.name).await {
        Ok((rec, data)) => {
            if rec.blake3 != a.blake3 {
                out.safety.push(format!("safety: acked segment {} is served with a different blake3", a.name));
            } else if blake3::hash(&data).as_bytes() != &a.blake3 {
                out.safety.push(format!("safety: acked segment {} is served with bytes that fail its blake3", a.name));
            }
            Read::Served
        }
        Err(ApiError::UnknownSegment(_)) => Read::Lost("the cluster does not know it".into()),
        Err(e) if is_corruption(&e) => {
            let members: Vec<u64> = match leader.tenant_record(tenant).await {
                Ok(r) => r.members().collect(),
                Err(_) => vec![],
            };
            read_around_rot(c, leader, tenant, a, &members, &mut out.notes).await
        }
        Err(e) => Read::Unknown(e.to_string()),
    };
    out
}

/// Reads one acked record write (keys are written once, so the key must hold its bytes). The
/// version is the acked one, or a newer epoch's: a change the promoted replica held durable but
/// had not applied is applied when the new epoch is seeded, in that epoch's version range
/// (ARCHITECTURE.md, "Records"). Any other version, or other bytes, is a violation.
async fn read_acked_record(leader: &Node, tenant: &str, a: &Ack, version: u64, safety: &mut Vec<String>) -> Read {
    let key = a.name.strip_prefix("record/").unwrap_or(&a.name);
    match leader.record(tenant, key).await {
        Ok(row) => {
            if blake3::hash(&row.value).as_bytes() != &a.blake3 {
                safety.push(format!(
                    "safety: acked record {key} (version {version}) is served with other bytes at version {}",
                    row.version
                ));
            } else if row.version != version
                && tetrad_core::records::version_epoch(row.version) <= tetrad_core::records::version_epoch(version)
            {
                safety.push(format!(
                    "safety: acked record {key} was acked at version {version} and is served at version {}",
                    row.version
                ));
            }
            Read::Served
        }
        Err(ApiError::UnknownRecord(_)) => Read::Lost("the cluster does not know it".into()),
        Err(e) => Read::Unknown(e.to_string()),
    }
}

/// The leader's copy rotted; the write is safe if a healthy replica has every chunk.
async fn read_around_rot(
    c: &SimCluster,
    leader: &Node,
    tenant: &str,
    a: &Ack,
    voters: &[u64],
    notes: &mut Vec<String>,
) -> Read {
    let rec = match leader.segment(tenant, &a.name).await {
        Ok(r) => r,
        Err(e) => return Read::Unknown(e.to_string()),
    };
    let replicas: Vec<Node> = c.serving().into_iter().filter(|n| voters.contains(&n.id())).collect();
    let mut served_by = BTreeSet::new();
    for h in &rec.chunks {
        let mut ok = false;
        for n in &replicas {
            if let Ok(bytes) = n.read_chunk(tenant, h).await {
                if blake3::hash(&bytes).as_bytes() == h {
                    served_by.insert(n.id());
                    ok = true;
                    break;
                }
            }
        }
        if !ok {
            return Read::Lost("every replica's copy of a chunk is corrupt or missing".into());
        }
    }
    notes.push(format!(
        "bit rot: node {}'s copy of {} is corrupt (refused, not served); intact on {served_by:?}",
        leader.id(),
        a.name
    ));
    Read::Served
}

/// The current epoch's replicas (voters and learners) that keep their identity converge; answers
/// whether they did.
async fn check_convergence(c: &SimCluster, tenant: &TenantInfo, leader: &Node, f: &mut Findings) -> bool {
    f.checked.push("convergence");
    let deadline = tokio::time::Instant::now() + CONVERGENCE_BOUND;
    loop {
        let Ok(rec) = leader.tenant_record(&tenant.name).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let group = rec.group();
        let all: Vec<u64> = rec.members().collect();
        let members: Vec<Node> = c.serving().into_iter().filter(|n| all.contains(&n.id())).collect();
        let mut digests = BTreeMap::new();
        for n in &members {
            if let Some((_, segments, hash)) = n.replica_digest(&group).await {
                digests.insert(n.id(), (segments, hash));
            }
        }
        let distinct: BTreeSet<_> = digests.values().collect();
        let serving_voters = members.iter().filter(|n| rec.voters.contains(&n.id())).count();
        if distinct.len() == 1 && digests.len() == members.len() && serving_voters > rec.voters.len() / 2 {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            let summary: Vec<String> =
                digests.iter().map(|(id, (n, h))| format!("{id}: {n} segments {:02x}{:02x}", h[0], h[1])).collect();
            f.violations.push(format!(
                "convergence: replicas of {group} differ {CONVERGENCE_BOUND:?} after healing ({} of {} members answer): {}",
                digests.len(),
                members.len(),
                summary.join(", ")
            ));
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
