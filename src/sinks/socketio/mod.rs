//! Socket.IO emitter for the built-in `SocketIOConsumer`.
//!
//! A minimal Socket.IO v5 (Engine.IO v4) client over a plain WebSocket
//! (`tokio-tungstenite`), plus a connection manager that never loses an item it
//! accepted: items wait in a bounded buffer while the server is away, are
//! emitted in order once connected, and stay owned by the sink until the server
//! acknowledges them. The first connect is retried like any reconnect, with
//! exponential backoff.
//!
//! NOTE: we do not use `rust_socketio` 0.6: its `rust_engineio` dependency
//! unconditionally enables `native-tls` (reqwest and tokio-tungstenite), which
//! links the system OpenSSL into the wheel; the crate has no rustls or no-TLS
//! option. The part of the protocol we need (WebSocket transport, connect with
//! auth, ping/pong, events with acks) is small, and owning it lets us detect a
//! lost connection reliably and keep un-acknowledged items for re-sending.
//! `https://`/`wss://` URLs go through rustls ([`crate::sinks::tls`]), never OpenSSL.
//!
//! What is sent is chosen by [`Protocol`]: by default the Claude MPM dashboard's
//! inbound protocol (`claude_event` with the normalized payload of
//! [`dashboard::payload`]), or the original consumer's names by topic prefix and
//! its payload ([`Protocol::Legacy`]).
//!
//! Delivery semantics (one send is one delivery attempt, at least once):
//! - every emit requests a Socket.IO ack; only the ack resolves the item as
//!   delivered (`Ok`);
//! - an item not acknowledged within `ack_timeout` of its `send` resolves
//!   `Err` (a server that has no handler for an event sends no ack:
//!   python-socketio only acks handled events); it leaves the buffer, so a
//!   late ack is ignored and nothing is sent twice by the sink itself;
//! - a connection attempt that fails resolves every item waiting for it `Err`
//!   with the reason at once, so the caller's retry policy, not this buffer,
//!   decides how long to keep trying; items sent while disconnected start a
//!   new attempt (at most one per `reconnect_initial`);
//! - if the connection drops before the ack, the item goes back to the front of
//!   the buffer and is sent again after reconnecting (a duplicate is possible
//!   when the server handled it but the ack was lost; counted in `resent`);
//! - with `require_ack: false` an item counts delivered once written to the
//!   socket (`unacked`), for servers that never ack.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod dashboard;

/// Configuration of a [`SocketIoSink`].
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// Server URL, `http://host:port` (or `ws://`). A path other than `/`
    /// replaces the default Socket.IO path `/socket.io/`.
    pub url: String,
    /// Socket.IO namespace, `/` by default.
    pub namespace: String,
    /// Auth payload sent with the namespace connect packet.
    pub auth: Option<Value>,
    /// Extra HTTP headers for the WebSocket handshake.
    pub headers: Vec<(String, String)>,
    /// First reconnect delay; doubles after each failed attempt.
    pub reconnect_initial: Duration,
    /// Upper bound of the reconnect delay.
    pub reconnect_max: Duration,
    /// Maximum number of accepted, not yet delivered items (buffered + in flight).
    pub buffer_limit: usize,
    /// If `Some(name)`, each `send` call becomes one emit `name` carrying a JSON
    /// array of the payloads (the items' own event names are ignored).
    pub emit_per_batch: Option<String>,
    /// Timeout of one connection attempt (TCP + WebSocket + namespace connect).
    pub connect_timeout: Duration,
    /// How long after its `send` an item may wait for its ack; then it resolves
    /// `Err` (a failed attempt).
    pub ack_timeout: Duration,
    /// `false`: an item counts delivered once written (no ack requested).
    pub require_ack: bool,
    /// TLS for `https://`/`wss://` URLs; None: [`crate::sinks::tls::default_client_config`].
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8765".into(),
            namespace: "/".into(),
            auth: None,
            headers: Vec::new(),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            buffer_limit: 10_000,
            emit_per_batch: None,
            connect_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            require_ack: true,
            tls: None,
        }
    }
}

/// Which protocol the consumer speaks: the names its events get when no
/// [`EventNaming`] override applies, and the shape of their payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// The Claude MPM dashboard's inbound protocol: every event is emitted as
    /// `claude_event` (the name its server handles) with the normalized payload
    /// of [`dashboard::payload`].
    #[default]
    Dashboard,
    /// What the original consumer sent: names by topic prefix
    /// ([`legacy_event_name`]) and the payload of [`payload`].
    Legacy,
}

/// How topics map to Socket.IO event names.
#[derive(Debug, Clone, Default)]
pub enum EventNaming {
    /// The protocol's names (see [`Protocol`]).
    #[default]
    Default,
    /// Every event gets this name (the Claude MPM dashboard accepts `claude_event`).
    Fixed(String),
    /// `(topic prefix, event name)` pairs, longest matching prefix wins; topics
    /// that match none fall back to the protocol's names.
    Prefixes(Vec<(String, String)>),
}

const DEFAULT_NAMES: [(&str, &str); 5] = [
    ("hook.", "hook_event"),
    ("cli.", "cli_event"),
    ("system.", "system_event"),
    ("agent.", "agent_event"),
    ("build.", "build_event"),
];

/// The event name the dashboard's server handles from clients.
pub const DASHBOARD_EVENT: &str = "claude_event";

/// The original's name for `topic`: by prefix `hook.` -> `hook_event`,
/// `cli.` -> `cli_event`, `system.` -> `system_event`, `agent.` -> `agent_event`,
/// `build.` -> `build_event`, anything else -> `claude_event`. (The dashboard's
/// server sends the first five to browsers and handles none of them.)
pub fn legacy_event_name(topic: &str) -> &'static str {
    DEFAULT_NAMES
        .iter()
        .find(|(prefix, _)| topic.starts_with(prefix))
        .map(|(_, name)| *name)
        .unwrap_or(DASHBOARD_EVENT)
}

/// Socket.IO event name for `topic`: `naming`'s override if one applies, else
/// the protocol's name (`claude_event` for [`Protocol::Dashboard`],
/// [`legacy_event_name`] for [`Protocol::Legacy`]).
pub fn event_name_for<'a>(topic: &str, naming: &'a EventNaming, protocol: Protocol) -> &'a str {
    match naming {
        EventNaming::Fixed(name) => return name,
        EventNaming::Prefixes(map) => {
            if let Some((_, name)) = map
                .iter()
                .filter(|(prefix, _)| topic.starts_with(prefix.as_str()))
                .max_by_key(|(prefix, _)| prefix.len())
            {
                return name;
            }
        }
        EventNaming::Default => {}
    }
    match protocol {
        Protocol::Dashboard => DASHBOARD_EVENT,
        Protocol::Legacy => legacy_event_name(topic),
    }
}

/// The original's payload ([`Protocol::Legacy`]): exactly
/// `{id, type, topic, timestamp, source, data, correlation_id}`.
pub fn payload(
    id: &str,
    event_type: &str,
    topic: &str,
    timestamp_iso: &str,
    source: &str,
    data: Value,
    correlation_id: Option<&str>,
) -> Value {
    json!({
        "id": id,
        "type": event_type,
        "topic": topic,
        "timestamp": timestamp_iso,
        "source": source,
        "data": data,
        "correlation_id": correlation_id,
    })
}

/// One item to emit; `token` is the caller's handle, echoed in [`Delivery`].
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Socket.IO event name.
    pub event: String,
    /// Event payload (see [`payload`]).
    pub payload: Value,
    /// Caller-chosen identifier, returned in the delivery report.
    pub token: u64,
}

/// Final outcome of one accepted item.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The item's [`Outgoing::token`].
    pub token: u64,
    /// `Ok` once acknowledged by the server (or written, without
    /// `require_ack`); `Err` with the reason otherwise: no ack within
    /// `ack_timeout`, the server could not be reached, shutdown, sink dropped.
    pub result: Result<(), String>,
}

/// What [`SocketIoSink::send`] returns.
#[derive(Debug)]
pub struct SendReceipt {
    /// Items not accepted (buffer full or sink shut down): undeliverable, for
    /// the dead-letter path. They get no [`Delivery`].
    pub rejected: Vec<Outgoing>,
    /// Resolves when every accepted item is delivered or given up.
    pub completion: Completion,
}

/// Future-like handle on the outcome of the accepted items of one `send`.
#[derive(Debug)]
pub struct Completion {
    rx: oneshot::Receiver<Vec<Delivery>>,
    tokens: Vec<u64>,
}

impl Completion {
    /// Tokens of the accepted items.
    pub fn tokens(&self) -> &[u64] {
        &self.tokens
    }

    /// Waits until every accepted item of the batch was emitted or given up;
    /// one [`Delivery`] per item, in resolution order.
    pub async fn wait(self) -> Vec<Delivery> {
        match self.rx.await {
            Ok(deliveries) => deliveries,
            Err(_) => self
                .tokens
                .into_iter()
                .map(|token| Delivery {
                    token,
                    result: Err("socket.io sink dropped before delivery".into()),
                })
                .collect(),
        }
    }
}

/// Snapshot of the sink's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SocketIoMetrics {
    /// Currently connected to the namespace.
    pub connected: bool,
    /// Items delivered (acknowledged, or written without `require_ack`).
    pub emitted: u64,
    /// Failed attempts: items resolved `Err` (no ack in time, server
    /// unreachable, rejected on overflow, undelivered at shutdown).
    pub failed: u64,
    /// Of `failed`, those sent but not acknowledged within `ack_timeout`.
    pub ack_timeouts: u64,
    /// Of `failed`, those that waited for a connection attempt that failed.
    pub unreachable: u64,
    /// Of `failed`, those rejected because the buffer was full.
    pub rejected: u64,
    /// Accepted items not yet resolved (waiting or in flight).
    pub buffered: usize,
    /// Of `buffered`, emitted and awaiting an ack.
    pub in_flight: usize,
    /// Successful connects after the first one.
    pub reconnections: u64,
    /// Connection attempts, successful or not.
    pub connect_attempts: u64,
    /// Items sent again after a connection was lost before their ack.
    pub resent: u64,
    /// Items that may reach the server twice: written without their ack
    /// arriving, then written again (`resent`) or failed (the caller may retry
    /// an item the server did handle). Duplicates are bounded by this.
    pub maybe_duplicated: u64,
    /// Items counted delivered when written, without an ack (`require_ack: false`).
    pub unacked: u64,
    /// Emit-to-ack latency percentiles and mean, milliseconds (0 if none yet).
    pub emit_latency_p50_ms: f64,
    /// 99th percentile of the emit-to-ack latency, milliseconds.
    pub emit_latency_p99_ms: f64,
    /// Mean emit-to-ack latency, milliseconds.
    pub emit_latency_mean_ms: f64,
    /// Last connection error (refused auth, connection refused, ...), if any
    /// since the last successful connect.
    pub last_error: Option<String>,
}

// ---------------------------------------------------------------------------
// Internal state

struct BatchState {
    remaining: AtomicUsize,
    results: Mutex<Vec<Delivery>>,
    tx: Mutex<Option<oneshot::Sender<Vec<Delivery>>>>,
}

impl BatchState {
    fn resolve(&self, token: u64, result: Result<(), String>) {
        self.results.lock().push(Delivery { token, result });
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let results = std::mem::take(&mut *self.results.lock());
            if let Some(tx) = self.tx.lock().take() {
                let _ = tx.send(results);
            }
        }
    }
}

struct Item {
    out: Outgoing,
    batch: Arc<BatchState>,
}

/// The unit of one emit: one item, or a whole batch with `emit_per_batch`.
struct Frame {
    items: Vec<Item>,
    batch_event: Option<String>,
    sent_before: bool,
    /// `send` time + `ack_timeout`: unresolved by then, the frame fails.
    deadline: Instant,
}

impl Frame {
    /// `42[ns,][ack id][name, payload]`; no ack id with `ack_id == None`.
    fn encode(&self, ns_prefix: &str, ack_id: Option<u64>) -> String {
        let body = match &self.batch_event {
            Some(name) => {
                let arr: Vec<&Value> = self.items.iter().map(|i| &i.out.payload).collect();
                json!([name, arr])
            }
            None => json!([self.items[0].out.event, self.items[0].out.payload]),
        };
        match ack_id {
            Some(id) => format!("42{ns_prefix}{id}{body}"),
            None => format!("42{ns_prefix}{body}"),
        }
    }

    fn resolve(self, result: Result<(), String>) {
        for item in self.items {
            item.batch.resolve(item.out.token, result.clone());
        }
    }
}

struct InFlight {
    frame: Frame,
    sent_at: Instant,
}

#[derive(Default)]
struct Buf {
    pending: VecDeque<Frame>,
    in_flight: BTreeMap<u64, InFlight>,
    /// Accepted, unresolved items (pending + in flight).
    items: usize,
    in_flight_items: usize,
    /// Set by `shutdown`: new sends are rejected, the manager flushes until then.
    closing: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    emitted: AtomicU64,
    failed: AtomicU64,
    ack_timeouts: AtomicU64,
    unreachable: AtomicU64,
    rejected: AtomicU64,
    reconnections: AtomicU64,
    connect_attempts: AtomicU64,
    resent: AtomicU64,
    maybe_duplicated: AtomicU64,
    unacked: AtomicU64,
}

struct Inner {
    cfg: SocketIoConfig,
    ns_prefix: String,
    buf: Mutex<Buf>,
    notify: Notify,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    /// When the last connection attempt failed (None once connected).
    failed_at: Mutex<Option<Instant>>,
    latency_us: Mutex<Histogram<u64>>,
}

impl Inner {
    fn set_error(&self, e: String) {
        *self.last_error.lock() = Some(e);
    }

    /// Moves every in-flight frame back to the front of `pending`, in send order.
    fn requeue_in_flight(&self) {
        let mut buf = self.buf.lock();
        let in_flight = std::mem::take(&mut buf.in_flight);
        buf.in_flight_items = 0;
        // NOTE: ack ids grow monotonically, so reverse id order + push_front
        // restores the original order ahead of anything not yet sent.
        for (_, mut f) in in_flight.into_iter().rev() {
            f.frame.sent_before = true;
            buf.pending.push_front(f.frame);
        }
    }

    /// Resolves the in-flight frame `id` as acknowledged.
    fn ack(&self, id: u64, at: Instant) {
        let acked = {
            let mut buf = self.buf.lock();
            let f = buf.in_flight.remove(&id);
            if let Some(f) = &f {
                buf.in_flight_items -= f.frame.items.len();
                buf.items -= f.frame.items.len();
            }
            f
        };
        if let Some(f) = acked {
            self.deliver(f.frame, Some(at.duration_since(f.sent_at)));
        }
    }

    fn deliver(&self, frame: Frame, acked_after: Option<Duration>) {
        let n = frame.items.len() as u64;
        self.counters.emitted.fetch_add(n, Ordering::Relaxed);
        match acked_after {
            Some(lat) => {
                let us = (lat.as_micros() as u64).max(1);
                let _ = self.latency_us.lock().record(us);
            }
            None => {
                self.counters.unacked.fetch_add(n, Ordering::Relaxed);
            }
        }
        frame.resolve(Ok(()));
    }

    /// Resolves `frames` (already removed from the buffer) as failed attempts;
    /// `written`: they are in flight (the server may have them).
    fn fail(&self, frames: Vec<Frame>, why: &str, kind: Option<&AtomicU64>, written: bool) {
        for frame in frames {
            let n = frame.items.len() as u64;
            self.counters.failed.fetch_add(n, Ordering::Relaxed);
            if written || frame.sent_before {
                self.counters
                    .maybe_duplicated
                    .fetch_add(n, Ordering::Relaxed);
            }
            if let Some(kind) = kind {
                kind.fetch_add(n, Ordering::Relaxed);
            }
            frame.resolve(Err(why.to_string()));
        }
    }

    /// Fails every frame, waiting or in flight, whose deadline has passed; returns
    /// the earliest deadline still ahead.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let (sent, waiting, next) = {
            let mut buf = self.buf.lock();
            let buf = &mut *buf;
            // NOTE: deadlines follow the order of `send`, which is the order of
            // both queues (in-flight ack ids grow, requeued frames go back to
            // the front), so only their fronts can be due.
            let mut sent = Vec::new();
            while let Some(entry) = buf.in_flight.first_entry() {
                if entry.get().frame.deadline > now {
                    break;
                }
                let f = entry.remove();
                buf.in_flight_items -= f.frame.items.len();
                buf.items -= f.frame.items.len();
                sent.push(f.frame);
            }
            let mut waiting = Vec::new();
            while buf.pending.front().is_some_and(|f| f.deadline <= now) {
                let f = buf.pending.pop_front().expect("front checked");
                buf.items -= f.items.len();
                waiting.push(f);
            }
            let next = [
                buf.in_flight.values().next().map(|f| f.frame.deadline),
                buf.pending.front().map(|f| f.deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            (sent, waiting, next)
        };
        let secs = self.cfg.ack_timeout.as_secs_f64();
        if !sent.is_empty() {
            let why = format!("no ack from the Socket.IO server within {secs:.3}s");
            self.fail(sent, &why, Some(&self.counters.ack_timeouts), true);
        }
        if !waiting.is_empty() {
            let why = match self.last_error.lock().clone() {
                Some(e) => format!("not sent to the Socket.IO server within {secs:.3}s ({e})"),
                None => format!("not sent to the Socket.IO server within {secs:.3}s"),
            };
            self.fail(waiting, &why, Some(&self.counters.unreachable), false);
        }
        next
    }

    /// Fails every waiting frame (a connection attempt failed): each was one
    /// delivery attempt, and the caller decides whether to try again.
    fn fail_pending(&self, why: &str) {
        let frames: Vec<Frame> = {
            let mut buf = self.buf.lock();
            let frames: Vec<Frame> = buf.pending.drain(..).collect();
            buf.items -= frames.iter().map(|f| f.items.len()).sum::<usize>();
            frames
        };
        self.fail(frames, why, Some(&self.counters.unreachable), false);
    }

    /// Takes the waiting frames holding any of `tokens` out of the buffer
    /// (their caller gave up on them); frames in flight stay until their ack.
    fn withdraw(&self, tokens: &[u64]) {
        let frames: Vec<Frame> = {
            let mut buf = self.buf.lock();
            let mut kept = VecDeque::with_capacity(buf.pending.len());
            let mut gone = Vec::new();
            for f in buf.pending.drain(..) {
                if f.items.iter().any(|i| tokens.contains(&i.out.token)) {
                    gone.push(f);
                } else {
                    kept.push_back(f);
                }
            }
            buf.pending = kept;
            buf.items -= gone.iter().map(|f| f.items.len()).sum::<usize>();
            gone
        };
        self.fail(frames, "withdrawn by the caller", None, false);
    }
}

/// Engine-side Socket.IO emitter with a background connection manager.
///
/// Dropping it without [`SocketIoSink::shutdown`] stops the manager; items
/// still buffered are then reported as failed to their [`Completion`].
pub struct SocketIoSink {
    inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl SocketIoSink {
    /// Starts the sink on the current tokio runtime (panics outside one) and
    /// begins connecting at once; failures are retried with backoff.
    pub fn start(config: SocketIoConfig) -> SocketIoSink {
        Self::start_on(config, &tokio::runtime::Handle::current())
    }

    /// Like [`SocketIoSink::start`], spawning the manager on `handle`.
    pub fn start_on(config: SocketIoConfig, handle: &tokio::runtime::Handle) -> SocketIoSink {
        let ns_prefix = if config.namespace.is_empty() || config.namespace == "/" {
            String::new()
        } else {
            format!("{},", config.namespace)
        };
        let inner = Arc::new(Inner {
            cfg: config,
            ns_prefix,
            buf: Mutex::new(Buf::default()),
            notify: Notify::new(),
            counters: Counters::default(),
            last_error: Mutex::new(None),
            failed_at: Mutex::new(None),
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds"),
            ),
        });
        let task = handle.spawn(manager(inner.clone()));
        SocketIoSink {
            inner,
            task: Mutex::new(Some(task)),
        }
    }

    /// Appends `items` to the buffer (never blocks). Items beyond
    /// `buffer_limit` (or all, after shutdown began) come back in
    /// [`SendReceipt::rejected`]; the accepted ones resolve via
    /// [`SendReceipt::completion`].
    pub fn send(&self, items: Vec<Outgoing>) -> SendReceipt {
        let (tx, rx) = oneshot::channel();
        let mut buf = self.inner.buf.lock();
        let room = if buf.closing.is_some() {
            0
        } else {
            self.inner.cfg.buffer_limit.saturating_sub(buf.items)
        };
        let mut items = items;
        let rejected = if items.len() > room {
            items.split_off(room)
        } else {
            Vec::new()
        };
        if !rejected.is_empty() {
            let n = rejected.len() as u64;
            self.inner.counters.rejected.fetch_add(n, Ordering::Relaxed);
            self.inner.counters.failed.fetch_add(n, Ordering::Relaxed);
        }
        let tokens: Vec<u64> = items.iter().map(|i| i.token).collect();
        // NOTE: a connection attempt failed less than `reconnect_initial` ago: the
        // server is unreachable, and the next attempt is not due yet. This
        // attempt fails now instead of waiting for that one (a draining bus fires
        // its retries at once; they must not each wait a reconnect delay).
        let unreachable = (!self.inner.counters.connected.load(Ordering::Relaxed))
            .then(|| *self.inner.failed_at.lock())
            .flatten()
            .filter(|at| at.elapsed() < self.inner.cfg.reconnect_initial);
        if let (Some(at), false) = (unreachable, items.is_empty()) {
            drop(buf);
            let why = match self.inner.last_error.lock().clone() {
                Some(e) => format!(
                    "cannot reach the Socket.IO server: {e} (attempt {} ms ago)",
                    at.elapsed().as_millis()
                ),
                None => "cannot reach the Socket.IO server".to_string(),
            };
            let n = items.len() as u64;
            self.inner.counters.failed.fetch_add(n, Ordering::Relaxed);
            self.inner
                .counters
                .unreachable
                .fetch_add(n, Ordering::Relaxed);
            let deliveries = items
                .iter()
                .map(|o| Delivery {
                    token: o.token,
                    result: Err(why.clone()),
                })
                .collect();
            let _ = tx.send(deliveries);
            return SendReceipt {
                rejected,
                completion: Completion { rx, tokens },
            };
        }
        if items.is_empty() {
            let _ = tx.send(Vec::new());
            return SendReceipt {
                rejected,
                completion: Completion { rx, tokens },
            };
        }
        let batch = Arc::new(BatchState {
            remaining: AtomicUsize::new(items.len()),
            results: Mutex::new(Vec::with_capacity(items.len())),
            tx: Mutex::new(Some(tx)),
        });
        buf.items += items.len();
        let deadline = Instant::now() + self.inner.cfg.ack_timeout;
        let wrap = |out| Item {
            out,
            batch: batch.clone(),
        };
        match &self.inner.cfg.emit_per_batch {
            Some(name) => buf.pending.push_back(Frame {
                items: items.into_iter().map(wrap).collect(),
                batch_event: Some(name.clone()),
                sent_before: false,
                deadline,
            }),
            None => {
                for out in items {
                    buf.pending.push_back(Frame {
                        items: vec![wrap(out)],
                        batch_event: None,
                        sent_before: false,
                        deadline,
                    });
                }
            }
        }
        drop(buf);
        self.inner.notify.notify_one();
        SendReceipt {
            rejected,
            completion: Completion { rx, tokens },
        }
    }

    /// Gives up on the items with these tokens that were not written yet (their
    /// caller stopped waiting): they resolve `Err` and are never sent. Items
    /// already in flight still resolve by their ack or deadline.
    pub fn withdraw(&self, tokens: &[u64]) {
        self.inner.withdraw(tokens);
    }

    /// Flushes the buffer (waiting up to `timeout` for a connection and acks),
    /// disconnects, and returns the items that could not be delivered; their
    /// [`Completion`]s resolve with `Err`. Later `send`s are rejected.
    pub async fn shutdown(&self, timeout: Duration) -> Vec<Outgoing> {
        let deadline = Instant::now() + timeout;
        self.inner.buf.lock().closing = Some(deadline);
        self.inner.notify.notify_one();
        let task = self.task.lock().take();
        if let Some(mut task) = task {
            // NOTE: the manager honours the deadline itself; the extra grace only
            // covers a graceful close in progress. Aborting is safe because all
            // unresolved items live in the shared buffer, not in the task.
            let grace = deadline + Duration::from_secs(2);
            if tokio::time::timeout_at(grace, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
        self.inner
            .counters
            .connected
            .store(false, Ordering::Relaxed);
        self.drain_undelivered("not delivered before shutdown")
    }

    fn drain_undelivered(&self, why: &str) -> Vec<Outgoing> {
        self.inner.requeue_in_flight();
        let frames: Vec<Frame> = {
            let mut buf = self.inner.buf.lock();
            buf.items = 0;
            buf.pending.drain(..).collect()
        };
        let mut out = Vec::new();
        for frame in frames {
            for item in frame.items {
                self.inner.counters.failed.fetch_add(1, Ordering::Relaxed);
                item.batch.resolve(item.out.token, Err(why.to_string()));
                out.push(item.out);
            }
        }
        out
    }

    /// Current counters (cheap: atomics and two short locks).
    pub fn metrics(&self) -> SocketIoMetrics {
        let c = &self.inner.counters;
        let (buffered, in_flight) = {
            let buf = self.inner.buf.lock();
            (buf.items, buf.in_flight_items)
        };
        let (p50, p99, mean) = {
            let h = self.inner.latency_us.lock();
            if h.is_empty() {
                (0.0, 0.0, 0.0)
            } else {
                (
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0,
                    h.mean() / 1000.0,
                )
            }
        };
        SocketIoMetrics {
            connected: c.connected.load(Ordering::Relaxed),
            emitted: c.emitted.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            ack_timeouts: c.ack_timeouts.load(Ordering::Relaxed),
            unreachable: c.unreachable.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            buffered,
            in_flight,
            reconnections: c.reconnections.load(Ordering::Relaxed),
            connect_attempts: c.connect_attempts.load(Ordering::Relaxed),
            resent: c.resent.load(Ordering::Relaxed),
            maybe_duplicated: c.maybe_duplicated.load(Ordering::Relaxed),
            unacked: c.unacked.load(Ordering::Relaxed),
            emit_latency_p50_ms: p50,
            emit_latency_p99_ms: p99,
            emit_latency_mean_ms: mean,
            last_error: self.inner.last_error.lock().clone(),
        }
    }
}

impl Drop for SocketIoSink {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
        self.inner.buf.lock().closing = Some(Instant::now());
        let _ = self.drain_undelivered("socket.io sink dropped");
    }
}

// ---------------------------------------------------------------------------
// Connection manager

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Conn {
    ws: Ws,
    ping_interval: Duration,
    ping_timeout: Duration,
}

async fn manager(inner: Arc<Inner>) {
    let cfg = &inner.cfg;
    let mut backoff = cfg.reconnect_initial;
    let mut ever_connected = false;
    let mut ack_id: u64 = 0;
    loop {
        let closing = inner.buf.lock().closing;
        if let Some(deadline) = closing {
            if inner.buf.lock().items == 0 || Instant::now() >= deadline {
                return;
            }
        }
        inner
            .counters
            .connect_attempts
            .fetch_add(1, Ordering::Relaxed);
        let attempt = tokio::time::timeout(cfg.connect_timeout, connect(cfg));
        tokio::pin!(attempt);
        // NOTE: the items' deadlines keep running while we connect (an
        // unreachable host can take the whole connect timeout).
        let result = loop {
            let now = Instant::now();
            let mut wake = inner.expire(now).unwrap_or(now + IDLE_TICK);
            if let Some(deadline) = closing {
                if now >= deadline {
                    break None;
                }
                wake = wake.min(deadline);
            }
            tokio::select! {
                r = &mut attempt => break Some(r),
                _ = tokio::time::sleep_until(wake) => {}
                _ = inner.notify.notified() => {}
            }
        };
        let Some(result) = result else { return };
        let failure = match result {
            Ok(Ok(conn)) => {
                if ever_connected {
                    inner.counters.reconnections.fetch_add(1, Ordering::Relaxed);
                }
                ever_connected = true;
                *inner.last_error.lock() = None;
                *inner.failed_at.lock() = None;
                inner.counters.connected.store(true, Ordering::Relaxed);
                let connected_at = Instant::now();
                let outcome = run_connection(&inner, conn, &mut ack_id).await;
                inner.counters.connected.store(false, Ordering::Relaxed);
                inner.requeue_in_flight();
                match outcome {
                    Ok(()) => return, // closed on shutdown
                    Err(e) => inner.set_error(format!("connection lost: {e}")),
                }
                // NOTE: a connection that lived a while is retried at once with
                // the backoff reset (what was in flight waits for it); one that
                // dies right after connecting (a server that accepts then drops
                // us) keeps backing off, so we never spin on connect/drop cycles.
                if connected_at.elapsed() >= STABLE_CONNECTION {
                    backoff = cfg.reconnect_initial;
                    continue;
                }
                None
            }
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!(
                "connect timed out after {:.3}s",
                cfg.connect_timeout.as_secs_f64()
            )),
        };
        if let Some(e) = failure {
            // NOTE: the attempt the waiting items depended on failed: each of them
            // was one delivery attempt, failed now with the reason, so the bus's
            // retry policy (not this buffer) decides how long to keep trying.
            inner.set_error(e.clone());
            *inner.failed_at.lock() = Some(Instant::now());
            inner.fail_pending(&format!("cannot reach the Socket.IO server: {e}"));
        }
        // NOTE: shutting down and the server still cannot be reached: the attempt
        // just made was the last one. Waiting out the flush timeout would only
        // delay a short-lived process (a hook) by it.
        if inner.buf.lock().closing.is_some() {
            return;
        }
        // Back off. Items sent meanwhile shorten the wait to `reconnect_initial`
        // (an attempt on demand); a shutdown request ends it at once, for one
        // last connection attempt (bounded by the connect timeout and deadline).
        let attempt_end = Instant::now();
        loop {
            let (closing, demand) = {
                let buf = inner.buf.lock();
                (buf.closing.is_some(), buf.items > 0)
            };
            if closing {
                break;
            }
            let wake = attempt_end
                + if demand {
                    cfg.reconnect_initial
                } else {
                    backoff
                };
            let now = Instant::now();
            if now >= wake {
                break;
            }
            let next = inner.expire(now).map_or(wake, |d| d.min(wake));
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = inner.notify.notified() => {}
            }
        }
        backoff = (backoff * 2).min(cfg.reconnect_max);
    }
}

/// Longest sleep of a wait loop with no deadline ahead (it re-checks then).
const IDLE_TICK: Duration = Duration::from_secs(3600);

/// A connection that lived this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(2);

/// The Engine.IO WebSocket URL for a Socket.IO server URL (`http(s)://`, `ws(s)://`).
pub fn ws_url(url: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("invalid socket.io url {url:?}"))?;
    let ws_scheme = match scheme {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(format!("unsupported url scheme in {url:?}")),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split('?').next().unwrap_or("/");
    let path = if path == "/" || path.is_empty() {
        "/socket.io/".to_string()
    } else if path.ends_with('/') {
        path.to_string()
    } else {
        format!("{path}/")
    };
    Ok(format!(
        "{ws_scheme}://{host}{path}?EIO=4&transport=websocket"
    ))
}

async fn connect(cfg: &SocketIoConfig) -> Result<Conn, String> {
    let url = ws_url(&cfg.url)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad url {url}: {e}"))?;
    for (k, v) in &cfg.headers {
        let name = HeaderName::try_from(k.as_str()).map_err(|e| format!("header {k}: {e}"))?;
        let value = HeaderValue::try_from(v.as_str()).map_err(|e| format!("header {k}: {e}"))?;
        request.headers_mut().append(name, value);
    }
    let connector = url.starts_with("wss://").then(|| {
        tokio_tungstenite::Connector::Rustls(
            cfg.tls
                .clone()
                .unwrap_or_else(crate::sinks::tls::default_client_config),
        )
    });
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector)
            .await
            .map_err(|e| format!("connect {}: {e}", cfg.url))?;

    // Engine.IO open packet: 0{"sid":..,"pingInterval":..,"pingTimeout":..}
    let open = next_text(&mut ws).await?;
    let open: Value = open
        .strip_prefix('0')
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| format!("unexpected engine.io open packet {open:?}"))?;
    let ms =
        |k: &str, d: u64| Duration::from_millis(open.get(k).and_then(Value::as_u64).unwrap_or(d));
    let ping_interval = ms("pingInterval", 25_000);
    let ping_timeout = ms("pingTimeout", 20_000);

    // Socket.IO namespace connect: 40[/ns,][auth]
    let ns_prefix = if cfg.namespace.is_empty() || cfg.namespace == "/" {
        String::new()
    } else {
        format!("{},", cfg.namespace)
    };
    let auth = cfg.auth.as_ref().map(Value::to_string).unwrap_or_default();
    ws.send(Message::text(format!("40{ns_prefix}{auth}")))
        .await
        .map_err(|e| format!("send connect: {e}"))?;
    loop {
        let text = next_text(&mut ws).await?;
        if text == "2" {
            ws.send(Message::text("3"))
                .await
                .map_err(|e| format!("send pong: {e}"))?;
            continue;
        }
        if let Some(rest) = text.strip_prefix("40") {
            if rest.starts_with(ns_prefix.as_str()) {
                return Ok(Conn {
                    ws,
                    ping_interval,
                    ping_timeout,
                });
            }
        }
        if let Some(rest) = text.strip_prefix("44") {
            let rest = rest.strip_prefix(ns_prefix.as_str()).unwrap_or(rest);
            let msg = serde_json::from_str::<Value>(rest)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(String::from))
                .unwrap_or_else(|| rest.to_string());
            let _ = ws.close(None).await;
            return Err(format!("connection refused by server: {msg}"));
        }
        // Anything else before the connect ack is ignored.
    }
}

/// Next Engine.IO text packet; errors on close or stream end.
async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => return Err("closed by server".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// Parses an incoming Socket.IO ack `43[/ns,]<id>[...]` for our namespace.
pub fn parse_ack(sio: &str, ns_prefix: &str) -> Option<u64> {
    let rest = sio.strip_prefix('3')?;
    let rest = if ns_prefix.is_empty() {
        if rest.starts_with('/') {
            return None;
        }
        rest
    } else {
        rest.strip_prefix(ns_prefix)?
    };
    let digits: &str = &rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())];
    digits.parse().ok()
}

/// Shutdown deadline with frames still un-acked: disconnect and read what the
/// server still sends until its reply to our WebSocket close (briefly). The
/// server handles frames in order, so acks in transit arrive before that reply
/// and resolve their items; what is still un-acked after it fails.
async fn close_barrier(inner: &Inner, ws: &mut Ws) {
    let _ = ws
        .send(Message::text(format!("41{}", inner.ns_prefix)))
        .await;
    if ws.close(None).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_BARRIER_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Some(id) = t
                        .as_str()
                        .strip_prefix('4')
                        .and_then(|s| parse_ack(s, &inner.ns_prefix))
                    {
                        inner.ack(id, Instant::now());
                    }
                }
                // NOTE: `None` after our close means the close handshake completed.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
}

/// How long a shutdown waits for the server's close reply.
const CLOSE_BARRIER_TIMEOUT: Duration = Duration::from_secs(1);

/// Most frames written before waiting for acks (flow control).
const MAX_IN_FLIGHT: usize = 1024;

/// Drives one established connection. `Ok(())`: closed cleanly on shutdown;
/// `Err`: the connection was lost (in-flight items are requeued by the caller).
async fn run_connection(inner: &Inner, conn: Conn, ack_id: &mut u64) -> Result<(), String> {
    let Conn {
        mut ws,
        ping_interval,
        ping_timeout,
    } = conn;
    let require_ack = inner.cfg.require_ack;
    let mut last_seen = Instant::now();
    loop {
        // 1. Write what is pending (in order) while the in-flight window allows.
        let mut written: Vec<Frame> = Vec::new();
        let mut wrote = false;
        loop {
            // NOTE: popped and recorded in flight under one lock, *before*
            // writing: an item is always either pending or in flight, so a
            // failed write, an abort or a drop can never lose it. (Without
            // acks a frame is kept in `written` until the flush succeeded.)
            let text = {
                let mut buf = inner.buf.lock();
                if buf.in_flight.len() >= MAX_IN_FLIGHT {
                    break;
                }
                let Some(frame) = buf.pending.pop_front() else {
                    break;
                };
                let n = frame.items.len();
                if frame.sent_before {
                    inner.counters.resent.fetch_add(n as u64, Ordering::Relaxed);
                    inner
                        .counters
                        .maybe_duplicated
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                if require_ack {
                    *ack_id += 1;
                    let id = *ack_id;
                    let text = frame.encode(&inner.ns_prefix, Some(id));
                    buf.in_flight_items += n;
                    buf.in_flight.insert(
                        id,
                        InFlight {
                            frame,
                            sent_at: Instant::now(),
                        },
                    );
                    text
                } else {
                    let text = frame.encode(&inner.ns_prefix, None);
                    written.push(frame);
                    text
                }
            };
            if let Err(e) = ws.feed(Message::text(text)).await {
                requeue_front(inner, written);
                return Err(format!("emit: {e}"));
            }
            wrote = true;
        }
        if wrote {
            if let Err(e) = ws.flush().await {
                requeue_front(inner, written);
                return Err(format!("emit: {e}"));
            }
            if !written.is_empty() {
                let n: usize = written.iter().map(|f| f.items.len()).sum();
                inner.buf.lock().items -= n;
                for frame in written {
                    inner.deliver(frame, None);
                }
            }
        }

        // 2. Fail what is past its deadline; learn the next deadline.
        let now = Instant::now();
        let next_deadline = inner.expire(now);
        let (closing, idle) = {
            let buf = inner.buf.lock();
            (buf.closing, buf.items == 0)
        };

        // 3. Shutdown: everything resolved -> disconnect; deadline -> give up.
        if let Some(deadline) = closing {
            if idle {
                let _ = ws
                    .send(Message::text(format!("41{}", inner.ns_prefix)))
                    .await;
                let _ = ws.close(None).await;
                return Ok(());
            }
            if now >= deadline {
                close_barrier(inner, &mut ws).await;
                return Ok(());
            }
        }

        // 4. Wait for a packet, new work, a deadline or a dead connection.
        let mut wake = last_seen + ping_interval + ping_timeout;
        if let Some(d) = next_deadline {
            wake = wake.min(d);
        }
        if let Some(deadline) = closing {
            wake = wake.min(deadline);
        }
        if now >= last_seen + ping_interval + ping_timeout {
            return Err("ping timeout".into());
        }
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = inner.notify.notified() => continue,
            _ = tokio::time::sleep_until(wake) => continue,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => return Err("closed by server".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
        };
        last_seen = Instant::now();
        let text = text.as_str();
        match text.as_bytes().first() {
            Some(b'2') => ws
                .send(Message::text("3"))
                .await
                .map_err(|e| format!("send pong: {e}"))?,
            Some(b'1') => return Err("engine.io close from server".into()),
            Some(b'4') => {
                let sio = &text[1..];
                if let Some(id) = parse_ack(sio, &inner.ns_prefix) {
                    inner.ack(id, last_seen);
                } else if sio.starts_with('1') {
                    return Err("disconnected by server".into());
                }
            }
            _ => {}
        }
    }
}

/// Puts frames written without acks back at the front (the write failed).
fn requeue_front(inner: &Inner, frames: Vec<Frame>) {
    let mut buf = inner.buf.lock();
    for mut f in frames.into_iter().rev() {
        f.sent_before = true;
        buf.pending.push_front(f);
    }
}

// NOTE: the suite runs a real python-socketio server, too big for this file.
#[cfg(test)]
mod tests;
