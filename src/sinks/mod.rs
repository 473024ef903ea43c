//! Engine-side sinks: the Rust back-ends of the built-in consumers.
//!
//! Sinks are plain Rust (tokio) and never import pyo3, so they build and are
//! tested with `--no-default-features`. The binding layer runs a sink's batches
//! on the Tokio runtime (no GIL) and wraps each sink in a Python consumer class.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::event::EventView;

pub mod dead_letter;
pub mod executor;
pub mod fanout;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod socketio;
pub mod socketio_consumer;
pub mod tls;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One event handed to a sink.
#[derive(Debug, Clone)]
pub struct SinkItem {
    /// The event's fields.
    pub view: Arc<EventView>,
    /// 0 for the first attempt, n for the n-th retry.
    pub attempt: u32,
}

/// Why one item of a sink's batch failed, for sinks that know more than a message
/// (see [`Sink::consume_detailed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkFailure {
    /// A failed attempt, retried by the bus with the consumer's backoff.
    Retry(String),
    /// A failed attempt, retried no sooner than this delay (e.g. the server's
    /// `Retry-After`) when the consumer's backoff is shorter.
    RetryNotBefore(String, std::time::Duration),
    /// Trying again cannot help (e.g. an HTTP 400): dead-lettered at once.
    Permanent(String),
}

impl SinkFailure {
    /// The failure's message.
    pub fn message(&self) -> &str {
        match self {
            SinkFailure::Retry(m)
            | SinkFailure::RetryNotBefore(m, _)
            | SinkFailure::Permanent(m) => m,
        }
    }
}

/// A delivery back-end run by the engine without the GIL.
pub trait Sink: Send + Sync + 'static {
    /// Whether the sink reads the payload (`EventView::data`); converting it to
    /// JSON is skipped for events no such sink receives.
    fn needs_data(&self) -> bool;

    /// Handles a batch: one result per item, in order (`Err` = failed attempt,
    /// retried by the bus).
    fn consume(self: Arc<Self>, items: Vec<SinkItem>) -> BoxFuture<Vec<Result<(), String>>>;

    /// Handles a batch like [`Sink::consume`], saying of each failure whether
    /// and when it is worth retrying. The engine calls this one; the default
    /// treats every `Err` of `consume` as [`SinkFailure::Retry`].
    fn consume_detailed(
        self: Arc<Self>,
        items: Vec<SinkItem>,
    ) -> BoxFuture<Vec<Result<(), SinkFailure>>> {
        let fut = self.consume(items);
        Box::pin(async move {
            fut.await
                .into_iter()
                .map(|r| r.map_err(SinkFailure::Retry))
                .collect()
        })
    }

    /// Prepares the sink (the consumer's `initialize()`); `Err` fails the subscribe.
    fn initialize(&self) -> Result<(), String> {
        Ok(())
    }

    /// Flushes and releases resources.
    fn shutdown(self: Arc<Self>) -> BoxFuture<()> {
        Box::pin(async {})
    }

    /// True if the sink's `consume` does its work when called and never blocks
    /// (counting in memory, say): the engine may then call it on the thread that
    /// hands over a small job, instead of waking a Tokio worker for it (see
    /// [`executor::SinkExecutor`]). A future it returns that is not ready at once
    /// still runs on the runtime.
    fn runs_inline(&self) -> bool {
        false
    }

    /// True if the sink wants every dead letter of the bus.
    fn wants_dead_letters(&self) -> bool {
        false
    }

    /// Receives a dead letter (only when `wants_dead_letters`).
    fn on_dead_letter(&self, _item: SinkItem, _consumer: &str, _errors: &[String], _attempts: u32) {
    }

    /// The sink's metrics as JSON (the Python consumer's `get_metrics()`).
    fn metrics(&self) -> serde_json::Value;

    /// True while the sink can do its work.
    fn is_healthy(&self) -> bool {
        true
    }
}
