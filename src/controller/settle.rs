//! Settling messages in hand: delete the started ones (along the delete
//! linger), move unstartable ones to their DLQ with the reason, hand the
//! rest back; in batches of ten (DLQ moves also at most 1 MiB a batch).

use std::collections::HashSet;
use std::time::Duration;

use tracing::{debug, warn};

use super::{Controller, RunSummary};
use crate::control::linger::Flush;
use crate::control::pacing::Backoff;
use crate::control::receive::BATCH;
use crate::control::refusal::DeadReason;
use crate::metrics::Counter;
use crate::ports::{
    ConcurrencyMetrics, Executions, Message, MetricsSink, OutgoingMessage, WorkQueue, send_batches,
};

/// Attribute carrying the reason a message was dead-lettered.
pub const REASON_ATTRIBUTE: &str = "fanout-reason";
/// Attribute carrying the reason's short code (`DeadReason::code`:
/// `not_json`, `too_large`, `missing_field`, `name_collision`).
pub const REASON_CODE_ATTRIBUTE: &str = "fanout-reason-code";
/// Attribute carrying the original MessageId of a dead-lettered message.
pub const SOURCE_ID_ATTRIBUTE: &str = "fanout-source-message-id";

/// The DLQ copy of an unstartable message, with its reason.
fn dead_letter_message((m, why): &(Message, DeadReason)) -> OutgoingMessage {
    OutgoingMessage {
        body: m.body.clone(),
        delay: Duration::ZERO,
        attributes: vec![
            (REASON_ATTRIBUTE.to_string(), why.to_string()),
            (REASON_CODE_ATTRIBUTE.to_string(), why.code().to_string()),
            (SOURCE_ID_ATTRIBUTE.to_string(), m.id.clone()),
        ],
    }
}

/// Attempts of one delete batch.
const DELETE_ATTEMPTS: u32 = 3;
/// Wait before the second attempt of a delete batch; doubled after.
const DELETE_RETRY: Duration = Duration::from_millis(400);

/// What happened to one message in hand.
pub(super) enum Fate {
    Delete,
    DeadLetter(DeadReason),
    /// Hand back now (shutdown, repeated failure).
    Release,
    /// Hand back with a delay (the seed's re-queue, a systemic error).
    Requeue(Duration),
}

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    /// Delete started messages, dead-letter unstartable ones, hand back
    /// the rest; all in batches of ten.
    pub(super) async fn settle(&self, fates: Vec<(usize, Message, Fate)>) {
        let k = self.b.sources.len();
        let mut delete: Vec<Vec<String>> = vec![Vec::new(); k];
        let mut release: Vec<Vec<String>> = vec![Vec::new(); k];
        let mut requeue: Vec<(usize, String, Duration)> = Vec::new();
        let mut dead: Vec<Vec<(Message, DeadReason)>> = (0..k).map(|_| Vec::new()).collect();
        let total = fates.len();
        for (src, m, fate) in fates {
            match fate {
                Fate::Delete => delete[src].push(m.receipt),
                Fate::Release => release[src].push(m.receipt),
                Fate::Requeue(d) => requeue.push((src, m.receipt, d)),
                Fate::DeadLetter(why) => dead[src].push((m, why)),
            }
        }
        for (src, items) in dead.into_iter().enumerate() {
            let out: Vec<OutgoingMessage> = items.iter().map(dead_letter_message).collect();
            // Packed by size: unstartable bodies are often large ones.
            for r in send_batches(out.iter().map(OutgoingMessage::size)) {
                let receipts = self.dead_letter(src, &items[r.clone()], &out[r]).await;
                delete[src].extend(receipts);
            }
        }
        let mut sum = RunSummary::default();
        {
            let now = self.now();
            let mut st = self.state();
            for (s, receipts) in st.sources.iter_mut().zip(delete) {
                s.deletes.add(receipts, now);
            }
        }
        self.flush_deletes(Flush::Due).await;
        for (src, receipts) in release.iter().enumerate() {
            sum.released += receipts.len() as u64;
            self.hide(src, receipts, Duration::ZERO).await;
        }
        for (src, receipt, d) in &requeue {
            sum.requeued += 1;
            self.hide(*src, std::slice::from_ref(receipt), *d).await;
        }
        let mut st = self.state();
        st.in_hand = st.in_hand.saturating_sub(total);
        self.tally_in(&mut st, Counter::Released, sum.released);
        self.tally_in(&mut st, Counter::Requeued, sum.requeued);
    }

    /// Delete the started messages that `flush` says are due
    /// (`control::linger`).
    pub(super) async fn flush_deletes(&self, flush: Flush) {
        let now = self.now();
        let batches: Vec<(usize, Vec<String>)> = {
            let mut st = self.state();
            st.sources
                .iter_mut()
                .enumerate()
                .map(|(src, s)| (src, s.deletes.take(flush, now)))
                .filter(|(_, receipts)| !receipts.is_empty())
                .collect()
        };
        for (src, receipts) in batches {
            let deleted = self.delete_all(src, &receipts).await;
            self.tally(Counter::Deletes, deleted);
        }
    }

    /// Move unstartable messages (`out`, one batch) to the DLQ with their
    /// reason; returns the receipts now safe to delete from the source.
    async fn dead_letter(
        &self,
        src: usize,
        items: &[(Message, DeadReason)],
        out: &[OutgoingMessage],
    ) -> Vec<String> {
        let s = &self.b.sources[src];
        for (m, why) in items {
            warn!(queue = %s.name, message_id = %m.id, reason = %why, code = why.code(),
                "message cannot be started; moving it to the dead-letter queue with this reason (fanout-reason): fix it and send it again");
        }
        let failed: HashSet<usize> = match s.dlq.send_batch(out).await {
            Ok(f) => f.into_iter().map(|f| f.index).collect(),
            Err(e) => {
                warn!(queue = %s.name, error = %e, "could not reach the dead-letter queue; messages stay in the source");
                (0..items.len()).collect()
            }
        };
        let moved = items.len() - failed.len();
        self.tally(Counter::DeadLettered, moved as u64);
        items
            .iter()
            .enumerate()
            .filter(|(i, _)| !failed.contains(i))
            .map(|(_, (m, _))| m.receipt.clone())
            .collect()
    }

    /// Delete in batches, retrying failed entries a few times. A delete
    /// that never succeeds only means a redelivery, which the
    /// deterministic name makes harmless.
    async fn delete_all(&self, src: usize, receipts: &[String]) -> u64 {
        let q = &self.b.sources[src].queue;
        let batches = receipts.chunks(BATCH).map(|chunk| async move {
            let mut pending: Vec<String> = chunk.to_vec();
            let mut deleted = 0u64;
            let mut backoff = Backoff::doubling(DELETE_RETRY, DELETE_RETRY * 2);
            for attempt in 0..DELETE_ATTEMPTS {
                if pending.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(backoff.next().unwrap_or(DELETE_RETRY)).await;
                }
                match q.delete_batch(&pending).await {
                    Ok(failures) => {
                        let failed: HashSet<usize> = failures.iter().map(|f| f.index).collect();
                        deleted += (pending.len() - failed.len()) as u64;
                        pending = pending
                            .into_iter()
                            .enumerate()
                            .filter(|(i, _)| failed.contains(i))
                            .map(|(_, r)| r)
                            .collect();
                    }
                    Err(e) => debug!(error = %e, "delete batch failed, retrying"),
                }
            }
            if !pending.is_empty() {
                warn!(queue = %self.b.sources[src].name, count = pending.len(),
                    "delete failed; the messages will be redelivered and recognised as started");
                self.tally(Counter::DeleteFailures, pending.len() as u64);
            }
            deleted
        });
        futures::future::join_all(batches).await.into_iter().sum()
    }

    /// Set the visibility of `receipts` to `d` (0 hands them back).
    pub(super) async fn hide(&self, src: usize, receipts: &[String], d: Duration) {
        let q = &self.b.sources[src].queue;
        for chunk in receipts.chunks(BATCH) {
            if let Err(e) = q.change_visibility_batch(chunk, d).await {
                // They reappear when their visibility times out anyway.
                debug!(error = %e, "change visibility failed");
            }
        }
    }
}
