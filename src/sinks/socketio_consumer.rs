//! The bus-facing adapter of the Socket.IO emitter ([`super::socketio`]).
//!
//! Delivery contract: `consume` resolves as soon as the batch is *accepted*
//! into the emitter's bounded buffer (so a server that is away never blocks the
//! consumer's lane); the emitter then owns the items and delivers them at
//! least once, in order, reconnecting with backoff. Items that do not fit in
//! the buffer fail their attempt (`Err`), so the bus retries them with backoff
//! and finally dead-letters them (its DLQ and every `DeadLetterConsumer`).
//! Items still undelivered when the consumer shuts down (after waiting up to
//! `flush_timeout` for the server) go to the dead-letter sinks through the
//! hook the bus installs.
//!
//! Each item is named and shaped by the consumer's [`Protocol`]: the Claude MPM
//! dashboard's `claude_event` with its normalized payload by default, the
//! original's names and payload with [`Protocol::Legacy`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::dead_letter::iso;
use super::socketio::dashboard::{self, EventFields};
use super::socketio::{
    event_name_for, payload, EventNaming, Outgoing, Protocol, SocketIoConfig, SocketIoSink,
};
use super::{BoxFuture, DeadLetterHook, Sink, SinkItem};

/// The Socket.IO consumer's sink.
pub struct SocketIoConsumerSink {
    name: String,
    emitter: SocketIoSink,
    naming: EventNaming,
    protocol: Protocol,
    flush_timeout: Duration,
    next_token: AtomicU64,
    /// Accepted, not yet delivered items by token (for the dead-letter path).
    pending: Arc<Mutex<HashMap<u64, SinkItem>>>,
    hook: Mutex<Option<DeadLetterHook>>,
    received: AtomicU64,
    dead_lettered: Arc<AtomicU64>,
    handle: tokio::runtime::Handle,
    buffer_limit: usize,
}

impl SocketIoConsumerSink {
    /// Starts connecting at once on `handle` (retrying with backoff). Events are
    /// named by `naming` (else by `protocol`) and sent in `protocol`'s payload.
    pub fn start(
        name: String,
        config: SocketIoConfig,
        naming: EventNaming,
        protocol: Protocol,
        flush_timeout: Duration,
        handle: &tokio::runtime::Handle,
    ) -> Self {
        SocketIoConsumerSink {
            buffer_limit: config.buffer_limit,
            name,
            emitter: SocketIoSink::start_on(config, handle),
            naming,
            protocol,
            flush_timeout,
            next_token: AtomicU64::new(1),
            pending: Arc::default(),
            hook: Mutex::new(None),
            received: AtomicU64::new(0),
            dead_lettered: Arc::default(),
            handle: handle.clone(),
        }
    }

    fn outgoing(&self, item: &SinkItem, token: u64) -> Outgoing {
        let v = &item.view;
        let timestamp = iso(&v.timestamp);
        let data = v.data.clone();
        let payload = match self.protocol {
            Protocol::Dashboard => dashboard::payload(
                &EventFields {
                    id: &v.id,
                    topic: &v.topic,
                    event_type: &v.event_type,
                    source: &v.source,
                    timestamp_iso: &timestamp,
                    correlation_id: v.correlation_id.as_deref(),
                },
                data,
            ),
            Protocol::Legacy => payload(
                &v.id,
                &v.event_type,
                &v.topic,
                &timestamp,
                &v.source,
                data.unwrap_or(Value::Null),
                v.correlation_id.as_deref(),
            ),
        };
        Outgoing {
            event: event_name_for(&v.topic, &self.naming, self.protocol).to_string(),
            payload,
            token,
        }
    }
}

impl Sink for SocketIoConsumerSink {
    fn needs_data(&self) -> bool {
        true
    }

    fn set_dead_letter_hook(&self, hook: DeadLetterHook) {
        *self.hook.lock() = Some(hook);
    }

    fn consume(self: Arc<Self>, items: Vec<SinkItem>) -> BoxFuture<Vec<Result<(), String>>> {
        self.received
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        let first = self
            .next_token
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        let out: Vec<Outgoing> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.outgoing(item, first + i as u64))
            .collect();
        {
            let mut pending = self.pending.lock();
            for (i, item) in items.into_iter().enumerate() {
                pending.insert(first + i as u64, item);
            }
        }
        let receipt = self.emitter.send(out);
        let mut results: Vec<Result<(), String>> = Vec::new();
        {
            let mut pending = self.pending.lock();
            let rejected: Vec<u64> = receipt.rejected.iter().map(|o| o.token).collect();
            for t in &rejected {
                pending.remove(t);
            }
            let n = receipt.completion.tokens().len() + rejected.len();
            for i in 0..n as u64 {
                let token = first + i;
                results.push(if rejected.contains(&token) {
                    Err(format!(
                        "socket.io buffer full ({} items waiting for the server)",
                        self.emitter.metrics().buffered
                    ))
                } else {
                    Ok(())
                });
            }
        }
        // NOTE: a delivered item leaves `pending`; an undelivered one stays there
        // until shutdown hands it to the dead-letter path.
        let pending = self.pending.clone();
        let completion = receipt.completion;
        self.handle.spawn(async move {
            for d in completion.wait().await {
                if d.result.is_ok() {
                    pending.lock().remove(&d.token);
                }
            }
        });
        Box::pin(async move { results })
    }

    fn shutdown(self: Arc<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            let undelivered = self.emitter.shutdown(self.flush_timeout).await;
            let hook = self.hook.lock().clone();
            let mut pending = self.pending.lock();
            for out in undelivered {
                let Some(item) = pending.remove(&out.token) else {
                    continue;
                };
                self.dead_lettered.fetch_add(1, Ordering::Relaxed);
                if let Some(hook) = &hook {
                    let why = match self.emitter.metrics().last_error {
                        Some(e) => {
                            format!("not delivered to the Socket.IO server before shutdown ({e})")
                        }
                        None => "not delivered to the Socket.IO server before shutdown".into(),
                    };
                    let errors = [why];
                    let attempts = item.attempt + 1;
                    hook(item, &self.name, &errors, attempts);
                }
            }
        })
    }

    fn metrics(&self) -> Value {
        let m = self.emitter.metrics();
        json!({
            "connected": m.connected,
            "events_received": self.received.load(Ordering::Relaxed),
            "events_emitted": m.emitted,
            "events_failed": m.failed,
            "events_rejected": m.rejected,
            "events_dead_lettered": self.dead_lettered.load(Ordering::Relaxed),
            "buffered": m.buffered,
            "in_flight": m.in_flight,
            "reconnections": m.reconnections,
            "connection_attempts": m.connect_attempts,
            "resent": m.resent,
            "unacked": m.unacked,
            "average_emit_time_ms": m.emit_latency_mean_ms,
            "emit_latency_p50_ms": m.emit_latency_p50_ms,
            "emit_latency_p99_ms": m.emit_latency_p99_ms,
            "last_error": m.last_error,
        })
    }

    fn is_healthy(&self) -> bool {
        // NOTE: healthy while it can accept: a disconnected emitter buffers.
        self.emitter.metrics().buffered < self.buffer_limit
    }
}
