//! Simulated clients: they push WAL segments and remember exactly which pushes were acked, when,
//! by which node and with what bytes, and every segment they ever tried to write (acked or not),
//! so that the oracles can tell a lost ack from a byte that was never written. A push that got no
//! answer is retried with the same bytes (pushes are idempotent) and counts only once acked.
//!
//! The ack log can carry a one-shot hook that runs at the very instant of an ack, before any other
//! task moves: that is how a fault lands "right after an ack" (the leader's region loses power
//! with the acked entry possibly durable nowhere else), which is what catches a leader that acks
//! too early.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tetrad_node::node::{ApiError, Node};
use tetrad_node::seams::net::NodeId;

use crate::net::SimNet;
use crate::trace::Trace;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub tenant: String,
    pub name: String,
    pub blake3: [u8; 32],
    pub size: u64,
    /// Simulated time of the ack, ms since the run started.
    pub acked_at_ms: u64,
    pub epoch: u64,
    /// The entry's term and index as the leader reported them (0 when unknown).
    pub term: u64,
    pub index: u64,
    /// The node that answered.
    pub by: NodeId,
    /// The write was there already (a retry): term and index are those of the entry that stored
    /// it, which may belong to an older epoch whose log a promotion carried over.
    pub already_present: bool,
    /// A record write (`record/<key>` in `name`, the blake3 of its value): the version the ack
    /// gave it. `None` for a segment push.
    pub record: Option<u64>,
}

/// Runs once, at the instant of the next ack.
pub type AckHook = Box<dyn FnOnce(&Ack) + Send>;

#[derive(Default)]
struct Inner {
    acks: Vec<Ack>,
    /// Every segment a client tried to write: name -> blake3 of its bytes.
    written: BTreeMap<String, [u8; 32]>,
    hook: Option<AckHook>,
    /// What the clients saw break a record condition's promise (the conditions oracle).
    condition_violations: Vec<String>,
}

#[derive(Clone, Default)]
pub struct AckLog {
    inner: Arc<Mutex<Inner>>,
    fired: Arc<tokio::sync::Notify>,
}

impl AckLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("ack log")
    }

    pub fn push(&self, a: Ack) {
        let hook = {
            let mut g = self.lock();
            g.acks.push(a.clone());
            g.hook.take()
        };
        if let Some(h) = hook {
            h(&a);
            self.fired.notify_one();
        }
    }

    /// Records a write attempt before its first push.
    pub fn attempt(&self, name: &str, blake3: [u8; 32]) {
        self.lock().written.insert(name.to_string(), blake3);
    }

    pub fn all(&self) -> Vec<Ack> {
        self.lock().acks.clone()
    }

    pub fn len(&self) -> usize {
        self.lock().acks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn written(&self) -> BTreeMap<String, [u8; 32]> {
        self.lock().written.clone()
    }

    /// Records a conditional write that succeeded against a version its client never saw, or
    /// an idempotent retry that was refused.
    pub fn condition_violation(&self, what: String) {
        self.lock().condition_violations.push(what);
    }

    pub fn condition_violations(&self) -> Vec<String> {
        self.lock().condition_violations.clone()
    }

    /// Arms `hook` for the next ack (replacing an armed one).
    pub fn arm(&self, hook: AckHook) {
        self.lock().hook = Some(hook);
    }

    /// Disarms the hook; true if it had not fired.
    pub fn disarm(&self) -> bool {
        self.lock().hook.take().is_some()
    }

    /// Waits until an armed hook fires.
    pub async fn fired(&self) {
        self.fired.notified().await
    }
}

pub struct ClientSpec {
    pub id: u32,
    pub tenant: String,
    pub seed: u64,
    pub min_bytes: usize,
    pub max_bytes: usize,
    /// Pause between one ack and the next push, drawn from this range.
    pub think_ms: (u64, u64),
    /// The region the client lives in: it reaches only nodes its region is not cut off from.
    pub region: usize,
}

/// Picks the node to ask: the hinted leader if it runs, else the first running node after it.
fn pick(handles: &Arc<Mutex<BTreeMap<NodeId, Node>>>, hint: NodeId) -> Option<(NodeId, Node)> {
    let h = handles.lock().expect("handles lock");
    h.range(hint..).next().or_else(|| h.iter().next()).map(|(k, v)| (*k, v.clone()))
}

fn next_after(handles: &Arc<Mutex<BTreeMap<NodeId, Node>>>, id: NodeId) -> NodeId {
    let h = handles.lock().expect("handles lock");
    h.range(id + 1..).next().or_else(|| h.iter().next()).map(|(k, _)| *k).unwrap_or(id)
}

/// One segment in this many is large (`max_bytes / 4` to `max_bytes`); the rest are small.
const LARGE_ONE_IN: u32 = 100;
/// The largest small segment.
const SMALL_MAX_BYTES: usize = 16 << 10;

/// One push in this many is huge instead ([`HUGE_BYTES`]): several chunks
/// (`tetrad_node::storage::chunks::CHUNK_BYTES`, 1 MiB), so multi-chunk segments cross appends,
/// snapshots (by reference) and chunk fetches. Sized so that a sweep keeps most of its speed.
const HUGE_ONE_IN: u32 = 250;
/// The size range of a huge segment.
const HUGE_BYTES: (usize, usize) = (3 << 19, 3 << 20);

/// A huge segment instead of the next one, drawn from the client's second RNG, or `None`. The
/// huge draws have their own RNG so that the ordinary segments' sizes and bytes stay what the
/// seed gave them before huge segments existed.
fn huge_segment(rng: &mut SmallRng) -> Option<Vec<u8>> {
    if rng.random_range(0..HUGE_ONE_IN) != 0 {
        return None;
    }
    let mut data = vec![0u8; rng.random_range(HUGE_BYTES.0..=HUGE_BYTES.1)];
    rng.fill(&mut data[..]);
    Some(data)
}

/// A segment size: mostly small (log-uniform from `min` to 16 KiB), one in a hundred large
/// (`max / 4` to `max`). Large segments cost the simulator in proportion to their bytes (they
/// are encoded, copied and hashed on every replica), small ones exercise the same paths cheaply.
fn segment_size(rng: &mut SmallRng, min: usize, max: usize) -> usize {
    let log_uniform = |rng: &mut SmallRng, a: usize, b: usize| {
        let (lo, hi) = ((a.max(1) as f64).ln(), (b.max(a).max(1) as f64).ln());
        let x: f64 = rng.random();
        ((lo + (hi - lo) * x).exp() as usize).clamp(a, b.max(a))
    };
    if rng.random_range(0..LARGE_ONE_IN) == 0 {
        log_uniform(rng, max / 4, max)
    } else {
        log_uniform(rng, min, SMALL_MAX_BYTES.min(max))
    }
}

/// Runs one client until `stop` flips; returns how many pushes it abandoned unacked.
pub async fn run_client(
    spec: ClientSpec,
    handles: Arc<Mutex<BTreeMap<NodeId, Node>>>,
    net: SimNet,
    acks: AckLog,
    trace: Trace,
    origin: tokio::time::Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let mut huge_rng = SmallRng::seed_from_u64(spec.seed ^ 0x6875_6765);
    let mut hint: NodeId = 0;
    let mut seq: u64 = 0;
    let mut abandoned = 0;
    let mut rec_rng = SmallRng::seed_from_u64(spec.seed ^ 0x7265_636f_7264);
    'outer: loop {
        seq += 1;
        if rec_rng.random_range(0..RECORD_ONE_IN) == 0 {
            let step = RecordStep { spec: &spec, handles: &handles, net: &net, acks: &acks, trace: &trace, origin };
            match step.run(&mut rec_rng, seq, &mut hint, &mut stop).await {
                Some(()) => {}
                None => {
                    abandoned += 1;
                    break 'outer;
                }
            }
            let think = Duration::from_millis(rng.random_range(spec.think_ms.0..=spec.think_ms.1));
            tokio::select! {
                _ = tokio::time::sleep(think) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let size = segment_size(&mut rng, spec.min_bytes, spec.max_bytes);
        let mut data = vec![0u8; size];
        rng.fill(&mut data[..]);
        if let Some(huge) = huge_segment(&mut huge_rng) {
            data = huge;
        }
        let size = data.len();
        let name = format!("c{:02}-{:010}", spec.id, seq);
        let hash = *blake3::hash(&data).as_bytes();
        acks.attempt(&name, hash);
        loop {
            if *stop.borrow() {
                abandoned += 1;
                break 'outer;
            }
            let Some((id, node)) = pick(&handles, hint) else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if !net.client_reaches(spec.region, id) {
                // Cut off from this client: the connection attempt fails after a short while.
                hint = next_after(&handles, id);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let r =
                tokio::time::timeout(Duration::from_secs(10), node.push(&spec.tenant, &name, hash, data.clone())).await;
            // An answer that cannot travel back (the region was cut off meanwhile) never arrives:
            // to the client the outcome is unknown, and it retries.
            let r = if net.client_reaches(spec.region, id) {
                r
            } else {
                Ok(Err(ApiError::OutcomeUnknown("cut off".into())))
            };
            match r {
                Ok(Ok(out)) => {
                    let at = origin.elapsed().as_millis() as u64;
                    trace.event(&format!("ack {} {} e{} t{} i{}", spec.tenant, name, out.epoch, out.term, out.index));
                    acks.push(Ack {
                        tenant: spec.tenant.clone(),
                        name: name.clone(),
                        blake3: hash,
                        size: size as u64,
                        acked_at_ms: at,
                        epoch: out.epoch,
                        term: out.term,
                        index: out.index,
                        by: id,
                        already_present: out.already_present,
                        record: None,
                    });
                    hint = id;
                    break;
                }
                Ok(Err(ApiError::NotLeader { leader: Some(l) })) if l != id => {
                    // Follow the redirect, but let simulated time pass: a stale hint naming a
                    // dead leader must not turn into a loop that never yields.
                    hint = l;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(ApiError::Conflict { .. }))
                | Ok(Err(ApiError::BadRequest(_)))
                | Ok(Err(ApiError::UnknownTenant(_))) => {
                    // A client bug or a lost tenant: nothing to retry.
                    trace.event(&format!("client {} gave up on {name}: {:?}", spec.id, r));
                    abandoned += 1;
                    break;
                }
                _ => {
                    tracing::debug!(target: "tetrad_sim::client", client = spec.id, node = id, t_ms = origin.elapsed().as_millis() as u64, "{name}: {r:?}");
                    hint = next_after(&handles, id);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
        let think = Duration::from_millis(rng.random_range(spec.think_ms.0..=spec.think_ms.1));
        tokio::select! {
            _ = tokio::time::sleep(think) => {}
            _ = stop.changed() => {}
        }
    }
    abandoned
}

/// One write in this many is a record write instead of a segment push. At 1 in 4 the segment
/// load thinned enough that `lag-gate-one-copy` went uncaught in 200 region-outage seeds; at 1 in
/// 16 it is caught (seed 129).
const RECORD_ONE_IN: u32 = 16;
/// Record values are this small (metadata).
const RECORD_BYTES: (usize, usize) = (8, 512);
/// How often a client asks again for one record write before it gives the write up.
const RECORD_ATTEMPTS: u32 = 200;

/// A client's record write: create a key of its own, conditionally (`if_version: 0`, only if
/// absent), retried after "outcome unknown" as any write (the retry must be recognised as the
/// same write); then, once acked, a probe with a stale condition (a version the key never held)
/// that must fail. Keys are written once, so an acked record is lost or served like a segment.
struct RecordStep<'a> {
    spec: &'a ClientSpec,
    handles: &'a Arc<Mutex<BTreeMap<NodeId, Node>>>,
    net: &'a SimNet,
    acks: &'a AckLog,
    trace: &'a Trace,
    origin: tokio::time::Instant,
}

/// What one attempt of a record write came to.
enum Attempt {
    Answered(tetrad_node::node::RecordWrite, NodeId),
    Refused,
    Retry,
}

impl RecordStep<'_> {
    /// Runs the step; `None` when the run is stopping.
    async fn run(
        &self,
        rng: &mut SmallRng,
        seq: u64,
        hint: &mut NodeId,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<()> {
        use tetrad_core::records::{RecordOp, RecordOutcome, RecordReply};
        let key = format!("c{:02}/r{:010}", self.spec.id, seq);
        let mut value = vec![0u8; rng.random_range(RECORD_BYTES.0..=RECORD_BYTES.1)];
        rng.fill(&mut value[..]);
        let hash = *blake3::hash(&value).as_bytes();
        let name = format!("record/{key}");
        self.acks.attempt(&name, hash);
        let create = vec![RecordOp::Put { key: key.clone(), value: value.clone(), if_version: Some(0) }];
        let mut tried_before = false;
        let version = loop {
            match self.attempt(&create, hint, stop).await? {
                Attempt::Answered(w, by) => match w.reply {
                    RecordReply::Done(outs) => {
                        let Some(RecordOutcome::Put { version, changed, .. }) = outs.first().cloned() else {
                            self.acks.condition_violation(format!("record {key}: a put answered {outs:?}"));
                            return Some(());
                        };
                        let at = self.origin.elapsed().as_millis() as u64;
                        self.trace.event(&format!(
                            "ack {} {name} v{version} e{} t{} i{}",
                            self.spec.tenant, w.epoch, w.term, w.index
                        ));
                        self.acks.push(Ack {
                            tenant: self.spec.tenant.clone(),
                            name: name.clone(),
                            blake3: hash,
                            size: value.len() as u64,
                            acked_at_ms: at,
                            epoch: w.epoch,
                            term: w.term,
                            index: w.index,
                            by,
                            already_present: !changed,
                            record: Some(version),
                        });
                        *hint = by;
                        break version;
                    }
                    RecordReply::ConditionFailed { current, .. } => {
                        // Only this client writes this key, so the key can hold a version only
                        // from an earlier attempt of this very put: its retry must succeed.
                        let what = if tried_before { "a retried conditional create" } else { "a first create" };
                        self.acks.condition_violation(format!(
                            "record {key}: {what} (if-version 0) was refused with current version {current}; only this write ever wrote the key"
                        ));
                        return Some(());
                    }
                    RecordReply::Invalid { reason } => {
                        self.trace.event(&format!("client {} gave up on {name}: {reason}", self.spec.id));
                        return Some(());
                    }
                },
                Attempt::Refused => return Some(()),
                Attempt::Retry => tried_before = true,
            }
        };
        // The probe: a version this key never held (the one before or after its own, of its own
        // epoch: a re-versioned key, below, moves to a newer epoch's range). Its bytes differ, so
        // a success would be visible.
        let stale = if rng.random_range(0..2) == 0 { version + 1 } else { version - 1 };
        let probe =
            vec![RecordOp::Put { key: key.clone(), value: b"stale-condition probe".to_vec(), if_version: Some(stale) }];
        for _ in 0..3 {
            match self.attempt(&probe, hint, stop).await? {
                Attempt::Answered(w, _) => {
                    if let RecordReply::Done(outs) = &w.reply {
                        self.acks.condition_violation(format!(
                            "record {key}: a put conditioned on version {stale} succeeded ({outs:?}), but the key was written once, at version {version}"
                        ));
                    }
                    return Some(());
                }
                Attempt::Refused => return Some(()),
                Attempt::Retry => {}
            }
        }
        Some(())
    }

    /// Sends `ops` until a node answers it; `None` when the run is stopping.
    async fn attempt(
        &self,
        ops: &[tetrad_core::records::RecordOp],
        hint: &mut NodeId,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<Attempt> {
        for _ in 0..RECORD_ATTEMPTS {
            if *stop.borrow() {
                return None;
            }
            let Some((id, node)) = pick(self.handles, *hint) else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if !self.net.client_reaches(self.spec.region, id) {
                *hint = next_after(self.handles, id);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let r = tokio::time::timeout(Duration::from_secs(10), node.records(&self.spec.tenant, ops.to_vec())).await;
            let r = if self.net.client_reaches(self.spec.region, id) {
                r
            } else {
                Ok(Err(ApiError::OutcomeUnknown("cut off".into())))
            };
            match r {
                Ok(Ok(w)) => return Some(Attempt::Answered(w, id)),
                Ok(Err(ApiError::NotLeader { leader: Some(l) })) if l != id => {
                    *hint = l;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(ApiError::BadRequest(_))) | Ok(Err(ApiError::UnknownTenant(_))) => {
                    self.trace.event(&format!("client {} gave up on a record write: {r:?}", self.spec.id));
                    return Some(Attempt::Refused);
                }
                _ => {
                    *hint = next_after(self.handles, id);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stop.changed() => {}
                    }
                    return Some(Attempt::Retry);
                }
            }
        }
        Some(Attempt::Refused)
    }
}
