//! Engine-side views of an event: its processing metadata and the GIL-free copy
//! that Rust sinks (the built-in consumers) read.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
// NOTE: ThinVec (one pointer, no allocation while empty) keeps the per-event
// metadata small: most events never fail and wait in lanes with empty lists.
use thin_vec::ThinVec;

/// Processing state of one event, shared by the Python `EventMetadata` view and
/// the engine, which updates it without the GIL.
#[derive(Debug)]
pub struct MetaState {
    /// Highest retry attempt any consumer has had for this event.
    pub retry_count: i64,
    /// Informational retry limit (as in the original).
    pub max_retries: i64,
    /// When the bus accepted the event.
    pub published_at: Option<DateTime<Utc>>,
    /// When a consumer first handled it.
    pub consumed_at: Option<DateTime<Utc>>,
    /// Consumers that handled it.
    pub processed: ThinVec<Arc<str>>,
    /// Consumers whose latest attempt failed.
    pub failed: ThinVec<Arc<str>>,
    /// Every failure, `"<consumer>: <error>"`, oldest first.
    pub errors: ThinVec<String>,
    /// The binding layer's mirror of these fields as its own objects (Python
    /// sets and a list that user code may mutate), once someone asked for them.
    pub mirror: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Changes made by the engine since the mirror was last brought up to date.
    pub pending: ThinVec<MetaOp>,
}

/// A change to [`MetaState`] made by the engine, replayed onto the mirror.
#[derive(Debug, Clone)]
pub enum MetaOp {
    /// A consumer handled the event.
    Processed(Arc<str>),
    /// A consumer's attempt failed with this message.
    Failed(Arc<str>, String),
}

impl MetaState {
    /// Records that `consumer` handled the event.
    pub fn record_success(&mut self, consumer: &Arc<str>) {
        self.failed.retain(|c| c != consumer);
        if !self.processed.iter().any(|c| c == consumer) {
            self.processed.push(consumer.clone());
        }
        if self.consumed_at.is_none() {
            self.consumed_at = Some(Utc::now());
        }
        if self.mirror.is_some() {
            self.pending.push(MetaOp::Processed(consumer.clone()));
        }
    }

    /// Records a failed attempt by `consumer`.
    pub fn record_failure(&mut self, consumer: &Arc<str>, error: &str) {
        if !self.failed.iter().any(|c| c == consumer) {
            self.failed.push(consumer.clone());
        }
        let message = format!("{consumer}: {error}");
        if self.mirror.is_some() {
            self.pending
                .push(MetaOp::Failed(consumer.clone(), message.clone()));
        }
        self.errors.push(message);
    }

    /// A copy without the mirror.
    pub fn snapshot(&self) -> MetaState {
        MetaState {
            retry_count: self.retry_count,
            max_retries: self.max_retries,
            published_at: self.published_at,
            consumed_at: self.consumed_at,
            processed: self.processed.clone(),
            failed: self.failed.clone(),
            errors: self.errors.clone(),
            mirror: None,
            pending: ThinVec::new(),
        }
    }
}

impl Default for MetaState {
    fn default() -> Self {
        MetaState {
            retry_count: 0,
            max_retries: 3,
            published_at: None,
            consumed_at: None,
            processed: ThinVec::new(),
            failed: ThinVec::new(),
            errors: ThinVec::new(),
            mirror: None,
            pending: ThinVec::new(),
        }
    }
}

/// Shared, lock-protected [`MetaState`].
pub type MetaCell = Arc<Mutex<MetaState>>;

/// A read-only copy of an event's fields, made once at publish time for the
/// Rust sinks that need it.
#[derive(Debug, Clone)]
pub struct EventView {
    pub id: Arc<str>,
    pub topic: Arc<str>,
    pub event_type: Arc<str>,
    pub source: Arc<str>,
    pub timestamp: DateTime<Utc>,
    /// The payload as JSON; `None` when no sink on the route needed it.
    pub data: Option<serde_json::Value>,
    /// Why the payload could not be converted, if it could not.
    pub data_error: Option<String>,
    pub correlation_id: Option<String>,
    /// 1 (CRITICAL) to 4 (LOW).
    pub priority: u8,
    /// The live metadata.
    pub meta: MetaCell,
}

/// Name of an event priority level.
pub fn priority_name(p: u8) -> &'static str {
    ["CRITICAL", "HIGH", "NORMAL", "LOW"]
        .get(p.saturating_sub(1) as usize)
        .copied()
        .unwrap_or("NORMAL")
}
