//! Engine-side views of an event: its processing metadata and the GIL-free copy
//! that Rust sinks (the built-in consumers) read.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

/// Processing state of one event, shared by the Python `EventMetadata` view and
/// the engine, which updates it without the GIL.
#[derive(Debug, Clone)]
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
    pub processed: Vec<Arc<str>>,
    /// Consumers whose latest attempt failed.
    pub failed: Vec<Arc<str>>,
    /// Every failure, `"<consumer>: <error>"`, oldest first.
    pub errors: Vec<String>,
}

impl Default for MetaState {
    fn default() -> Self {
        MetaState {
            retry_count: 0,
            max_retries: 3,
            published_at: None,
            consumed_at: None,
            processed: Vec::new(),
            failed: Vec::new(),
            errors: Vec::new(),
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
    pub event_type: String,
    pub source: String,
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
