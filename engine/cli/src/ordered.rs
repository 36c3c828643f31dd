//! What the parallel line reader and the parallel record writer share: jobs taken by the
//! first free worker, results put back in the order of their sequence numbers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc::Receiver;

/// The next job of a queue shared by workers; `None` once the queue is closed (or a worker
/// holding it failed).
pub fn next_job<T>(jobs: &Mutex<Receiver<T>>) -> Option<T> {
    jobs.lock().ok()?.recv().ok()
}

/// Results that arrive in any order, handed out in the order of their sequence numbers
/// (0, 1, 2, …).
pub struct InOrder<T> {
    next: u64,
    waiting: BTreeMap<u64, T>,
}

impl<T> Default for InOrder<T> {
    fn default() -> Self {
        Self {
            next: 0,
            waiting: BTreeMap::new(),
        }
    }
}

impl<T> InOrder<T> {
    /// Adds result `seq`.
    pub fn put(&mut self, seq: u64, item: T) {
        self.waiting.insert(seq, item);
    }

    /// The next result in order, when it has arrived.
    pub fn take(&mut self) -> Option<T> {
        let item = self.waiting.remove(&self.next)?;
        self.next += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_out_in_sequence_order() {
        let mut o = InOrder::default();
        o.put(1, "b");
        assert_eq!(o.take(), None);
        o.put(0, "a");
        o.put(2, "c");
        assert_eq!(
            (o.take(), o.take(), o.take(), o.take()),
            (Some("a"), Some("b"), Some("c"), None)
        );
    }
}
