//! The bus-facing adapter of the Socket.IO emitter ([`super::socketio`]).
//!
//! Delivery contract: one `consume` call is one delivery attempt of its batch,
//! and it resolves with the server's answer: an item is `Ok` only once the
//! server acknowledged it. No ack within `ack_timeout`, a server that cannot
//! be reached (the connection attempt the item waited for failed), or a full
//! buffer is an `Err` for that item, so the bus retries it with the consumer's
//! backoff and finally dead-letters it (its DLQ and every
//! `DeadLetterConsumer`), counting it failed, never delivered. The emitter
//! keeps the connection (reconnecting on demand) and sends in order.
//!
//! Each item is named and shaped by the consumer's [`Protocol`]: the Claude MPM
//! dashboard's `claude_event` with its normalized payload by default, the
//! original's names and payload with [`Protocol::Legacy`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::dead_letter::iso;
use super::socketio::dashboard;
use super::socketio::{
    event_name_for, payload, EventNaming, Outgoing, Protocol, SocketIoConfig, SocketIoSink,
};
use super::{BoxFuture, Sink, SinkItem};

/// The Socket.IO consumer's sink.
pub struct SocketIoConsumerSink {
    emitter: SocketIoSink,
    naming: EventNaming,
    protocol: Protocol,
    flush_timeout: Duration,
    next_token: AtomicU64,
    received: AtomicU64,
    buffer_limit: usize,
}

impl SocketIoConsumerSink {
    /// Starts connecting at once on `handle` (retrying with backoff). Events are
    /// named by `naming` (else by `protocol`) and sent in `protocol`'s payload.
    pub fn start(
        config: SocketIoConfig,
        naming: EventNaming,
        protocol: Protocol,
        flush_timeout: Duration,
        handle: &tokio::runtime::Handle,
    ) -> Self {
        SocketIoConsumerSink {
            buffer_limit: config.buffer_limit,
            emitter: SocketIoSink::start_on(config, handle),
            naming,
            protocol,
            flush_timeout,
            next_token: AtomicU64::new(1),
            received: AtomicU64::new(0),
        }
    }

    fn outgoing(&self, item: &SinkItem, token: u64) -> Outgoing {
        let v = &item.view;
        let payload = match self.protocol {
            Protocol::Dashboard => dashboard::payload_of(v),
            Protocol::Legacy => payload(
                &v.id,
                &v.event_type,
                &v.topic,
                &iso(&v.timestamp),
                &v.source,
                v.data.clone().unwrap_or(Value::Null),
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

    fn consume(self: Arc<Self>, items: Vec<SinkItem>) -> BoxFuture<Vec<Result<(), String>>> {
        let n = items.len();
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        let first = self.next_token.fetch_add(n as u64, Ordering::Relaxed);
        let out: Vec<Outgoing> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.outgoing(item, first + i as u64))
            .collect();
        let receipt = self.emitter.send(out);
        let full = (!receipt.rejected.is_empty()).then(|| {
            format!(
                "socket.io buffer full ({} items waiting for the server)",
                self.emitter.metrics().buffered
            )
        });
        let guard = Withdraw {
            sink: self.clone(),
            tokens: receipt.completion.tokens().to_vec(),
            done: false,
        };
        Box::pin(async move {
            let mut guard = guard;
            let mut by_token: HashMap<u64, Result<(), String>> = receipt
                .completion
                .wait()
                .await
                .into_iter()
                .map(|d| (d.token, d.result))
                .collect();
            guard.done = true;
            (0..n as u64)
                .map(|i| {
                    by_token.remove(&(first + i)).unwrap_or_else(|| {
                        Err(full.clone().unwrap_or_else(|| "not accepted".into()))
                    })
                })
                .collect()
        })
    }

    fn shutdown(self: Arc<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            // NOTE: the bus has ended every delivery before it shuts consumers
            // down, so this only closes the connection (what might remain is
            // failed, and was already accounted by the bus).
            let _ = self.emitter.shutdown(self.flush_timeout).await;
        })
    }

    fn metrics(&self) -> Value {
        let m = self.emitter.metrics();
        json!({
            "connected": m.connected,
            "events_received": self.received.load(Ordering::Relaxed),
            "events_emitted": m.emitted,
            "events_failed": m.failed,
            "ack_timeouts": m.ack_timeouts,
            "unreachable": m.unreachable,
            "events_rejected": m.rejected,
            "buffered": m.buffered,
            "in_flight": m.in_flight,
            "reconnections": m.reconnections,
            "connection_attempts": m.connect_attempts,
            "resent": m.resent,
            "maybe_duplicated": m.maybe_duplicated,
            "unacked": m.unacked,
            "average_emit_time_ms": m.emit_latency_mean_ms,
            "emit_latency_p50_ms": m.emit_latency_p50_ms,
            "emit_latency_p99_ms": m.emit_latency_p99_ms,
            "last_error": m.last_error,
        })
    }

    fn is_healthy(&self) -> bool {
        // NOTE: healthy while it can accept: a disconnected emitter reconnects
        // on demand.
        self.emitter.metrics().buffered < self.buffer_limit
    }
}

/// Withdraws a batch's unsent items when the bus stops waiting for its
/// `consume` (timeout, abandon at stop): a retry must not race a late send.
struct Withdraw {
    sink: Arc<SocketIoConsumerSink>,
    tokens: Vec<u64>,
    done: bool,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if !self.done {
            self.sink.emitter.withdraw(&self.tokens);
        }
    }
}
