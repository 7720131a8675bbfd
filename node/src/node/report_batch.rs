//! Batches the meta group's periodic reports (liveness renewals, ack marks, first acks) into
//! one meta entry at the meta leader.
//!
//! Every node renews its liveness once per `renew_interval`, and every tenant leader reports its
//! newest ack after each renewal. The meta group has every node as a member, so one entry per
//! report cost an append (a durable commit) on every node: the meta log's write rate grew with
//! the square of the cluster's size, and renewals were most of an idle cluster's disk writes.
//! The meta leader now proposes reports at most once per window (a quarter of the renewal
//! interval); one entry carries every report that arrived meanwhile, applied in order
//! (`MetaCommand::Batch`). A lone report after a quiet window is proposed at once.
//!
//! What it costs: a renewal may wait one window before it is proposed. The lease it buys runs
//! from the moment the node sent it (DESIGN.md), so the wait only shortens that lease, and the
//! meta leader, which measures a node's expiry from when it saw the renewal applied, only
//! waits longer before a failover: the fencing order is unchanged.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use super::Node;
use crate::meta::state::{MetaCommand, MetaReply};
use crate::raft::group::WriteError;
use crate::raft::{Command, Reply};

/// The most reports one entry carries; more wait for the next window.
const REPORTS_PER_BATCH_MAX: usize = 256;

/// A report's outcome: the reply, and the term and index of the entry that carried it.
type Answer = Result<(Reply, u64, u64), WriteError>;

/// Reports waiting at the meta leader for the next batch.
#[derive(Default)]
pub(crate) struct ReportBatcher {
    state: Mutex<BatchState>,
}

#[derive(Default)]
struct BatchState {
    pending: Vec<(MetaCommand, oneshot::Sender<Answer>)>,
    /// A flush task is running; it ends when it finds nothing pending.
    flushing: bool,
    /// Monotonic time the last batch was proposed.
    last_proposed: Option<Duration>,
}

/// How long to wait before proposing the next batch: until one `window` after the last one.
fn wait_before_flush(last_proposed: Option<Duration>, now: Duration, window: Duration) -> Duration {
    last_proposed.map_or(Duration::ZERO, |last| (last + window).saturating_sub(now))
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

impl Node {
    /// Proposes `cmd` on this node's meta replica. Reports wait for the next batch while this
    /// node leads the meta group; anything else, or any command on a follower (which refuses
    /// with the leader's id), goes straight to openraft.
    pub(super) async fn meta_write(&self, cmd: MetaCommand) -> Answer {
        let leads = matches!(self.inner.meta.term_leader(), (_, Some(l)) if l == self.inner.me);
        if !cmd.is_report() || !leads {
            return self.inner.meta.write(Command::Meta(cmd)).await;
        }
        let (tx, rx) = oneshot::channel();
        let start_flush = {
            let mut st = self.inner.reports.state.lock().expect("reports lock");
            st.pending.push((cmd, tx));
            !std::mem::replace(&mut st.flushing, true)
        };
        if start_flush {
            tokio::spawn(self.clone().flush_reports());
        }
        rx.await.unwrap_or_else(|_| Err(WriteError::Unavailable("the report batch was dropped".into())))
    }

    /// Proposes the pending reports, one batch per window, until none are left.
    async fn flush_reports(self) {
        let window = self.inner.cfg.liveness.renew_interval() / 2;
        loop {
            let wait = {
                let st = self.inner.reports.state.lock().expect("reports lock");
                wait_before_flush(st.last_proposed, self.inner.clock.mono_now(), window)
            };
            if wait.is_zero() {
                // Reports sent at this same instant join this batch.
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(wait).await;
            }
            let (mut cmds, txs): (Vec<MetaCommand>, Vec<oneshot::Sender<Answer>>) = {
                let mut st = self.inner.reports.state.lock().expect("reports lock");
                if st.pending.is_empty() {
                    st.flushing = false;
                    return;
                }
                st.last_proposed = Some(self.inner.clock.mono_now());
                let n = st.pending.len().min(REPORTS_PER_BATCH_MAX);
                st.pending.drain(..n).unzip()
            };
            let cmd = if cmds.len() == 1 { cmds.pop().expect("one report") } else { MetaCommand::Batch(cmds) };
            let outcome = self.inner.meta.write(Command::Meta(cmd)).await;
            answer_batch(txs, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(250);

    #[test]
    fn the_first_batch_goes_at_once_and_the_next_one_window_after_it() {
        let s = Duration::from_secs;
        assert_eq!(wait_before_flush(None, s(7), W), Duration::ZERO);
        assert_eq!(wait_before_flush(Some(s(7)), s(7), W), W);
        assert_eq!(wait_before_flush(Some(s(7)), s(7) + Duration::from_millis(100), W), Duration::from_millis(150));
        assert_eq!(wait_before_flush(Some(s(7)), s(9), W), Duration::ZERO);
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
