//! The metrics sink: counts by topic, type, source and `topic:type`, event rate
//! over a sliding window, peak rate, latency percentiles, top-N, and failures
//! per consumer.
//!
//! The rate is computed when it is read, from 0.1-second buckets covering exactly
//! the last `window_size` seconds, so it decays to 0 once events stop. Every
//! time-dependent entry point has an `_at(now)` form so tests choose the clock.

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use super::{BoxFuture, Sink, SinkItem};

/// Settings of the metrics sink.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Sliding window for the rate, in seconds.
    pub window_size: u64,
    /// How many entries `top_events` / `top_topics` list.
    pub top_n: usize,
}

// NOTE: FxHash: keys are our own topic/type/source strings, not attacker-chosen
// in a way that matters here, and SipHash dominated the per-event cost.
struct State {
    by_topic_type: FxHashMap<String, FxHashMap<String, u64>>,
    by_source: FxHashMap<String, u64>,
    errors: FxHashMap<String, u64>,
    total: u64,
    /// (bucket since start, events counted in it), oldest first; a bucket is
    /// [`BUCKET_NS`] long. Only buckets that can still overlap the window are kept.
    window: VecDeque<(u64, u64)>,
    /// Sum of the counts in `window`.
    in_window: u64,
    /// The latest instant a batch was counted at, in nanoseconds since start.
    latest_ns: u128,
    /// The highest rate computed so far (see [`MetricsSink::snapshot_at`]).
    peak_rate: f64,
    latency_us: Histogram<u64>,
    latency_sum_us: f64,
}

/// Width of one rate bucket in nanoseconds (0.1 s). It is also the shortest span a
/// rate is divided by, so the first events are not read as thousands per second.
pub const BUCKET_NS: u128 = 100_000_000;

impl State {
    /// The rate at `elapsed` (nanoseconds since the sink started): the events of
    /// the window `(elapsed - window, elapsed]` divided by the window, or by the
    /// elapsed time (at least one bucket) while that is shorter. Drops the
    /// buckets that lie wholly before the window.
    fn rate(&mut self, elapsed: u128, window: u128) -> f64 {
        let mut events = 0.0;
        if elapsed > window {
            let start = elapsed - window;
            let first = (start / BUCKET_NS) as u64;
            while let Some(&(b, n)) = self.window.front() {
                if b >= first {
                    break;
                }
                self.window.pop_front();
                self.in_window -= n;
            }
            // NOTE: the window starts inside bucket `first`; its events are taken
            // as spread evenly over the bucket, and only the share after `start`
            // counts. That makes a steady rate read exactly, at any instant.
            if let Some(&(b, n)) = self.window.front() {
                if b == first {
                    let before = start - u128::from(first) * BUCKET_NS;
                    events -= n as f64 * before as f64 / BUCKET_NS as f64;
                }
            }
        }
        events += self.in_window as f64;
        let span = elapsed.clamp(BUCKET_NS, window);
        events.max(0.0) / (span as f64 / 1e9)
    }
}

/// Receives the periodic report text; the returned receiver (if any)
/// completes once the report was written.
pub type ReportFn = Box<dyn Fn(String) -> Option<tokio::sync::oneshot::Receiver<()>> + Send + Sync>;

struct Reporter {
    interval: Duration,
    last: Mutex<Instant>,
    out: ReportFn,
}

/// Counts everything it is given.
pub struct MetricsSink {
    config: MetricsConfig,
    started: Instant,
    state: Mutex<State>,
    reporter: Option<Reporter>,
}

fn top(map: HashMap<String, u64>, n: usize) -> Map<String, Value> {
    let mut v: Vec<(String, u64)> = map.into_iter().collect();
    v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter().take(n).map(|(k, c)| (k, json!(c))).collect()
}

impl MetricsSink {
    /// A sink with empty counters.
    pub fn new(config: MetricsConfig) -> Self {
        MetricsSink {
            config,
            started: Instant::now(),
            state: Mutex::new(State {
                by_topic_type: FxHashMap::default(),
                by_source: FxHashMap::default(),
                errors: FxHashMap::default(),
                total: 0,
                window: VecDeque::new(),
                in_window: 0,
                latest_ns: 0,
                peak_rate: 0.0,
                latency_us: Histogram::new_with_bounds(1, 86_400_000_000, 2).expect("valid bounds"),
                latency_sum_us: 0.0,
            }),
            reporter: None,
        }
    }

    /// Sends [`MetricsSink::report`] to `out` every `interval` (checked when
    /// events arrive, as the original) and once more at shutdown.
    pub fn with_report(mut self, interval: Duration, out: ReportFn) -> Self {
        self.reporter = Some(Reporter {
            interval,
            last: Mutex::new(Instant::now()),
            out,
        });
        self
    }

    /// The original's `_report_metrics` text, plus the latency percentiles.
    pub fn report(&self) -> String {
        let m = self.snapshot();
        let f = |k: &str| m[k].as_f64().unwrap_or(0.0);
        let mut lines = vec![
            "=== Event Metrics Report ===".to_string(),
            format!("Total Events: {}", m["total_events"]),
            format!("Rate: {:.2} events/sec", f("events_per_second")),
            format!("Avg Latency: {:.1}ms", f("average_latency_ms")),
            format!(
                "Latency p50/p95/p99: {:.1}/{:.1}/{:.1}ms",
                f("latency_p50_ms"),
                f("latency_p95_ms"),
                f("latency_p99_ms")
            ),
            format!("Unique Topics: {}", m["unique_topics"]),
            format!("Unique Types: {}", m["unique_types"]),
        ];
        if let Some(top) = m["top_events"].as_object().filter(|t| !t.is_empty()) {
            lines.push("\nTop Events:".into());
            for (k, c) in top.iter().take(5) {
                lines.push(format!("  {k}: {c}"));
            }
        }
        if let Some(errs) = m["error_counts"].as_object().filter(|t| !t.is_empty()) {
            lines.push("\nErrors by Consumer:".into());
            for (k, c) in errs {
                lines.push(format!("  {k}: {c}"));
            }
        }
        lines.join("\n")
    }

    fn maybe_report(&self, force: bool) -> Option<tokio::sync::oneshot::Receiver<()>> {
        if let Some(r) = &self.reporter {
            let due = {
                let mut last = r.last.lock();
                if force || last.elapsed() >= r.interval {
                    *last = Instant::now();
                    true
                } else {
                    false
                }
            };
            if due {
                return (r.out)(self.report());
            }
        }
        None
    }

    /// The window in nanoseconds (at least one second).
    fn window_ns(&self) -> u128 {
        u128::from(self.config.window_size.max(1)) * 1_000_000_000
    }

    /// Counts a batch of events (also used directly, outside a bus).
    pub fn record(&self, items: &[SinkItem]) {
        self.record_at(items, Instant::now());
    }

    /// [`MetricsSink::record`] with the batch arriving at `now` (the rate's
    /// clock; latency still uses the wall clock against the event timestamps).
    pub fn record_at(&self, items: &[SinkItem], now: Instant) {
        let wall = crate::clock::now();
        let mut st = self.state.lock();
        // NOTE: two batches can take `now` in one order and the lock in the other;
        // the later-stamped one is counted at the newest instant so the buckets
        // stay in order and the clock never runs backwards.
        let elapsed = st
            .latest_ns
            .max(now.saturating_duration_since(self.started).as_nanos());
        st.latest_ns = elapsed;
        let bucket = (elapsed / BUCKET_NS) as u64;
        for item in items {
            let v = &item.view;
            let types = match st.by_topic_type.get_mut(&*v.topic) {
                Some(t) => t,
                None => st.by_topic_type.entry(v.topic.to_string()).or_default(),
            };
            match types.get_mut(&*v.event_type) {
                Some(c) => *c += 1,
                None => {
                    types.insert(v.event_type.to_string(), 1);
                }
            }
            match st.by_source.get_mut(&*v.source) {
                Some(c) => *c += 1,
                None => {
                    st.by_source.insert(v.source.to_string(), 1);
                }
            }
            let failed: Vec<Arc<str>> = {
                let m = v.meta.lock();
                if m.failed().is_empty() {
                    Vec::new()
                } else {
                    m.failed().to_vec()
                }
            };
            for c in failed {
                *st.errors.entry(c.to_string()).or_default() += 1;
            }
            let lat = (wall - v.timestamp).num_microseconds().unwrap_or(0).max(1) as u64;
            let _ = st.latency_us.record(lat.min(86_400_000_000));
            st.latency_sum_us += lat as f64;
        }
        let n = items.len() as u64;
        if n == 0 {
            return;
        }
        st.total += n;
        st.in_window += n;
        match st.window.back_mut() {
            Some((b, c)) if *b == bucket => *c += n,
            _ => st.window.push_back((bucket, n)),
        }
        // NOTE: between batches the rate can only fall (events leave the window,
        // the span grows), so its maximum over time is reached right after some
        // batch: evaluating it here makes the peak the true maximum.
        let rate = st.rate(elapsed, self.window_ns());
        if rate > st.peak_rate {
            st.peak_rate = rate;
        }
    }

    /// The metrics in the original's shape plus latency percentiles and the
    /// per-source and per-type counts.
    pub fn snapshot(&self) -> Value {
        self.snapshot_at(Instant::now())
    }

    /// [`MetricsSink::snapshot`] read at `now`. `events_per_second` is the count
    /// of the last `window_size` seconds over `window_size` (over the time since
    /// the sink started while that is shorter, but at least 0.1 s), from
    /// 0.1-second buckets, the oldest counted by its share inside the window.
    /// `peak_rate` is the highest value `events_per_second` has had at any
    /// instant so far (it is evaluated after every batch, where the maximum lies).
    pub fn snapshot_at(&self, now: Instant) -> Value {
        let mut st = self.state.lock();
        // NOTE: a read stamped before the latest batch reads at that batch.
        let elapsed = st
            .latest_ns
            .max(now.saturating_duration_since(self.started).as_nanos());
        let rate = st.rate(elapsed, self.window_ns());
        // NOTE: only guards against rounding: a read can never see more than the
        // last batch's evaluation did.
        st.peak_rate = st.peak_rate.max(rate);
        let mut topics: HashMap<String, u64> = HashMap::new();
        let mut types: HashMap<String, u64> = HashMap::new();
        let mut events: HashMap<String, u64> = HashMap::new();
        for (topic, ts) in &st.by_topic_type {
            for (ty, n) in ts {
                *topics.entry(topic.clone()).or_default() += n;
                *types.entry(ty.clone()).or_default() += n;
                events.insert(format!("{topic}:{ty}"), *n);
            }
        }
        let h = &st.latency_us;
        let pct = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let mean = if st.total > 0 {
            st.latency_sum_us / st.total as f64 / 1000.0
        } else {
            0.0
        };
        let n = self.config.top_n;
        json!({
            "total_events": st.total,
            "events_per_second": rate,
            "average_latency_ms": mean,
            "latency_p50_ms": pct(0.5),
            "latency_p95_ms": pct(0.95),
            "latency_p99_ms": pct(0.99),
            "peak_rate": st.peak_rate,
            "unique_topics": topics.len(),
            "unique_types": types.len(),
            "top_events": top(events, n),
            "top_topics": top(topics.clone(), n),
            "topic_counts": top(topics, usize::MAX),
            "type_counts": top(types, usize::MAX),
            "source_counts": top(st.by_source.iter().map(|(k, v)| (k.clone(), *v)).collect(), usize::MAX),
            "error_counts": top(st.errors.iter().map(|(k, v)| (k.clone(), *v)).collect(), usize::MAX),
            "window_size_seconds": self.config.window_size,
        })
    }
}

impl Sink for MetricsSink {
    fn needs_data(&self) -> bool {
        false
    }

    // NOTE: counting takes a lock held for a few hundred ns; a report is handed to
    // its writer thread and awaited on the runtime.
    fn runs_inline(&self) -> bool {
        true
    }

    fn consume(self: Arc<Self>, items: Vec<SinkItem>) -> BoxFuture<Vec<Result<(), String>>> {
        self.record(&items);
        let written = self.maybe_report(false);
        let n = items.len();
        Box::pin(async move {
            // NOTE: wait for the report, so that once the bus is idle it exists.
            if let Some(w) = written {
                let _ = w.await;
            }
            vec![Ok(()); n]
        })
    }

    fn shutdown(self: Arc<Self>) -> BoxFuture<()> {
        let written = self.maybe_report(true);
        Box::pin(async move {
            if let Some(w) = written {
                let _ = w.await;
            }
        })
    }

    fn metrics(&self) -> Value {
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventView, MetaState};

    fn item(topic: &str, ty: &str, failed: &[&str]) -> SinkItem {
        let mut meta = MetaState::default();
        meta.set_failed(failed.iter().map(|f| Arc::from(*f)).collect());
        SinkItem {
            view: Arc::new(EventView {
                id: "x".into(),
                topic: topic.into(),
                event_type: ty.into(),
                source: "s".into(),
                timestamp: chrono::Utc::now() - chrono::Duration::milliseconds(5),
                data: None,
                data_error: None,
                correlation_id: None,
                priority: 3,
                meta: Arc::new(Mutex::new(meta)),
            }),
            attempt: 0,
        }
    }

    #[test]
    fn counts_and_top() {
        let s = MetricsSink::new(MetricsConfig {
            window_size: 300,
            top_n: 1,
        });
        s.record(&[
            item("hook.tool", "ToolUse", &[]),
            item("hook.tool", "ToolUse", &["a"]),
            item("hook.response", "R", &[]),
        ]);
        let m = s.snapshot();
        assert_eq!(m["total_events"], 3);
        assert_eq!(m["top_events"], json!({"hook.tool:ToolUse": 2}));
        assert_eq!(m["top_topics"], json!({"hook.tool": 2}));
        assert_eq!(m["error_counts"], json!({"a": 1}));
        assert_eq!(m["unique_types"], 2);
        assert!(m["latency_p50_ms"].as_f64().unwrap() >= 4.0);
        assert!(m["events_per_second"].as_f64().unwrap() > 0.0);
    }

    fn sink(window_size: u64) -> MetricsSink {
        MetricsSink::new(MetricsConfig {
            window_size,
            top_n: 10,
        })
    }

    /// The instant `us` microseconds after the sink started.
    fn at(s: &MetricsSink, us: u64) -> Instant {
        s.started + Duration::from_micros(us)
    }

    /// Records one event every `every_us` from `from_us` (inclusive) to `to_us`
    /// (exclusive), each as its own batch; returns the rate read right after each.
    fn steady(s: &MetricsSink, from_us: u64, to_us: u64, every_us: u64) -> Vec<f64> {
        let one = [item("hook.tool", "ToolUse", &[])];
        (from_us..to_us)
            .step_by(every_us as usize)
            .map(|t| {
                s.record_at(&one, at(s, t));
                rate(s, t)
            })
            .collect()
    }

    fn rate(s: &MetricsSink, us: u64) -> f64 {
        s.snapshot_at(at(s, us))["events_per_second"]
            .as_f64()
            .unwrap()
    }

    fn peak(s: &MetricsSink) -> f64 {
        // NOTE: read at the start instant, which reads at the latest batch
        // (already evaluated there), so the read itself adds nothing new.
        s.snapshot_at(s.started)["peak_rate"].as_f64().unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn steady_500_per_second_reads_500_at_any_instant() {
        let s = sink(2);
        // one event every 2 ms at the odd milliseconds, for 10 s
        steady(&s, 1_000, 10_000_000, 2_000);
        assert!(
            close(rate(&s, 10_000_000), 500.0),
            "{}",
            rate(&s, 10_000_000)
        );
        // mid-bucket: the window starts halfway into a bucket, counted by half
        assert!(close(rate(&s, 9_950_000), 500.0), "{}", rate(&s, 9_950_000));
        // NOTE: the old one-second buckets read 750 here: seconds 7, 8 and 9 over 2 s.
        assert!(close(rate(&s, 9_999_000), 500.0), "{}", rate(&s, 9_999_000));
        assert_eq!(s.snapshot_at(at(&s, 10_000_000))["total_events"], 5000);
    }

    #[test]
    fn idle_decays_to_zero_over_the_window() {
        let s = sink(2);
        steady(&s, 1_000, 10_000_000, 2_000);
        // half the window without events: half the rate
        assert!(
            close(rate(&s, 11_000_000), 250.0),
            "{}",
            rate(&s, 11_000_000)
        );
        // a whole window without events: nothing left
        assert_eq!(rate(&s, 12_000_000), 0.0);
        assert_eq!(rate(&s, 60_000_000), 0.0);
        // and it rises again with new events
        steady(&s, 60_000_500, 60_100_000, 1_000);
        assert!(
            close(rate(&s, 60_100_000), 50.0),
            "{}",
            rate(&s, 60_100_000)
        );
    }

    #[test]
    fn while_the_window_is_not_full_the_rate_is_over_the_elapsed_time() {
        let s = sink(10);
        steady(&s, 1_000, 5_000_000, 2_000);
        // 2500 events in the first 5 s of a 10 s window
        assert!(close(rate(&s, 5_000_000), 500.0), "{}", rate(&s, 5_000_000));
        assert!(
            close(rate(&s, 8_000_000), 2500.0 / 8.0),
            "{}",
            rate(&s, 8_000_000)
        );
        assert!(
            close(rate(&s, 10_000_000), 250.0),
            "{}",
            rate(&s, 10_000_000)
        );
        // from then on over the whole window: 12 s reads (2 s, 10 s] = 1500 events
        assert!(
            close(rate(&s, 12_000_000), 150.0),
            "{}",
            rate(&s, 12_000_000)
        );
    }

    #[test]
    fn the_first_events_are_divided_by_at_least_one_bucket() {
        let s = sink(300);
        let ten: Vec<SinkItem> = (0..10).map(|_| item("a", "b", &[])).collect();
        s.record_at(&ten, at(&s, 2_000));
        // 10 events 2 ms after the start: over 0.1 s, not over 2 ms (5,000/s)
        assert!(close(rate(&s, 2_000), 100.0), "{}", rate(&s, 2_000));
        assert!(close(rate(&s, 500_000), 20.0), "{}", rate(&s, 500_000));
        assert!(close(peak(&s), 100.0), "{}", peak(&s));
    }

    #[test]
    fn peak_is_the_highest_rate_ever_read() {
        let s = sink(2);
        // 500/s for 4 s, then 1000/s for 4 s, then idle
        let mut reads = steady(&s, 1_000, 4_000_000, 2_000);
        reads.extend(steady(&s, 4_000_500, 8_000_000, 1_000));
        let highest = reads.iter().copied().fold(0.0, f64::max);
        assert_eq!(peak(&s), highest);
        // NOTE: read right after an event, the event at the window's very start is
        // counted by half (its bucket taken as even): 2000.5 events over 2 s.
        assert!(close(highest, 1000.25), "{highest}");
        // between events the steady 1000/s reads exactly
        assert!(
            close(rate(&s, 8_000_000), 1000.0),
            "{}",
            rate(&s, 8_000_000)
        );
        for t in (8_000_000..11_000_000).step_by(50_000) {
            assert!(rate(&s, t) <= peak(&s));
        }
        assert_eq!(rate(&s, 10_000_000), 0.0);
        assert_eq!(peak(&s), highest, "idle reads do not move the peak");
    }

    #[test]
    fn a_batch_stamped_before_the_previous_one_keeps_the_buckets_in_order() {
        let s = sink(2);
        let one = [item("a", "b", &[])];
        s.record_at(&one, at(&s, 1_000_000));
        s.record_at(&one, at(&s, 950_000));
        assert!(close(rate(&s, 1_000_000), 2.0), "{}", rate(&s, 1_000_000));
        assert!(close(rate(&s, 3_050_000), 0.5), "{}", rate(&s, 3_050_000));
        assert_eq!(rate(&s, 3_100_000), 0.0);
    }
}
