//! A FIFO queue kept in fixed-size chunks: what a lane holds its waiting deliveries in.

use std::collections::VecDeque;

/// Items per chunk (a chunk of 16-byte deliveries is 4 KiB).
const CHUNK: usize = 256;

/// A FIFO queue stored as a list of fixed-capacity chunks.
///
/// NOTE: a lane's queue can grow to millions of deliveries when a consumer lags
/// (`publish_batch` of a million events). A `VecDeque` grows by doubling: every
/// growth copies the whole queue into a fresh allocation, whose pages the kernel
/// must zero; that was a fifth of `publish_batch`'s time in the W6 profile. Chunks
/// never move once written, and drained chunks go back to the allocator.
pub struct ChunkedQueue<T> {
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for ChunkedQueue<T> {
    fn default() -> Self {
        ChunkedQueue {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> ChunkedQueue<T> {
    /// Items in the queue.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the queue holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `item` at the back.
    pub fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push_back(item),
            _ => {
                let mut chunk = VecDeque::with_capacity(CHUNK);
                chunk.push_back(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// Removes and returns the item at the front.
    pub fn pop_front(&mut self) -> Option<T> {
        let front = self.chunks.front_mut()?;
        let item = front.pop_front()?;
        self.len -= 1;
        // NOTE: the last chunk stays (empty) so that a queue going between empty and
        // one item does not allocate each time.
        if front.is_empty() && self.chunks.len() > 1 {
            self.chunks.pop_front();
        }
        Some(item)
    }

    /// Removes every item, front to back.
    pub fn drain_all(&mut self) -> impl Iterator<Item = T> {
        self.len = 0;
        std::mem::take(&mut self.chunks).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_across_chunks() {
        let mut q = ChunkedQueue::default();
        assert!(q.is_empty() && q.pop_front().is_none());
        let mut next_out = 0;
        let mut next_in = 0;
        // Interleave pushes and pops so the front and back cross chunk borders.
        for round in 0..20 {
            for _ in 0..(CHUNK * 3 / 2 + round) {
                q.push_back(next_in);
                next_in += 1;
            }
            for _ in 0..(CHUNK + round * 7) {
                assert_eq!(q.pop_front(), Some(next_out));
                next_out += 1;
            }
            assert_eq!(q.len(), next_in - next_out);
        }
        let rest: Vec<_> = q.drain_all().collect();
        assert_eq!(rest, (next_out..next_in).collect::<Vec<_>>());
        assert!(q.is_empty() && q.pop_front().is_none());
        q.push_back(7);
        assert_eq!((q.len(), q.pop_front(), q.len()), (1, Some(7), 0));
    }

    #[test]
    fn empty_to_one_and_back_keeps_one_chunk() {
        let mut q = ChunkedQueue::default();
        for i in 0..(CHUNK * 4) {
            q.push_back(i);
            assert_eq!(q.pop_front(), Some(i));
        }
        assert!(q.chunks.len() <= 1);
    }
}
