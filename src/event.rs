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
// NOTE: an event waiting in lanes holds one of these (behind an Arc and a Mutex),
// so the fields most events never set (failures, the Python mirror) are kept in
// one box made on first use: 56 bytes here, 80 with the Arc and the lock.
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
    /// Failures and the mirror; `None` while all of them are empty.
    rare: Option<Box<Rare>>,
}

/// The parts of [`MetaState`] that most events never need.
#[derive(Debug, Default)]
struct Rare {
    /// Consumers whose latest attempt failed.
    failed: ThinVec<Arc<str>>,
    /// Every failure, `"<consumer>: <error>"`, oldest first.
    errors: ThinVec<String>,
    /// The binding layer's mirror of these fields as its own objects (Python
    /// sets and a list that user code may mutate), once someone asked for them.
    mirror: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Changes made by the engine since the mirror was last brought up to date.
    pending: ThinVec<MetaOp>,
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
    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Consumers whose latest attempt failed.
    pub fn failed(&self) -> &[Arc<str>] {
        self.rare.as_ref().map_or(&[], |r| &r.failed)
    }

    /// Every failure, `"<consumer>: <error>"`, oldest first.
    pub fn errors(&self) -> &[String] {
        self.rare.as_ref().map_or(&[], |r| &r.errors)
    }

    /// Replaces the consumers whose latest attempt failed.
    pub fn set_failed(&mut self, failed: ThinVec<Arc<str>>) {
        if !failed.is_empty() || self.rare.is_some() {
            self.rare_mut().failed = failed;
        }
    }

    /// Replaces the failure messages.
    pub fn set_errors(&mut self, errors: ThinVec<String>) {
        if !errors.is_empty() || self.rare.is_some() {
            self.rare_mut().errors = errors;
        }
    }

    /// The binding layer's mirror, if it made one.
    pub fn mirror(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        self.rare.as_ref()?.mirror.as_deref()
    }

    /// The binding layer's mirror, mutably.
    pub fn mirror_mut(&mut self) -> Option<&mut (dyn std::any::Any + Send + Sync)> {
        self.rare.as_mut()?.mirror.as_deref_mut()
    }

    /// Installs the mirror (made from the current state: no changes pending).
    pub fn set_mirror(&mut self, mirror: Box<dyn std::any::Any + Send + Sync>) {
        let rare = self.rare_mut();
        rare.mirror = Some(mirror);
        rare.pending.clear();
    }

    /// Takes the changes made since the mirror was last brought up to date.
    pub fn take_pending(&mut self) -> ThinVec<MetaOp> {
        self.rare
            .as_mut()
            .map(|r| std::mem::take(&mut r.pending))
            .unwrap_or_default()
    }

    /// Records that `consumer` handled the event.
    pub fn record_success(&mut self, consumer: &Arc<str>) {
        if let Some(rare) = &mut self.rare {
            rare.failed.retain(|c| c != consumer);
            if rare.mirror.is_some() {
                rare.pending.push(MetaOp::Processed(consumer.clone()));
            }
        }
        if !self.processed.iter().any(|c| c == consumer) {
            self.processed.push(consumer.clone());
        }
        if self.consumed_at.is_none() {
            self.consumed_at = Some(crate::clock::now());
        }
    }

    /// Records a failed attempt by `consumer`.
    pub fn record_failure(&mut self, consumer: &Arc<str>, error: &str) {
        let rare = self.rare_mut();
        if !rare.failed.iter().any(|c| c == consumer) {
            rare.failed.push(consumer.clone());
        }
        let message = format!("{consumer}: {error}");
        if rare.mirror.is_some() {
            rare.pending
                .push(MetaOp::Failed(consumer.clone(), message.clone()));
        }
        rare.errors.push(message);
    }

    /// A copy without the mirror.
    pub fn snapshot(&self) -> MetaState {
        let rare = self.rare.as_ref().and_then(|r| {
            (!r.failed.is_empty() || !r.errors.is_empty()).then(|| {
                Box::new(Rare {
                    failed: r.failed.clone(),
                    errors: r.errors.clone(),
                    mirror: None,
                    pending: ThinVec::new(),
                })
            })
        });
        MetaState {
            retry_count: self.retry_count,
            max_retries: self.max_retries,
            published_at: self.published_at,
            consumed_at: self.consumed_at,
            processed: self.processed.clone(),
            rare,
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
            rare: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_stays_small() {
        // NOTE: every queued event holds one (W5, bytes per queued event): 64
        // bytes plus the Arc's 16 fit mimalloc's 80-byte size class.
        assert!(std::mem::size_of::<Mutex<MetaState>>() <= 64);
    }

    #[test]
    fn failures_and_mirror_live_in_the_rare_box() {
        let mut m = MetaState::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        m.record_success(&a);
        assert!(m.rare.is_none());
        m.record_failure(&b, "boom");
        assert_eq!(m.failed(), std::slice::from_ref(&b));
        assert_eq!(m.errors(), &["b: boom".to_string()]);
        m.set_mirror(Box::new(()));
        m.record_success(&b);
        assert!(m.failed().is_empty());
        assert_eq!(m.take_pending().len(), 1);
        let s = m.snapshot();
        assert!(s.mirror().is_none());
        assert_eq!(s.errors(), m.errors());
        assert_eq!(s.processed, m.processed);
    }
}
