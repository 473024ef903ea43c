//! The live stream's hub: published events numbered in publish order, kept in a
//! bounded ring for resuming clients, fanned out to each client's bounded buffer,
//! and a bounded delivery history per event still in the ring.
//!
//! It costs one relaxed atomic load per publish while no client is connected
//! (and [`LINGER`] has passed since the last one left): [`Tap::is_active`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::rules::Rule;
use crate::topic::Pattern;

/// How long the tap keeps numbering events after the last client left, so that a
/// client that reconnects (a page reload, a dropped connection) resumes without a gap.
pub const LINGER: Duration = Duration::from_secs(60);

/// Deliveries kept per event (retries beyond it are counted, not kept).
const HISTORY_PER_EVENT: usize = 32;

/// One event of the stream.
pub struct StreamItem {
    /// Its sequence number (1, 2, ... in publish order).
    pub seq: u64,
    /// The event id.
    pub id: Arc<str>,
    /// The topic.
    pub topic: Arc<str>,
    /// The event document (`Event.to_dict()` plus `"seq"`).
    pub value: Value,
    /// `value` as JSON text.
    pub text: String,
}

/// One finished delivery attempt of an event.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub consumer: Arc<str>,
    pub attempt: u32,
    /// "success", "filtered", "failure", "rejected", "cancelled".
    pub outcome: &'static str,
    pub error: Option<String>,
    pub queue_ms: f64,
    pub handler_ms: f64,
    /// Unix time, ms.
    pub at_ms: i64,
}

/// What a client receives: a topic pattern, patterns to exclude, a content rule.
#[derive(Default)]
pub struct Filter {
    pub pattern: Option<Pattern>,
    pub exclude: Vec<Pattern>,
    pub rule: Option<Rule>,
}

impl Filter {
    /// Builds a filter from the query parameters `pattern`, `exclude` (each may
    /// be repeated or comma-separated) and `rule` (JSON), or says what is wrong.
    pub fn parse(
        pattern: Option<&str>,
        exclude: &[&str],
        rule: Option<&str>,
    ) -> Result<Filter, String> {
        let pattern = match pattern.map(str::trim).filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => Some(Pattern::parse(p).map_err(|e| format!("invalid pattern {p:?}: {e}"))?),
        };
        let mut ex = Vec::new();
        for p in exclude
            .iter()
            .flat_map(|e| e.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            ex.push(Pattern::parse(p).map_err(|e| format!("invalid exclude pattern {p:?}: {e}"))?);
        }
        let rule = match rule.map(str::trim).filter(|r| !r.is_empty()) {
            None => None,
            Some(r) => {
                let v: Value =
                    serde_json::from_str(r).map_err(|e| format!("invalid rule: not JSON ({e})"))?;
                Some(Rule::compile(&v).map_err(|e| format!("invalid rule: {e}"))?)
            }
        };
        Ok(Filter {
            pattern,
            exclude: ex,
            rule,
        })
    }

    /// Whether the client receives `item`.
    pub fn admits(&self, item: &StreamItem) -> bool {
        self.pattern.as_ref().is_none_or(|p| p.matches(&item.topic))
            && !self.exclude.iter().any(|p| p.matches(&item.topic))
            && self.rule.as_ref().is_none_or(|r| r.matches(&item.value))
    }
}

/// Why a client's stream ended (set when the tap drops it).
pub type DropReason = Arc<Mutex<Option<String>>>;

struct Client {
    id: u64,
    filter: Arc<Filter>,
    tx: mpsc::Sender<Arc<StreamItem>>,
    reason: DropReason,
}

struct Inner {
    next_seq: u64,
    ring: VecDeque<Arc<StreamItem>>,
    history: HashMap<Arc<str>, Vec<DeliveryRecord>>,
    clients: Vec<Client>,
    next_client: u64,
    /// When the last client left.
    idle_since: Option<Instant>,
}

/// The stream hub (see the module doc).
pub struct Tap {
    active: AtomicBool,
    inner: Mutex<Inner>,
    ring_capacity: usize,
    client_buffer: usize,
}

/// A connected client: its backlog (events after the seq it resumed from) and
/// its live receiver. Dropping it disconnects the client.
pub struct Subscription {
    /// Events already in the ring after the requested seq, in order.
    pub backlog: Vec<Arc<StreamItem>>,
    /// Set if the requested seq is older than the ring: `(first missing, last missing)`.
    pub gap: Option<(u64, u64)>,
    /// Live events.
    pub rx: mpsc::Receiver<Arc<StreamItem>>,
    /// Why the tap dropped the client, once it did.
    pub reason: DropReason,
    id: u64,
    tap: Arc<Tap>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.tap.remove(self.id);
    }
}

impl Tap {
    /// A tap keeping the last `ring_capacity` events, with `client_buffer` events
    /// of buffer per client.
    pub fn new(ring_capacity: usize, client_buffer: usize) -> Arc<Tap> {
        Arc::new(Tap {
            active: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                next_seq: 1,
                ring: VecDeque::new(),
                history: HashMap::new(),
                clients: Vec::new(),
                next_client: 0,
                idle_since: None,
            }),
            ring_capacity: ring_capacity.max(1),
            client_buffer: client_buffer.max(1),
        })
    }

    /// Whether publishers should hand events to [`Tap::publish`] (a client is
    /// connected, or left less than [`LINGER`] ago).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Numbers an event, keeps it, and hands it to every client whose filter admits
    /// it. A client whose buffer is full is dropped with a reason; the publisher
    /// never waits.
    pub fn publish(&self, id: Arc<str>, topic: Arc<str>, mut value: Value) {
        let mut g = self.inner.lock();
        if g.clients.is_empty() && g.idle_since.is_some_and(|t| t.elapsed() >= LINGER) {
            self.active.store(false, Relaxed);
            return;
        }
        let seq = g.next_seq;
        g.next_seq += 1;
        if let Value::Object(m) = &mut value {
            m.insert("seq".into(), json!(seq));
        }
        let text = value.to_string();
        let item = Arc::new(StreamItem {
            seq,
            id: id.clone(),
            topic,
            value,
            text,
        });
        if g.ring.len() >= self.ring_capacity {
            if let Some(old) = g.ring.pop_front() {
                if !g.ring.iter().any(|i| i.id == old.id) {
                    g.history.remove(&old.id);
                }
            }
        }
        g.ring.push_back(item.clone());
        g.history.entry(id).or_default();
        let buffer = self.client_buffer;
        g.clients.retain(|c| {
            if !c.filter.admits(&item) {
                return true;
            }
            match c.tx.try_send(item.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    *c.reason.lock() = Some(format!(
                        "client too slow: {buffer} events waiting in its buffer; resume with after={}",
                        item.seq - 1 - buffer as u64
                    ));
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if g.clients.is_empty() && g.idle_since.is_none() {
            g.idle_since = Some(Instant::now());
        }
    }

    /// Connects a client that has seen everything up to `after` (`None`: only
    /// events from now on).
    pub fn subscribe(self: &Arc<Self>, filter: Filter, after: Option<u64>) -> Subscription {
        let (tx, rx) = mpsc::channel(self.client_buffer);
        let reason: DropReason = Arc::new(Mutex::new(None));
        let mut g = self.inner.lock();
        let mut backlog = Vec::new();
        let mut gap = None;
        if let Some(after) = after {
            let oldest = g.ring.front().map(|i| i.seq).unwrap_or(g.next_seq);
            if after + 1 < oldest {
                gap = Some((after + 1, oldest - 1));
            }
            backlog = g
                .ring
                .iter()
                .filter(|i| i.seq > after && filter.admits(i))
                .cloned()
                .collect();
        }
        let id = g.next_client;
        g.next_client += 1;
        g.clients.push(Client {
            id,
            filter: Arc::new(filter),
            tx,
            reason: reason.clone(),
        });
        g.idle_since = None;
        self.active.store(true, Relaxed);
        Subscription {
            backlog,
            gap,
            rx,
            reason,
            id,
            tap: self.clone(),
        }
    }

    fn remove(&self, id: u64) {
        let mut g = self.inner.lock();
        g.clients.retain(|c| c.id != id);
        if g.clients.is_empty() {
            g.idle_since = Some(Instant::now());
        }
    }

    /// Ends every client's stream with `reason` (they may resume with their last seq).
    pub fn drop_clients(&self, reason: &str) -> usize {
        let mut g = self.inner.lock();
        let n = g.clients.len();
        for c in g.clients.drain(..) {
            *c.reason.lock() = Some(reason.to_owned());
        }
        g.idle_since = Some(Instant::now());
        n
    }

    /// How many clients are connected.
    pub fn clients(&self) -> usize {
        self.inner.lock().clients.len()
    }

    /// The last sequence number given (0 before the first event).
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().next_seq - 1
    }

    /// Adds a delivery to the history of event `id`, if the event is still kept.
    pub fn record_delivery(&self, id: &str, record: DeliveryRecord) {
        let mut g = self.inner.lock();
        if let Some(h) = g.history.get_mut(id) {
            if h.len() < HISTORY_PER_EVENT {
                h.push(record);
            }
        }
    }

    /// The event `id` (the latest with that id still kept) and its delivery history.
    pub fn event(&self, id: &str) -> Option<Value> {
        let g = self.inner.lock();
        let item = g.ring.iter().rev().find(|i| &*i.id == id)?;
        let deliveries: Vec<Value> = g
            .history
            .get(id)
            .map(|h| {
                h.iter()
                    .map(|r| {
                        json!({
                            "consumer": &*r.consumer,
                            "attempt": r.attempt,
                            "outcome": r.outcome,
                            "error": r.error,
                            "queue_ms": r.queue_ms,
                            "handler_ms": r.handler_ms,
                            "at_ms": r.at_ms,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(json!({
            "id": &*item.id,
            "seq": item.seq,
            "topic": &*item.topic,
            "event": item.value,
            "deliveries": deliveries,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(tap: &Tap, n: u32, topic: &str) {
        tap.publish(
            format!("id{n}").into(),
            topic.into(),
            json!({"id": format!("id{n}"), "topic": topic, "data": {"n": n}}),
        );
    }

    #[test]
    fn resume_has_no_gap_and_no_duplicate() {
        let tap = Tap::new(100, 100);
        let sub = tap.subscribe(Filter::default(), None);
        for n in 0..10 {
            ev(&tap, n, "a.b");
        }
        drop(sub);
        for n in 10..15 {
            ev(&tap, n, "a.b");
        }
        let sub = tap.subscribe(Filter::default(), Some(7));
        let seqs: Vec<u64> = sub.backlog.iter().map(|i| i.seq).collect();
        assert_eq!(seqs, (8..=15).collect::<Vec<_>>());
        assert!(sub.gap.is_none());
    }

    #[test]
    fn filter_and_slow_client_drop() {
        let tap = Tap::new(100, 2);
        let f = Filter::parse(Some("hook.**"), &["hook.x"], None).unwrap();
        let mut sub = tap.subscribe(f, None);
        ev(&tap, 0, "other");
        ev(&tap, 1, "hook.x");
        ev(&tap, 2, "hook.y");
        assert_eq!(sub.rx.try_recv().unwrap().seq, 3);
        ev(&tap, 3, "hook.y");
        ev(&tap, 4, "hook.y");
        ev(&tap, 5, "hook.y");
        assert!(sub.reason.lock().as_ref().unwrap().contains("too slow"));
        assert_eq!(tap.clients(), 0);
    }

    #[test]
    fn bad_rule_is_refused_with_the_reason() {
        let e = Filter::parse(None, &[], Some(r#"{"data": 5}"#))
            .err()
            .unwrap();
        assert!(e.starts_with("invalid rule"), "{e}");
        assert!(Filter::parse(None, &[], Some("{")).is_err());
    }

    #[test]
    fn an_old_seq_reports_the_gap() {
        let tap = Tap::new(3, 10);
        let _s = tap.subscribe(Filter::default(), None);
        for n in 0..6 {
            ev(&tap, n, "t");
        }
        let sub = tap.subscribe(Filter::default(), Some(1));
        assert_eq!(sub.gap, Some((2, 3)));
        assert_eq!(sub.backlog.len(), 3);
    }
}
