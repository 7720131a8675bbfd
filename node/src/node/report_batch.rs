//! Batches the meta group's periodic reports (liveness renewals, ack marks, first acks) into
//! one meta entry at the meta leader.
//!
//! Every node renews its liveness once per `renew_interval`, and every tenant leader reports its
//! newest ack after each renewal. The meta group has every node as a member, so one entry per
//! report cost an append (a durable commit) on every node: the meta log's write rate grew with
//! the square of the cluster's size, and renewals were most of an idle cluster's disk writes.
//! The meta leader now proposes reports at most once per window (half the renewal interval),
//! and holds the first report of a batch for two fifths of the interval, for the rest of its
//! round: nodes renew one interval after their last renewal was answered, and every report of
//! a batch is answered at once, so nodes whose round trips to the leader differ by less than
//! that share a batch. In the simulator's default cluster (12 nodes, WAN latencies) an idle
//! second costs about 1.3 meta entries, carrying 5 to 11 reports each, where it cost 12
//! (`RUST_LOG=tetrad_node::node::report_batch=debug` shows each batch). The entry applies
//! them in order (`MetaCommand::Batch`).
//!
//! What it costs: a renewal may wait up to one window before it is proposed. The lease it buys
//! runs from the moment the node sent it (DESIGN.md), so the wait only shortens that lease, and the
//! meta leader, which measures a node's expiry from when it saw the renewal applied, only
//! waits longer before a failover: the fencing order is unchanged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::meta::state::{MetaCommand, MetaReply, MetaState};
use crate::raft::group::{Group, WriteError};
use crate::raft::{Command, Reply};
use crate::seams::clock::ClockRef;
use crate::seams::net::NodeId;

/// The most reports one entry carries; more wait for the next window.
const REPORTS_PER_BATCH_MAX: usize = 256;

/// A report's outcome: the reply, and the term and index of the entry that carried it.
pub(crate) type Answer = Result<(Reply, u64, u64), WriteError>;

/// Reports waiting at the meta leader for the next batch, and the meta replica they go to.
pub(crate) struct ReportBatcher {
    me: NodeId,
    meta: Arc<Group<MetaState>>,
    clock: ClockRef,
    timing: Timing,
    state: Mutex<BatchState>,
}

#[derive(Default)]
struct BatchState {
    pending: Vec<(MetaCommand, oneshot::Sender<Answer>)>,
    /// A flush task is running; it ends when it finds nothing pending.
    flushing: bool,
    /// Monotonic time the last batch was proposed.
    last_proposed: Option<Duration>,
    /// Monotonic time the oldest pending report arrived.
    first_pending: Option<Duration>,
}

/// When to propose the next batch: one `window` after the last batch, and not before the first
/// pending report has waited `gather` for the rest of its round.
#[derive(Clone, Copy, Debug)]
struct Timing {
    window: Duration,
    gather: Duration,
}

impl Timing {
    fn for_renew_interval(every: Duration) -> Self {
        Self { window: every / 2, gather: every * 2 / 5 }
    }

    fn wait(self, last_proposed: Option<Duration>, first_pending: Duration, now: Duration) -> Duration {
        let after_last = last_proposed.map_or(Duration::ZERO, |last| last + self.window);
        after_last.max(first_pending + self.gather).saturating_sub(now)
    }
}

/// Hands each report of a proposed batch its own answer.
fn answer_batch(batch: Vec<oneshot::Sender<Answer>>, outcome: Answer) {
    match outcome {
        Ok((Reply::Meta(MetaReply::Batch(replies)), term, index)) if replies.len() == batch.len() => {
            for (tx, reply) in batch.into_iter().zip(replies) {
                let _ = tx.send(Ok((Reply::Meta(reply), term, index)));
            }
        }
        Ok((reply, term, index)) if batch.len() == 1 => {
            if let Some(tx) = batch.into_iter().next() {
                let _ = tx.send(Ok((reply, term, index)));
            }
        }
        Ok((other, _, _)) => {
            let e = WriteError::Unavailable(format!("unexpected reply to a batch of reports: {other:?}"));
            for tx in batch {
                let _ = tx.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for tx in batch {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

impl ReportBatcher {
    pub(super) fn new(me: NodeId, meta: Arc<Group<MetaState>>, clock: ClockRef, renew_interval: Duration) -> Self {
        Self { me, meta, clock, timing: Timing::for_renew_interval(renew_interval), state: Default::default() }
    }

    /// Proposes `cmd` on this node's meta replica. Reports wait for the next batch while this
    /// node leads the meta group; anything else, or any command on a follower (which refuses
    /// with the leader's id), goes straight to openraft.
    pub(super) async fn write(self: &Arc<Self>, cmd: MetaCommand) -> Answer {
        let leads = matches!(self.meta.term_leader(), (_, Some(l)) if l == self.me);
        if !cmd.is_report() || !leads {
            return self.meta.write(Command::Meta(cmd)).await;
        }
        let (tx, rx) = oneshot::channel();
        let start_flush = {
            let mut st = self.state.lock().expect("reports lock");
            if st.pending.is_empty() {
                st.first_pending = Some(self.clock.mono_now());
            }
            st.pending.push((cmd, tx));
            !std::mem::replace(&mut st.flushing, true)
        };
        if start_flush {
            tokio::spawn(Arc::clone(self).flush());
        }
        rx.await.unwrap_or_else(|_| Err(WriteError::Unavailable("the report batch was dropped".into())))
    }

    /// Proposes the pending reports, one batch per window, until none are left.
    async fn flush(self: Arc<Self>) {
        let timing = self.timing;
        loop {
            // Sleep until the batch is due; reports arriving meanwhile join it.
            loop {
                let wait = {
                    let mut st = self.state.lock().expect("reports lock");
                    let Some(first) = st.first_pending.filter(|_| !st.pending.is_empty()) else {
                        st.flushing = false;
                        return;
                    };
                    timing.wait(st.last_proposed, first, self.clock.mono_now())
                };
                if wait.is_zero() {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
            let (mut cmds, txs): (Vec<MetaCommand>, Vec<oneshot::Sender<Answer>>) = {
                let mut st = self.state.lock().expect("reports lock");
                let now = self.clock.mono_now();
                st.last_proposed = Some(now);
                let n = st.pending.len().min(REPORTS_PER_BATCH_MAX);
                let batch = st.pending.drain(..n).unzip();
                // What is left over waited as long as the batch did: it goes one window later.
                st.first_pending = Some(now);
                batch
            };
            tracing::debug!(reports = cmds.len(), "proposing a batch of reports");
            let cmd = if cmds.len() == 1 { cmds.pop().expect("one report") } else { MetaCommand::Batch(cmds) };
            let outcome = self.meta.write(Command::Meta(cmd)).await;
            answer_batch(txs, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_waits_for_its_round_and_goes_at_most_once_per_window() {
        let ms = Duration::from_millis;
        let t = Timing::for_renew_interval(ms(1_000));
        assert_eq!((t.window, t.gather), (ms(500), ms(400)));
        // The first report ever waits only for the rest of its round.
        assert_eq!(t.wait(None, ms(7_000), ms(7_000)), ms(400));
        assert_eq!(t.wait(None, ms(7_000), ms(7_150)), ms(250));
        assert_eq!(t.wait(None, ms(7_000), ms(7_400)), Duration::ZERO);
        // Right after a batch, the window decides.
        assert_eq!(t.wait(Some(ms(7_000)), ms(7_010), ms(7_010)), ms(490));
        // Long after the last batch, the round does.
        assert_eq!(t.wait(Some(ms(7_000)), ms(9_000), ms(9_100)), ms(300));
        assert_eq!(t.wait(Some(ms(7_000)), ms(9_000), ms(9_400)), Duration::ZERO);
    }

    fn channels(n: usize) -> (Vec<oneshot::Sender<Answer>>, Vec<oneshot::Receiver<Answer>>) {
        (0..n).map(|_| oneshot::channel()).unzip()
    }

    #[test]
    fn each_report_gets_its_own_reply_and_the_entry_it_rode_in() {
        let (txs, mut rxs) = channels(2);
        let replies = vec![MetaReply::HeartbeatAccepted, MetaReply::HeartbeatRefused { reason: "wiped".into() }];
        answer_batch(txs, Ok((Reply::Meta(MetaReply::Batch(replies)), 3, 41)));
        assert_eq!(rxs[0].try_recv().unwrap(), Ok((Reply::Meta(MetaReply::HeartbeatAccepted), 3, 41)));
        assert_eq!(
            rxs[1].try_recv().unwrap(),
            Ok((Reply::Meta(MetaReply::HeartbeatRefused { reason: "wiped".into() }), 3, 41))
        );
    }

    #[test]
    fn a_failed_or_mismatched_batch_fails_every_report_in_it() {
        let (txs, mut rxs) = channels(2);
        answer_batch(txs, Err(WriteError::NotLeader(Some(4))));
        for rx in &mut rxs {
            assert_eq!(rx.try_recv().unwrap(), Err(WriteError::NotLeader(Some(4))));
        }
        let (txs, mut rxs) = channels(2);
        answer_batch(txs, Ok((Reply::Meta(MetaReply::Batch(vec![MetaReply::Noted])), 3, 41)));
        for rx in &mut rxs {
            assert!(matches!(rx.try_recv().unwrap(), Err(WriteError::Unavailable(_))));
        }
    }

    #[test]
    fn a_lone_report_is_answered_with_its_own_reply() {
        let (txs, mut rxs) = channels(1);
        answer_batch(txs, Ok((Reply::Meta(MetaReply::Noted), 2, 9)));
        assert_eq!(rxs[0].try_recv().unwrap(), Ok((Reply::Meta(MetaReply::Noted), 2, 9)));
    }
}
