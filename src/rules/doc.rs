//! [`EventDoc`]: an event seen as the JSON document rules match against, the
//! fields of `Event.to_dict()`, made from the engine's [`EventView`] with only
//! the fields the rules name.

use serde_json::Value;

use super::Doc;
use crate::event::{priority_name, EventView};

/// The top-level fields of the event document rules see (as in
/// `Event.to_dict()`, without `metadata`, which changes as consumers run).
pub const EVENT_FIELDS: [&str; 8] = [
    "id",
    "topic",
    "type",
    "source",
    "timestamp",
    "correlation_id",
    "priority",
    "data",
];

/// One bit per entry of [`EVENT_FIELDS`] that `wants`.
pub fn field_mask(wants: impl Fn(&str) -> bool) -> u8 {
    EVENT_FIELDS
        .iter()
        .enumerate()
        .filter(|(_, k)| wants(k))
        .fold(0u8, |m, (i, _)| m | 1 << i)
}

/// An event as a rule document: the named fields copied as JSON, the payload
/// borrowed from the view.
#[derive(Debug)]
pub struct EventDoc<'a> {
    fields: Vec<(&'static str, Value)>,
    data: Option<&'a Value>,
}

impl<'a> EventDoc<'a> {
    /// The document of `view`, with the fields `wants` names (the payload only
    /// if the view holds it as JSON).
    pub fn of(view: &'a EventView, wants: impl Fn(&str) -> bool) -> Self {
        Self::with_fields(view, field_mask(wants))
    }

    /// [`EventDoc::of`] with the wanted fields given as one bit per entry of
    /// [`EVENT_FIELDS`].
    pub fn with_fields(view: &'a EventView, mask: u8) -> Self {
        let mut fields = Vec::new();
        let mut data = None;
        for (i, key) in EVENT_FIELDS.into_iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            let v = match key {
                "data" => {
                    data = view.data.as_ref();
                    continue;
                }
                "id" => Value::String(view.id.to_string()),
                "topic" => Value::String(view.topic.to_string()),
                "type" => Value::String(view.event_type.to_string()),
                "source" => Value::String(view.source.to_string()),
                "timestamp" => Value::String(crate::sinks::dead_letter::iso(&view.timestamp)),
                "correlation_id" => view
                    .correlation_id
                    .as_ref()
                    .map_or(Value::Null, |c| Value::String(c.clone())),
                _ => Value::String(priority_name(view.priority).to_string()),
            };
            fields.push((key, v));
        }
        EventDoc { fields, data }
    }

    /// A document of the given top-level `fields` and payload `data` (for a
    /// caller that makes the fields the rules name without a view).
    pub fn new(fields: Vec<(&'static str, Value)>, data: Option<&'a Value>) -> Self {
        EventDoc { fields, data }
    }
}

impl Doc for EventDoc<'_> {
    fn field(&self, key: &str) -> Option<&Value> {
        if key == "data" {
            return self.data;
        }
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// A stored event (a log entry or a row of the store) as a rule document, for
/// `replay(rule=)`; a payload that is not JSON reads as absent.
pub fn stored_doc(e: &crate::storage::StoredEvent) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("id".into(), Value::String(e.id.clone()));
    m.insert("topic".into(), Value::String(e.topic.to_string()));
    m.insert("type".into(), Value::String(e.event_type.to_string()));
    m.insert("source".into(), Value::String(e.source.to_string()));
    if let Some(t) = chrono::DateTime::from_timestamp_micros(e.timestamp_us) {
        m.insert(
            "timestamp".into(),
            Value::String(crate::sinks::dead_letter::iso(&t)),
        );
    }
    m.insert(
        "correlation_id".into(),
        e.correlation_id.clone().map_or(Value::Null, Value::String),
    );
    m.insert(
        "priority".into(),
        Value::String(priority_name(e.priority).to_string()),
    );
    if let Ok(data) = serde_json::from_slice::<Value>(&e.data_json) {
        m.insert("data".into(), data);
    }
    m
}
