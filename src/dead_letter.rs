//! The in-memory dead-letter queue: events whose delivery to a consumer failed
//! every allowed attempt.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

/// One event given up on for one consumer.
#[derive(Debug)]
pub struct DeadLetter<E> {
    /// The event.
    pub event: Arc<E>,
    /// The consumer that could not handle it.
    pub consumer: Arc<str>,
    /// The error of each failed attempt, oldest first.
    pub errors: Vec<String>,
    /// How many times delivery was attempted.
    pub attempts: u32,
    /// When it was given up on.
    pub at: SystemTime,
}

impl<E> Clone for DeadLetter<E> {
    fn clone(&self) -> Self {
        DeadLetter {
            event: self.event.clone(),
            consumer: self.consumer.clone(),
            errors: self.errors.clone(),
            attempts: self.attempts,
            at: self.at,
        }
    }
}

/// A bounded FIFO of dead letters. When full, the oldest entry is evicted and
/// counted in [`DeadLetterQueue::evicted`].
pub struct DeadLetterQueue<E> {
    items: VecDeque<DeadLetter<E>>,
    capacity: usize,
    evicted: u64,
}

impl<E> DeadLetterQueue<E> {
    /// An empty queue holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        DeadLetterQueue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// Appends an entry, evicting the oldest when full. Returns the evicted entry.
    pub fn push(&mut self, letter: DeadLetter<E>) -> Option<DeadLetter<E>> {
        let evicted = if self.items.len() >= self.capacity {
            self.evicted += 1;
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back(letter);
        evicted
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many entries were evicted because the queue was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &DeadLetter<E>> {
        self.items.iter()
    }

    /// Removes and returns the entries for which `pick` is true, oldest first.
    pub fn take_where(
        &mut self,
        mut pick: impl FnMut(&DeadLetter<E>) -> bool,
    ) -> Vec<DeadLetter<E>> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.items.len());
        for item in self.items.drain(..) {
            if pick(&item) {
                taken.push(item);
            } else {
                kept.push_back(item);
            }
        }
        self.items = kept;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(n: u32) -> DeadLetter<u32> {
        DeadLetter {
            event: Arc::new(n),
            consumer: "c".into(),
            errors: vec![],
            attempts: 1,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn bounded_and_evicts_oldest() {
        let mut q = DeadLetterQueue::new(2);
        assert!(q.push(letter(1)).is_none());
        assert!(q.push(letter(2)).is_none());
        assert_eq!(*q.push(letter(3)).unwrap().event, 1);
        assert_eq!(q.evicted(), 1);
        let taken = q.take_where(|l| *l.event == 3);
        assert_eq!(taken.len(), 1);
        assert_eq!(q.len(), 1);
    }
}
