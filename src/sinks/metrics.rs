//! The metrics sink: counts by topic, type, source and `topic:type`, event rate
//! over a sliding window, peak rate, latency percentiles, top-N, and failures
//! per consumer.

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
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
    /// (second since start, events in that second), oldest first.
    window: VecDeque<(u64, u64)>,
    peak_rate: f64,
    latency_us: Histogram<u64>,
    latency_sum_us: f64,
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

    /// Counts a batch of events (also used directly, outside a bus).
    pub fn record(&self, items: &[SinkItem]) {
        let now = Utc::now();
        let second = self.started.elapsed().as_secs();
        let mut st = self.state.lock();
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
            let lat = (now - v.timestamp).num_microseconds().unwrap_or(0).max(1) as u64;
            let _ = st.latency_us.record(lat.min(86_400_000_000));
            st.latency_sum_us += lat as f64;
        }
        st.total += items.len() as u64;
        match st.window.back_mut() {
            Some((s, n)) if *s == second => *n += items.len() as u64,
            _ => st.window.push_back((second, items.len() as u64)),
        }
        let horizon = second.saturating_sub(self.config.window_size);
        while st.window.front().is_some_and(|(s, _)| *s < horizon) {
            st.window.pop_front();
        }
        let current = st.window.back().map(|w| w.1).unwrap_or(0) as f64;
        if current > st.peak_rate {
            st.peak_rate = current;
        }
    }

    /// The metrics in the original's shape plus latency percentiles and the
    /// per-source and per-type counts.
    pub fn snapshot(&self) -> Value {
        let st = self.state.lock();
        let elapsed = self.started.elapsed();
        let in_window: u64 = st.window.iter().map(|w| w.1).sum();
        let span = elapsed
            .min(Duration::from_secs(self.config.window_size.max(1)))
            .as_secs_f64()
            .max(1e-3);
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
            "events_per_second": in_window as f64 / span,
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
                timestamp: Utc::now() - chrono::Duration::milliseconds(5),
                data: None,
                data_error: None,
                correlation_id: None,
                priority: 3,
                meta: Arc::new(Mutex::new(meta)),
            }),
            attempt: 0,
            origin: None,
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
}
