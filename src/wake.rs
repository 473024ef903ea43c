//! The loop-wake protocol: how threads without the GIL wake an event loop.
//!
//! The loop watches the read end of a socket pair (`loop.add_reader`). Work is
//! queued elsewhere (the binding's inbox); [`Waker::wake`] writes one byte only
//! when no wake-up is pending, so a burst of work costs one wake-up. The loop
//! side drains the socket, runs what is queued, and then calls
//! [`Waker::settle`], which clears the pending flag and re-checks the queue:
//! work pushed between the loop's last look and the clearing saw the flag still
//! set and wrote nothing, so the loop must pick it up itself.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

/// A socket pair and a pending flag.
pub struct Waker {
    pending: AtomicBool,
    tx: UnixStream,
    rx: UnixStream,
}

impl Waker {
    /// A new waker with its non-blocking socket pair.
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Waker {
            pending: AtomicBool::new(false),
            tx,
            rx,
        })
    }

    /// The descriptor the loop watches.
    pub fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.rx.as_raw_fd()
    }

    /// Wakes the loop unless a wake-up is already pending.
    pub fn wake(&self) {
        if self.claim() {
            self.force_wake();
        }
    }

    /// Sets the pending flag; true when it was clear, so the caller owes the
    /// loop a wake-up (by [`Waker::force_wake`] or by another way to the same
    /// loop, such as a call made on the loop's own thread).
    pub fn claim(&self) -> bool {
        !self.pending.swap(true, Ordering::AcqRel)
    }

    /// Writes a wake-up byte regardless of the pending flag (after a rebind, or
    /// when the loop stopped early and must come back).
    pub fn force_wake(&self) {
        // NOTE: a full socket buffer means wake-ups are already queued; dropping
        // this byte loses nothing.
        let _ = (&self.tx).write(&[1]);
    }

    /// Reads every pending wake-up byte.
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        while let Ok(n) = (&self.rx).read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
    }

    /// Called by the loop when it found nothing queued: clears the pending flag,
    /// then re-checks with `is_empty`. Returns true when the loop may go idle;
    /// false when work arrived meanwhile (the flag is set again and the loop must
    /// run it now).
    pub fn settle(&self, is_empty: impl Fn() -> bool) -> bool {
        self.pending.store(false, Ordering::Release);
        if is_empty() {
            return true;
        }
        self.pending.store(true, Ordering::Release);
        false
    }

    /// Whether a wake-up is pending (for tests and diagnostics).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable_bytes(w: &Waker) -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Ok(k) = (&w.rx).read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    }

    #[test]
    fn a_burst_costs_one_wake_up() {
        let w = Waker::new().unwrap();
        for _ in 0..1000 {
            w.wake();
        }
        assert!(w.is_pending());
        assert_eq!(readable_bytes(&w), 1);
    }

    #[test]
    fn settle_rechecks_what_arrived_while_the_flag_was_set() {
        let w = Waker::new().unwrap();
        w.wake();
        w.drain();
        // Work pushed after the loop's last look: its wake() saw the flag set.
        w.wake();
        assert_eq!(readable_bytes(&w), 0, "no byte: a wake-up was pending");
        assert!(
            !w.settle(|| false),
            "the loop must run the late work itself"
        );
        assert!(w.is_pending());
        assert!(w.settle(|| true));
        assert!(!w.is_pending());
        w.wake();
        assert_eq!(
            readable_bytes(&w),
            1,
            "after settling, the next wake writes again"
        );
    }

    #[test]
    fn force_wake_writes_even_while_pending() {
        let w = Waker::new().unwrap();
        w.wake();
        w.force_wake();
        assert_eq!(readable_bytes(&w), 2);
        w.drain();
        assert_eq!(readable_bytes(&w), 0);
    }
}
