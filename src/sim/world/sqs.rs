//! SQS: standard queues with visibility timeouts, receipts, a redrive
//! policy and at-least-once delivery. Messages live in one arena; a queue
//! holds indices into it.
//!
//! Receipts, as DeleteMessage documents them: "If you receive a message
//! more than once, the receipt handle you get each time you receive the
//! message is different. When you request DeleteMessage, if you don't
//! provide the most recently received receipt handle for the message, the
//! request will still succeed, but the message might not be deleted."
//! Here an older handle never deletes; the latest deletes even while the
//! message is in another receiver's hand ("Even if the message is locked
//! by another reader due to the visibility timeout setting, it is still
//! deleted"). A duplicate delivery ("you might get a message more than
//! once") hands a message still in flight to the next receive as well,
//! with a new receipt handle: the first receiver's handle is then stale.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{Micros, us};
use crate::ports::{EntryFailure, Message, PortError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsgState {
    Visible,
    Hidden,
    Deleted,
}

#[derive(Debug)]
struct Msg {
    id: String,
    body: String,
    queue: usize,
    state: MsgState,
    receive_count: u32,
    /// Receipt generation: bumped on every receive.
    receipt: u32,
    /// Bumped on every visibility change; stale heap entries are skipped.
    vis_seq: u32,
    /// Index in the original workload, for the report.
    origin: Option<u32>,
}

/// One queue: the visible messages in order, the hidden ones by the time
/// they reappear.
#[derive(Debug, Default)]
struct Queue {
    visible: VecDeque<u32>,
    /// (visible again at, message, vis_seq); an entry whose vis_seq is
    /// behind the message's is stale.
    hidden: BinaryHeap<Reverse<(Micros, u32, u32)>>,
    hidden_count: usize,
    dlq: Option<usize>,
    /// Probability that a delivery is duplicated to the next receive.
    duplicate_probability: f64,
    /// Messages in flight the next receive also gets (duplicates).
    duplicates: VecDeque<u32>,
}

/// What a receive handed out, and the workload messages it redrove.
#[derive(Debug, Default)]
pub(super) struct Received {
    /// The messages, now hidden for the visibility timeout.
    pub(super) messages: Vec<Message>,
    /// Origins of the messages moved to their DLQ on the way.
    pub(super) redriven: Vec<u32>,
    /// Messages among them delivered again while in another's hand.
    pub(super) duplicates: u64,
    /// The workload origins of those duplicate deliveries.
    pub(super) duplicated: Vec<u32>,
}

/// A workload message a delete removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Deleted {
    /// The message's index in the workload.
    pub(super) origin: u32,
    /// How often it had been received.
    pub(super) receive_count: u32,
}

/// Every queue of the account and every message ever sent to one.
#[derive(Debug)]
pub(super) struct Sqs {
    msgs: Vec<Msg>,
    by_id: HashMap<String, u32>,
    queues: Vec<Queue>,
    max_receive_count: u32,
    /// Draws duplicate deliveries; apart from the world's stream so runs
    /// without duplicates keep their draws.
    duplicate_rng: StdRng,
}

fn new_id(rng: &mut StdRng) -> String {
    let a: u64 = rng.random();
    let b: u64 = rng.random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

fn entry_failure(index: usize, code: &str, receipt: &str) -> EntryFailure {
    EntryFailure {
        index,
        error: PortError::Permanent {
            service: "sqs",
            code: code.into(),
            message: receipt.to_string(),
        },
    }
}

impl Sqs {
    /// `queues` empty queues; a queue with a DLQ redrives a message
    /// received more than `max_receive_count` times. `seed` seeds the
    /// duplicate deliveries.
    pub(super) fn new(queues: usize, max_receive_count: u32, seed: u64) -> Sqs {
        Sqs {
            msgs: Vec::new(),
            by_id: HashMap::new(),
            queues: (0..queues).map(|_| Queue::default()).collect(),
            max_receive_count,
            duplicate_rng: StdRng::seed_from_u64(seed ^ 0xd0b1_ede1_17e2_0000),
        }
    }

    /// Deliver a received message of queue `q` again to the next receive
    /// with probability `p` (standard queues deliver at least once).
    pub(super) fn set_duplicates(&mut self, q: usize, p: f64) {
        self.queues[q].duplicate_probability = p;
    }

    /// Give queue `q` the redrive policy to `dlq`.
    pub(super) fn set_dlq(&mut self, q: usize, dlq: usize) {
        self.queues[q].dlq = Some(dlq);
    }

    /// Messages ever sent, to every queue.
    pub(super) fn message_count(&self) -> usize {
        self.msgs.len()
    }

    /// Enqueue a visible message; its id is drawn from `rng`.
    pub(super) fn push(
        &mut self,
        queue: usize,
        body: String,
        origin: Option<u32>,
        rng: &mut StdRng,
    ) -> u32 {
        let id = new_id(rng);
        let m = self.msgs.len() as u32;
        self.by_id.insert(id.clone(), m);
        self.msgs.push(Msg {
            id,
            body,
            queue,
            state: MsgState::Visible,
            receive_count: 0,
            receipt: 0,
            vis_seq: 0,
            origin,
        });
        self.queues[queue].visible.push_back(m);
        m
    }

    /// SendMessage: a message with a delay stays hidden until it is over.
    pub(super) fn send(
        &mut self,
        queue: usize,
        body: String,
        delay: Duration,
        now: f64,
        rng: &mut StdRng,
    ) {
        let m = self.push(queue, body, None, rng);
        if !delay.is_zero() {
            self.queues[queue].visible.retain(|&x| x != m);
            let msg = &mut self.msgs[m as usize];
            msg.state = MsgState::Hidden;
            let seq = msg.vis_seq;
            self.queues[queue].hidden_count += 1;
            self.queues[queue]
                .hidden
                .push(Reverse((us(now + delay.as_secs_f64()), m, seq)));
        }
    }

    /// The workload index of the message with this id, if it has one.
    pub(super) fn origin_of(&self, id: &str) -> Option<u32> {
        let &m = self.by_id.get(id)?;
        self.msgs[m as usize].origin
    }

    /// Make the messages whose visibility timeout has passed visible again.
    fn refresh(&mut self, q: usize, now: f64) {
        let now = us(now);
        while let Some(Reverse((until, m, seq))) = self.queues[q].hidden.peek().copied() {
            if until > now {
                break;
            }
            self.queues[q].hidden.pop();
            let msg = &mut self.msgs[m as usize];
            if msg.state == MsgState::Hidden && msg.vis_seq == seq && msg.queue == q {
                msg.state = MsgState::Visible;
                self.queues[q].hidden_count -= 1;
                self.queues[q].visible.push_back(m);
            }
        }
    }

    /// ReceiveMessage: up to `max` messages, hidden for `vis` seconds:
    /// the duplicates due first, then visible messages in order.
    pub(super) fn receive(&mut self, q: usize, max: usize, vis: f64, now: f64) -> Received {
        self.refresh(q, now);
        let mut out = Received::default();
        // Those due before this receive (a copy drawn now goes to the next).
        let due = self.queues[q].duplicates.len();
        for _ in 0..due {
            if out.messages.len() >= max {
                break;
            }
            let Some(m) = self.queues[q].duplicates.pop_front() else {
                break;
            };
            // Gone from the hand it was in (deleted, or visible again):
            // no copy is left to deliver.
            let msg = &self.msgs[m as usize];
            if msg.state == MsgState::Hidden && msg.queue == q {
                self.deliver(q, m, vis, now, &mut out);
                out.duplicates += 1;
                out.duplicated.extend(self.msgs[m as usize].origin);
            }
        }
        while out.messages.len() < max {
            let Some(m) = self.queues[q].visible.pop_front() else {
                break;
            };
            let dlq = self.queues[q].dlq;
            let msg = &mut self.msgs[m as usize];
            if msg.state != MsgState::Visible || msg.queue != q {
                continue;
            }
            if let Some(d) = dlq
                && msg.receive_count >= self.max_receive_count
            {
                // Redrive: received more than maxReceiveCount times.
                msg.queue = d;
                self.queues[d].visible.push_back(m);
                if let Some(o) = msg.origin {
                    out.redriven.push(o);
                }
                continue;
            }
            self.queues[q].hidden_count += 1;
            self.deliver(q, m, vis, now, &mut out);
        }
        out
    }

    /// Hand message `m` out with a new receipt, hidden until `now + vis`;
    /// draw whether the next receive gets it too.
    fn deliver(&mut self, q: usize, m: u32, vis: f64, now: f64, out: &mut Received) {
        let msg = &mut self.msgs[m as usize];
        msg.receive_count += 1;
        msg.receipt += 1;
        msg.vis_seq += 1;
        msg.state = MsgState::Hidden;
        out.messages.push(Message {
            id: msg.id.clone(),
            receipt: format!("{m}:{}", msg.receipt),
            body: msg.body.clone(),
            receive_count: msg.receive_count,
        });
        let seq = msg.vis_seq;
        let queue = &mut self.queues[q];
        queue.hidden.push(Reverse((us(now + vis), m, seq)));
        let p = queue.duplicate_probability;
        if p > 0.0 && self.duplicate_rng.random::<f64>() < p {
            queue.duplicates.push_back(m);
        }
    }

    fn parse_receipt(&self, receipt: &str) -> Option<(u32, u32)> {
        let (msg, generation) = receipt.split_once(':')?;
        let m: u32 = msg.parse().ok()?;
        let g: u32 = generation.parse().ok()?;
        ((m as usize) < self.msgs.len()).then_some((m, g))
    }

    /// DeleteMessageBatch: the per-entry failures and the workload
    /// messages deleted.
    pub(super) fn delete(
        &mut self,
        q: usize,
        receipts: &[String],
    ) -> (Vec<EntryFailure>, Vec<Deleted>) {
        let mut failures = Vec::new();
        let mut deleted = Vec::new();
        for (i, r) in receipts.iter().enumerate() {
            let Some((m, g)) = self.parse_receipt(r) else {
                failures.push(entry_failure(i, "ReceiptHandleIsInvalid", r));
                continue;
            };
            let msg = &mut self.msgs[m as usize];
            // A stale receipt "succeeds" without deleting, as SQS documents.
            if msg.receipt == g && msg.queue == q && msg.state != MsgState::Deleted {
                if msg.state == MsgState::Hidden {
                    self.queues[q].hidden_count -= 1;
                }
                msg.state = MsgState::Deleted;
                if let Some(origin) = msg.origin {
                    deleted.push(Deleted {
                        origin,
                        receive_count: msg.receive_count,
                    });
                }
            }
        }
        (failures, deleted)
    }

    /// ChangeMessageVisibilityBatch: 0 makes a message visible at once.
    pub(super) fn change_visibility(
        &mut self,
        q: usize,
        receipts: &[String],
        vis: f64,
        now: f64,
    ) -> Vec<EntryFailure> {
        let mut failures = Vec::new();
        for (i, r) in receipts.iter().enumerate() {
            let ok = match self.parse_receipt(r) {
                Some((m, g)) => {
                    let msg = &mut self.msgs[m as usize];
                    if msg.receipt == g && msg.queue == q && msg.state == MsgState::Hidden {
                        msg.vis_seq += 1;
                        if vis <= 0.0 {
                            msg.state = MsgState::Visible;
                            self.queues[q].hidden_count -= 1;
                            self.queues[q].visible.push_back(m);
                        } else {
                            let seq = msg.vis_seq;
                            self.queues[q].hidden.push(Reverse((us(now + vis), m, seq)));
                        }
                        true
                    } else {
                        false
                    }
                }
                None => false,
            };
            if !ok {
                failures.push(entry_failure(i, "MessageNotInflight", r));
            }
        }
        failures
    }

    /// The workload origin of the message a receipt is for, stale or not.
    pub(super) fn origin_of_receipt(&self, receipt: &str) -> Option<u32> {
        let (m, _) = self.parse_receipt(receipt)?;
        self.msgs[m as usize].origin
    }

    /// Origins of the workload messages in someone's hand (or delayed).
    pub(super) fn hidden_origins(&self) -> Vec<u32> {
        self.msgs
            .iter()
            .filter(|m| m.state == MsgState::Hidden)
            .filter_map(|m| m.origin)
            .collect()
    }

    /// Each workload message's receive count, by origin.
    pub(super) fn receive_counts(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.msgs
            .iter()
            .filter_map(|m| Some((m.origin?, m.receive_count)))
    }

    /// Visible messages in queue `q` (as of its last refresh).
    pub(super) fn visible(&self, q: usize) -> usize {
        self.queues[q].visible.len()
    }

    /// Messages of queue `q` in someone's hand or delayed.
    pub(super) fn hidden(&self, q: usize) -> usize {
        self.queues[q].hidden_count
    }

    /// GetQueueAttributes' counts of queue `q` at `now`: (visible, hidden:
    /// in someone's hand or delayed). Moves nothing: asking must not
    /// change the order later receives see.
    pub(super) fn depth(&self, q: usize, now: f64) -> (usize, usize) {
        let now = us(now);
        let queue = &self.queues[q];
        let due = queue
            .hidden
            .iter()
            .filter(|Reverse((until, m, seq))| {
                let msg = &self.msgs[*m as usize];
                *until <= now
                    && msg.state == MsgState::Hidden
                    && msg.vis_seq == *seq
                    && msg.queue == q
            })
            .count();
        (queue.visible.len() + due, queue.hidden_count - due)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    const WORK: usize = 0;
    const DLQ: usize = 1;

    /// A work queue with a DLQ at maxReceiveCount 3.
    fn sqs() -> (Sqs, StdRng) {
        let mut s = Sqs::new(2, 3, 7);
        s.set_dlq(WORK, DLQ);
        (s, StdRng::seed_from_u64(7))
    }

    #[test]
    fn redrives_on_the_receive_after_max_receive_count_receives() {
        let (mut s, mut rng) = sqs();
        s.push(WORK, "a".into(), Some(42), &mut rng);
        for n in 1..=3 {
            let got = s.receive(WORK, 10, 30.0, f64::from(n - 1) * 31.0);
            assert_eq!(got.messages.len(), 1, "receive {n}");
            assert_eq!(got.messages[0].receive_count, n);
            assert!(got.redriven.is_empty(), "redriven early, on receive {n}");
        }
        let got = s.receive(WORK, 10, 30.0, 93.0);
        assert!(got.messages.is_empty());
        assert_eq!(got.redriven, vec![42]);
        assert_eq!((s.visible(WORK), s.visible(DLQ)), (0, 1));
        // A DLQ has no redrive of its own: its consumer gets the message.
        let got = s.receive(DLQ, 10, 30.0, 93.0);
        assert_eq!(got.messages.len(), 1);
        assert_eq!(got.messages[0].receive_count, 4);
    }

    #[test]
    fn a_stale_receipt_deletes_nothing_and_does_not_fail() {
        let (mut s, mut rng) = sqs();
        s.push(WORK, "a".into(), Some(0), &mut rng);
        let first = s.receive(WORK, 10, 10.0, 0.0).messages.remove(0);
        let second = s.receive(WORK, 10, 10.0, 11.0).messages.remove(0);
        let (failures, deleted) = s.delete(WORK, &[first.receipt]);
        assert!(failures.is_empty());
        assert!(deleted.is_empty());
        assert_eq!(s.hidden(WORK), 1, "still in the second receiver's hand");
        let (failures, deleted) = s.delete(WORK, &[second.receipt]);
        assert!(failures.is_empty());
        let gone = Deleted {
            origin: 0,
            receive_count: 2,
        };
        assert_eq!(deleted, vec![gone]);
        assert_eq!(s.hidden(WORK), 0);
        let (failures, _) = s.delete(WORK, &["junk".to_string()]);
        assert!(matches!(
            &failures[0].error,
            PortError::Permanent { code, .. } if code == "ReceiptHandleIsInvalid"
        ));
    }

    #[test]
    fn a_message_whose_visibility_expires_is_received_again() {
        let (mut s, mut rng) = sqs();
        s.push(WORK, "a".into(), None, &mut rng);
        let first = s.receive(WORK, 10, 30.0, 0.0).messages.remove(0);
        assert!(s.receive(WORK, 10, 30.0, 29.9).messages.is_empty());
        let again = s.receive(WORK, 10, 30.0, 30.0).messages.remove(0);
        assert_eq!(again.id, first.id);
        assert_eq!(again.receive_count, 2);
        assert_ne!(again.receipt, first.receipt);
    }

    #[test]
    fn change_visibility_zero_makes_a_message_visible_at_once() {
        let (mut s, mut rng) = sqs();
        s.push(WORK, "a".into(), None, &mut rng);
        let m = s.receive(WORK, 10, 30.0, 0.0).messages.remove(0);
        let failures = s.change_visibility(WORK, std::slice::from_ref(&m.receipt), 0.0, 1.0);
        assert!(failures.is_empty());
        assert_eq!((s.visible(WORK), s.hidden(WORK)), (1, 0));
        let again = s.receive(WORK, 10, 30.0, 1.0).messages.remove(0);
        assert_eq!(again.receive_count, 2);
        // The old receipt is no longer in flight.
        let failures = s.change_visibility(WORK, &[m.receipt], 0.0, 2.0);
        assert!(matches!(
            &failures[0].error,
            PortError::Permanent { code, .. } if code == "MessageNotInflight"
        ));
    }

    #[test]
    fn a_duplicate_goes_to_the_next_receive_and_only_its_latest_receipt_deletes() {
        let (mut s, mut rng) = sqs();
        s.set_duplicates(WORK, 1.0 - f64::EPSILON);
        s.push(WORK, "a".into(), Some(0), &mut rng);
        let first = s.receive(WORK, 10, 30.0, 0.0);
        assert_eq!((first.messages.len(), first.duplicates), (1, 0));
        let first = first.messages[0].clone();
        // In the first receiver's hand, and delivered again all the same.
        let again = s.receive(WORK, 10, 30.0, 1.0);
        assert_eq!(again.duplicates, 1);
        let again = again.messages[0].clone();
        assert_eq!(
            (again.id.as_str(), again.body.as_str()),
            (first.id.as_str(), "a")
        );
        assert_eq!(again.receive_count, 2);
        assert_ne!(again.receipt, first.receipt, "a new receipt handle");
        assert_eq!((s.visible(WORK), s.hidden(WORK)), (0, 1), "one message");
        // The older handle: the delete succeeds and deletes nothing.
        let (failures, deleted) = s.delete(WORK, std::slice::from_ref(&first.receipt));
        assert!(failures.is_empty() && deleted.is_empty());
        assert_eq!(s.hidden(WORK), 1);
        // The latest deletes, and no copy of a deleted message is delivered.
        let (_, deleted) = s.delete(WORK, &[again.receipt]);
        assert_eq!(deleted.len(), 1);
        let after = s.receive(WORK, 10, 30.0, 2.0);
        assert!(after.messages.is_empty() && after.duplicates == 0);
        assert_eq!(s.hidden(WORK), 0);
    }

    #[test]
    fn duplicates_come_at_about_their_probability_and_not_at_zero() {
        let dups = |p: f64| {
            let (mut s, mut rng) = sqs();
            s.set_duplicates(WORK, p);
            for i in 0..2000 {
                s.push(WORK, format!("m{i}"), None, &mut rng);
            }
            let mut n = 0;
            for k in 0..400 {
                let got = s.receive(WORK, 10, 1e6, f64::from(k));
                n += got.duplicates;
            }
            n
        };
        assert_eq!(dups(0.0), 0);
        let n = dups(0.1);
        assert!(
            (150..250).contains(&n),
            "{n} duplicates of ~2000 deliveries"
        );
    }
}
