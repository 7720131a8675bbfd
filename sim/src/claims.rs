//! The claims of the near-sync and async modes (DESIGN.md, "Replication modes", "Promotion" and
//! "Loss accounting"), checked after healing against the clients' ack log, the acked writes the
//! cluster no longer serves, and the tenant's recorded history:
//!
//! - near-sync: the lost acked writes of each failover lie within one span of at most
//!   `rpo_target`, except writes acked while the tenant was recorded degraded or catching up;
//! - loss record (near-sync and async): every lost acked write of epoch `e` lies inside the loss
//!   window of the failover recorded from `e`; the lost count is at least `lost_writes_min` and,
//!   once filled in, at most `lost_writes_max`; `lost_writes_min` counts at least the lost writes
//!   the old leader had reported as acked (the simulator samples the reports); and
//!   `lost_writes_max` is filled in once a majority of the old voters is back with its storage;
//! - promotion: no sealed replica that answered the seal held a lost acked write (the promoted
//!   one must be the most up to date);
//! - failover liveness: when the tenant's primary region is lost (power, cut or freeze) for
//!   longer than [`FAILOVER_BOUND`], the tenant acks again within that bound.
//!
//! Times: acks carry simulated ms since the run began; the history carries wall-clock ms stamped by
//! whichever node proposed the event, whose clock may be off by up to the liveness drift bound
//! (`max_clock_drift_ms`: the fault budget keeps every wall offset within it). Acks are converted
//! to the wall clock of a node without offset and compared with exactly that bound of slack.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tetrad_node::meta::state::{AckMark, EventKind, Mode, TenantEvent};
use tetrad_node::node::Node;
use tetrad_node::seams::net::NodeId;

use crate::cluster::SimCluster;
use crate::fault::{Outage, TenantInfo};
use crate::workload::Ack;

/// When the primary region is lost for at least this long, the tenant must ack again within it
/// (issue #4's RTO target for near-sync and async is 10 s; the bound leaves room for the clients'
/// retries and a lossy WAN).
pub const FAILOVER_BOUND: Duration = Duration::from_secs(20);
/// How long after healing the returning old voters have to list their tails.
const TAILS_BOUND: Duration = Duration::from_secs(30);
/// Slack for the instant between the lag gate's check and the client's ack.
const GATE_SLACK_MS: u64 = 5;

/// What the run knows besides the ack log.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Per epoch, the newest ack its leader reported to the meta group (sampled).
    pub reported: BTreeMap<u64, AckMark>,
    pub outages: Vec<Outage>,
    /// The wall clock (of a node without offset) at the run's origin, in ms.
    pub wall_at_origin_ms: u64,
    /// The liveness drift bound (`max_clock_drift_ms`).
    pub drift_ms: u64,
    /// The largest monotonic clock rate error set on any node during the run (ppm).
    pub max_rate_ppm: u64,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub violations: Vec<String>,
    pub notes: Vec<String>,
    pub checked: Vec<&'static str>,
    /// The tenant's recorded history, as read at the end.
    pub history: Vec<TenantEvent>,
}

/// The write a tail entry names, as the clients' ack log names it: a record write's tail name
/// carries the entry's position (`record/<key>@<term>.<index>`), the log only the key (the
/// simulator's clients write each key once).
fn write_of(tail_name: &str) -> &str {
    match tail_name.strip_prefix("record/").and(tail_name.rsplit_once('@')) {
        Some((w, _)) => w,
        None => tail_name,
    }
}

fn is_failover(e: &TenantEvent) -> bool {
    matches!(e.kind, EventKind::Failover | EventKind::ManualFailover) && e.to_epoch > e.from_epoch
}

/// The node that leads the meta group, among the reachable ones.
fn meta_leader(c: &SimCluster) -> Option<Node> {
    c.reachable().into_iter().find(|n| n.meta_leader() == Some(n.id()))
}

/// Reads the history from the meta leader; waits (bounded) until every failover whose old voters
/// are mostly back with their storage has its `lost_writes_max`.
async fn read_history(c: &SimCluster, tenant: &str, within: bool, out: &mut Outcome) -> Vec<TenantEvent> {
    let serving: BTreeSet<NodeId> = c.serving().iter().map(|n| n.id()).collect();
    let deadline = tokio::time::Instant::now() + TAILS_BOUND;
    let mut last = vec![];
    loop {
        if let Some(n) = meta_leader(c) {
            if let Ok(h) = n.tenant_history(tenant).await {
                last = h;
            }
        }
        let pending: Vec<&TenantEvent> = last
            .iter()
            .filter(|e| is_failover(e) && e.lost_writes_max.is_none())
            .filter(|e| e.old_voters.iter().filter(|v| serving.contains(v)).count() * 2 > e.old_voters.len())
            .collect();
        if pending.is_empty() {
            return last;
        }
        if tokio::time::Instant::now() > deadline {
            for e in pending {
                let msg = format!(
                    "loss record: the failover from epoch {} has no lost_writes_max {TAILS_BOUND:?} after healing, though a majority of its old voters {:?} is back with its storage (tails from {:?})",
                    e.from_epoch,
                    e.old_voters,
                    e.tails.keys().collect::<Vec<_>>()
                );
                if within {
                    out.violations.push(msg);
                } else {
                    out.notes.push(msg);
                }
            }
            return last;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `promoted node N in REGION ... sealed replicas: [a, b, c] ...` from a failover's detail.
fn parse_promotion(detail: &str) -> Option<(NodeId, Vec<NodeId>)> {
    let best = detail.strip_prefix("promoted node ")?.split_whitespace().next()?.parse().ok()?;
    let list = detail.split("sealed replicas: [").nth(1)?.split(']').next()?;
    let answered = list.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    Some((best, answered))
}

/// `... from (T, I) with ...`: the promoted replica's mark in a failover's detail.
fn parse_base(detail: &str) -> Option<(u64, u64)> {
    let inner = detail.split(" from (").nth(1)?.split(')').next()?;
    let (t, i) = inner.split_once(',')?;
    Some((t.trim().parse().ok()?, i.trim().parse().ok()?))
}

/// The old epoch of the failover at which acked write `a` was lost. A write acked in epoch `e`
/// is carried into `e + 1` when the promoted replica held it, and can then be lost at a later
/// failover, whose record must account for it (its count and window cover everything the new
/// epoch lacks, whichever epoch acked it).
/// - In its own epoch, an acked write is a committed entry at (term, index); the promoted replica
///   holds it when its log ends at (T, I) with term <= T and index <= I (log matching, and a
///   leader of a later term holds every committed entry).
/// - A write carried from an earlier epoch (or re-acked as already present, at a position that may
///   be another epoch's) is in the seeded state that every replica of the epoch holds once it holds
///   anything (the founder purges its log before any member joins): the promoted replica holds it
///   unless its mark is (0, 0).
///
/// With no failover from an epoch (or a detail that does not parse), that epoch is the answer.
fn lost_at(a: &Ack, failovers: &BTreeMap<u64, &TenantEvent>) -> u64 {
    let mut k = a.epoch;
    loop {
        let Some(base) = failovers.get(&k).and_then(|ev| parse_base(&ev.detail)) else { return k };
        let held = if k == a.epoch && !a.already_present && a.term > 0 {
            a.term <= base.0 && a.index <= base.1
        } else {
            base > (0, 0)
        };
        if !held {
            return k;
        }
        k += 1;
    }
}

/// Checks the claims of `tenant`'s mode; `lost` are the acked writes no longer served.
pub async fn check(
    c: &SimCluster,
    tenant: &TenantInfo,
    acked: &[Ack],
    lost: &[Ack],
    within: bool,
    ctx: &Context,
) -> Outcome {
    let mut out = Outcome::default();
    let mut v: Vec<String> = vec![];
    out.checked.push("failover-liveness");
    // A lost primary region fails over on its own.
    for o in &ctx.outages {
        let Some(end) = o.end_ms else { continue };
        let bound = FAILOVER_BOUND.as_millis() as u64;
        if o.extra || end - o.start_ms < bound {
            continue;
        }
        if !acked.iter().any(|a| a.acked_at_ms > o.start_ms && a.acked_at_ms <= o.start_ms + bound) {
            v.push(format!(
                "failover liveness: the tenant's primary region {} was lost ({}) from {} ms to {end} ms, and no write was acked within {FAILOVER_BOUND:?}",
                crate::cluster::REGIONS[o.region],
                o.what,
                o.start_ms
            ));
        }
    }

    if tenant.mode == Mode::Sync {
        finish(&mut out, v, within);
        return out;
    }
    let history = read_history(c, &tenant.name, within, &mut out).await;
    out.checked.push("loss-record");
    out.checked.push("promotion-picks-the-newest");
    let d = ctx.drift_ms;
    let wall = |a: &Ack| ctx.wall_at_origin_ms + a.acked_at_ms;
    let failovers: BTreeMap<u64, &TenantEvent> =
        history.iter().filter(|e| is_failover(e)).map(|e| (e.from_epoch, e)).collect();

    // Every lost acked write inside the window of the failover that lost it.
    let at: Vec<u64> = lost.iter().map(|a| lost_at(a, &failovers)).collect();
    for (a, k) in lost.iter().zip(&at) {
        let Some(ev) = failovers.get(k) else {
            v.push(format!(
                "loss record: acked write {} (epoch {}, acked at {} ms) is lost, but no failover from epoch {k} is recorded{}",
                a.name,
                a.epoch,
                a.acked_at_ms,
                if *k > a.epoch { " (the earlier failovers' promoted replicas held it)" } else { "" }
            ));
            continue;
        };
        match (ev.loss_window_start_ms, ev.loss_window_end_ms) {
            (Some(s), Some(e)) if s.saturating_sub(d) <= wall(a) && wall(a) <= e + d => {}
            (s, e) => v.push(format!(
                "loss record: acked write {} (epoch {}, acked at wall {} ms) lies outside the recorded loss window {:?}..{:?} (drift bound {d} ms)",
                a.name,
                a.epoch,
                wall(a),
                s,
                e
            )),
        }
    }

    // The counts, per failover.
    for (from, ev) in &failovers {
        let lost_here: Vec<&Ack> = lost.iter().zip(&at).filter(|(_, k)| *k == from).map(|(a, _)| a).collect();
        let n = lost_here.len() as u64;
        let min = ev.lost_writes_min.unwrap_or(0);
        if n < min {
            v.push(format!(
                "loss record: the failover from epoch {from} records lost_writes_min {min}, but only {n} acked writes are lost"
            ));
        }
        if let Some(max) = ev.lost_writes_max {
            if n > max {
                v.push(format!(
                    "loss record: the failover from epoch {from} records lost_writes_max {max}, but {n} acked writes are lost"
                ));
            }
        }
        if let Some(r) = ctx.reported.get(from) {
            let reported_lost =
                // Positions compare only within the old epoch's own log.
                lost_here
                    .iter()
                    .filter(|a| a.epoch == *from && !a.already_present && (a.term, a.index) <= (r.term, r.index))
                    .count()
                    as u64;
            if reported_lost > min {
                v.push(format!(
                    "loss record: the failover from epoch {from} records lost_writes_min {min}, but {reported_lost} lost acked writes were reported acked by the old leader (up to term {} index {})",
                    r.term, r.index
                ));
            }
        }
        // Promotion: a replica that answered the seal must not hold what the promoted one lacks.
        if let Some((best, answered)) = parse_promotion(&ev.detail) {
            let names: BTreeSet<&str> = lost_here.iter().map(|a| a.name.as_str()).collect();
            for n in answered.iter().filter(|n| **n != best) {
                let held: Vec<&str> = ev
                    .tails
                    .get(n)
                    .map(|t| t.iter().map(|w| write_of(&w.name)).filter(|w| names.contains(w)).collect())
                    .unwrap_or_default();
                if !held.is_empty() {
                    v.push(format!(
                        "promotion: the failover from epoch {from} promoted node {best}, but sealed replica {n} held {} lost acked writes it lacked (e.g. {})",
                        held.len(),
                        held[0]
                    ));
                }
            }
        }
    }

    // near-sync: the lost writes of each failover within one span of the RPO target.
    if tenant.mode == Mode::NearSync {
        out.checked.push("near-sync-rpo-span");
        let mut degraded: Vec<(u64, u64)> = vec![];
        let mut open: Option<u64> = None;
        let mut events: Vec<&TenantEvent> = history.iter().collect();
        events.sort_by_key(|e| e.at_ms);
        for e in events {
            match e.kind {
                EventKind::Degraded => {
                    open.get_or_insert(e.at_ms);
                }
                EventKind::Healthy => {
                    if let Some(s) = open.take() {
                        degraded.push((s, e.at_ms));
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = open {
            degraded.push((s, u64::MAX - d));
        }
        let exempt = |a: &Ack| degraded.iter().any(|(s, e)| s.saturating_sub(d) <= wall(a) && wall(a) <= e + d);
        let rpo = tenant.rpo_target_ms;
        let allowed = rpo + rpo * ctx.max_rate_ppm / 1_000_000 + GATE_SLACK_MS;
        let mut by_epoch: BTreeMap<u64, Vec<&Ack>> = BTreeMap::new();
        for a in lost.iter().filter(|a| !exempt(a)) {
            by_epoch.entry(a.epoch).or_default().push(a);
        }
        for (epoch, ls) in by_epoch {
            let first = ls.iter().min_by_key(|a| a.acked_at_ms).expect("non-empty");
            let last = ls.iter().max_by_key(|a| a.acked_at_ms).expect("non-empty");
            let span = last.acked_at_ms - first.acked_at_ms;
            if span > allowed {
                v.push(format!(
                    "near-sync claim: {} lost acked writes of epoch {epoch} span {span} ms ({} acked at {} ms .. {} acked at {} ms), beyond the rpo target {rpo} ms (allowed {allowed} ms), and the tenant was not recorded degraded then",
                    ls.len(),
                    first.name,
                    first.acked_at_ms,
                    last.name,
                    last.acked_at_ms
                ));
            }
        }
    }

    finish(&mut out, v, within);
    out.history = history;
    out
}

/// Most lines the mode claims report; the rest are counted.
const MAX_LINES: usize = 8;

fn finish(out: &mut Outcome, mut v: Vec<String>, within: bool) {
    if v.len() > MAX_LINES {
        let more = v.len() - MAX_LINES;
        v.truncate(MAX_LINES);
        v.push(format!("mode claims: and {more} more like these"));
    }
    if within {
        out.violations.extend(v);
    } else if !v.is_empty() {
        out.notes.push(format!("{} mode-claim findings beyond the budget (not violations):", v.len()));
        out.notes.extend(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_promotion_detail_parses() {
        let d = "promoted node 201 in eu-west from (3, 40) with 30 writes; sealed replicas: [201, 301, 401]; first voters [201], learners [301, 401]";
        assert_eq!(parse_promotion(d), Some((201, vec![201, 301, 401])));
        assert_eq!(parse_promotion("something else"), None);
        assert_eq!(parse_base(d), Some((3, 40)));
    }

    fn ack(epoch: u64, term: u64, index: u64) -> Ack {
        Ack {
            tenant: "t1".into(),
            name: format!("c00-{index:010}"),
            blake3: [0; 32],
            size: 1,
            acked_at_ms: 1,
            epoch,
            term,
            index,
            by: 101,
            already_present: false,
            record: None,
        }
    }

    fn failover(from: u64, base: (u64, u64)) -> TenantEvent {
        let detail =
            format!("promoted node 201 in eu-west from ({}, {}) with 9 writes; sealed replicas: [201]", base.0, base.1);
        TenantEvent::new(EventKind::Failover, 1, from, from + 1, detail)
    }

    /// Sim seed 282 (mixed, async): writes of epoch 1 carried into epoch 2 were lost at 2 -> 3,
    /// whose record covers them; they were checked against the 1 -> 2 record.
    #[test]
    fn a_lost_write_belongs_to_the_failover_that_lost_it() {
        let evs = [failover(1, (2, 118)), failover(2, (0, 0))];
        let f: BTreeMap<u64, &TenantEvent> = evs.iter().map(|e| (e.from_epoch, e)).collect();
        assert_eq!(lost_at(&ack(1, 2, 100), &f), 2, "held by the epoch-2 founder, lost at 2 -> 3");
        assert_eq!(lost_at(&ack(1, 2, 119), &f), 1, "past the promoted replica's log");
        assert_eq!(lost_at(&ack(1, 3, 50), &f), 1, "a later term than the promoted replica's last");
        assert_eq!(lost_at(&ack(2, 1, 5), &f), 2);
        let evs = [failover(1, (2, 118)), failover(2, (1, 7))];
        let f: BTreeMap<u64, &TenantEvent> = evs.iter().map(|e| (e.from_epoch, e)).collect();
        assert_eq!(lost_at(&ack(1, 2, 100), &f), 3, "held through both: no failover from 3 lost it");
    }
}
