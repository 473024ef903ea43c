//! Per-consumer delivery statistics: counters and a latency histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Counters and latency percentiles for one consumer.
pub struct ConsumerStats {
    /// Events routed to the consumer (retries not counted again).
    pub received: AtomicU64,
    /// Deliveries that succeeded.
    pub processed: AtomicU64,
    /// Delivery attempts that failed (each failed attempt counts).
    pub failed: AtomicU64,
    /// Retries scheduled.
    pub retried: AtomicU64,
    /// Events given up on and sent to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Events skipped by the consumer's filter.
    pub filtered: AtomicU64,
    /// Events given up on at stop by a durable bus: still unacknowledged in the
    /// store, redelivered at the next start.
    pub released: AtomicU64,
    /// Failed events waiting for their retry timer.
    pub retrying: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Default for ConsumerStats {
    fn default() -> Self {
        ConsumerStats {
            received: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            released: AtomicU64::new(0),
            retrying: AtomicU64::new(0),
            // NOTE: 1 µs to 1 h at 2 significant digits: a few KiB per consumer.
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"),
            ),
        }
    }
}

/// A point-in-time copy of [`ConsumerStats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    pub received: u64,
    pub processed: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub filtered: u64,
    pub released: u64,
    pub retrying: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

impl ConsumerStats {
    /// Records how long one delivery (queue to completion) took, `count` times.
    pub fn record_latency(&self, latency: Duration, count: u64) {
        let us = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        let _ = self.latency.lock().record_n(us, count);
    }

    /// Records several delivery latencies under one lock.
    pub fn record_latencies(&self, latencies: &[Duration]) {
        if latencies.is_empty() {
            return;
        }
        let mut h = self.latency.lock();
        for l in latencies {
            let _ = h.record((l.as_micros() as u64).clamp(1, 3_600_000_000));
        }
    }

    /// Copies the counters and percentiles.
    pub fn snapshot(&self) -> StatsSnapshot {
        let h = self.latency.lock();
        let pct = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        StatsSnapshot {
            received: self.received.load(Relaxed),
            processed: self.processed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            retried: self.retried.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            filtered: self.filtered.load(Relaxed),
            released: self.released.load(Relaxed),
            retrying: self.retrying.load(Relaxed),
            latency_p50_ms: pct(0.5),
            latency_p99_ms: pct(0.99),
        }
    }
}
