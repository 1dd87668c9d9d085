//! The delete linger: started messages are deleted in whole batches, since
//! DeleteMessageBatch is paid per call. They stay hidden meanwhile, and a
//! redelivery of one would only be recognised as started.

use crate::control::ledger::Secs;
use crate::control::receive::BATCH;

/// A partial batch of deletes waits at most this long for company.
pub const DELETE_LINGER: Secs = 1.0;

/// Which waiting items a flush takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Whole batches, and a partial batch once it waited `DELETE_LINGER`.
    Due,
    /// Everything (shutdown).
    All,
}

/// Items waiting to be flushed in batches, and since when.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending<T> {
    items: Vec<T>,
    since: Secs,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            items: Vec::new(),
            since: 0.0,
        }
    }
}

impl<T> Pending<T> {
    /// Add `items` at `now`; the wait starts when the first one arrives.
    pub fn add(&mut self, items: impl IntoIterator<Item = T>, now: Secs) {
        if self.items.is_empty() {
            self.since = now;
        }
        self.items.extend(items);
    }

    /// Take what `flush` says is due at `now` (oldest first); the rest
    /// waits from now on.
    pub fn take(&mut self, flush: Flush, now: Secs) -> Vec<T> {
        let take = if flush == Flush::All || now - self.since >= DELETE_LINGER {
            self.items.len()
        } else {
            self.items.len() / BATCH * BATCH
        };
        if take == 0 {
            return Vec::new();
        }
        let rest = self.items.split_off(take);
        self.since = now;
        std::mem::replace(&mut self.items, rest)
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_batches_go_at_once_and_the_rest_waits() {
        let mut p = Pending::default();
        p.add(0..23, 5.0);
        assert_eq!(p.take(Flush::Due, 5.2), (0..20).collect::<Vec<_>>());
        assert_eq!(p.len(), 3);
        assert!(p.take(Flush::Due, 6.1).is_empty(), "waited 0.9 s since 5.2");
        assert_eq!(p.take(Flush::Due, 6.2), [20, 21, 22]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_partial_batch_goes_once_it_lingered() {
        let mut p = Pending::default();
        p.add(0..3, 10.0);
        p.add(3..5, 10.8);
        assert!(p.take(Flush::Due, 10.9).is_empty());
        assert_eq!(p.take(Flush::Due, 11.0), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn shutdown_takes_everything() {
        let mut p = Pending::default();
        p.add(0..3, 10.0);
        assert_eq!(p.take(Flush::All, 10.0), [0, 1, 2]);
        assert!(p.take(Flush::All, 10.0).is_empty());
    }
}
