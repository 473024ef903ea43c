//! Payload schemas: JSON Schema (draft 2020-12) documents registered for topic
//! patterns, checked against an event's payload at publish.
//!
//! Plain Rust (no pyo3), on the `jsonschema` crate. A registry holds the
//! schemas in registration order and caches, per topic, the ones whose
//! pattern matches it; [`Schemas::check`] validates a payload against all of
//! them and says, for each failure, the JSON path in the payload, the keyword
//! that failed and the message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde_json::Value;

use crate::topic::Pattern;

/// What publishing does with an event whose payload fails its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInvalid {
    /// Refuse it: `publish` raises, nothing is accepted.
    Raise,
    /// Accept it into the dead letters with the errors; never deliver it.
    DeadLetter,
}

/// One failed check: where in the payload, which keyword, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The JSON path in the payload, `$` for the payload itself, e.g. `$.params[0]`.
    pub path: String,
    /// The schema keyword that failed (`type`, `required`, `enum`, ...).
    pub keyword: String,
    /// The validator's message.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.path, self.message, self.keyword)
    }
}

/// A compiled schema for a topic pattern.
pub struct Schema {
    /// The pattern as given.
    pub pattern_text: String,
    pattern: Pattern,
    validator: jsonschema::Validator,
    /// What happens to an invalid event.
    pub on_invalid: OnInvalid,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("pattern", &self.pattern_text)
            .field("on_invalid", &self.on_invalid)
            .finish()
    }
}

impl Schema {
    /// Compiles `schema` (draft 2020-12) for topics matching `pattern`.
    pub fn compile(pattern: &str, schema: &Value, on_invalid: OnInvalid) -> Result<Schema, String> {
        let parsed = Pattern::parse(pattern).map_err(|e| e.to_string())?;
        let validator = jsonschema::draft202012::new(schema).map_err(|e| {
            format!(
                "not a valid JSON Schema (draft 2020-12): {}: {e}",
                json_path(&e.schema_path().to_string())
            )
        })?;
        Ok(Schema {
            pattern_text: pattern.to_string(),
            pattern: parsed,
            validator,
            on_invalid,
        })
    }

    /// Whether `payload` is valid.
    pub fn is_valid(&self, payload: &Value) -> bool {
        self.validator.is_valid(payload)
    }

    /// Every violation of `payload` (none when it is valid).
    pub fn violations(&self, payload: &Value) -> Vec<Violation> {
        self.validator
            .iter_errors(payload)
            .map(|e| Violation {
                path: json_path(&e.instance_path().to_string()),
                keyword: e.kind().keyword().to_string(),
                message: e.to_string(),
            })
            .collect()
    }
}

/// A JSON Pointer (`/params/0`) as a JSON path (`$.params[0]`).
pub fn json_path(pointer: &str) -> String {
    let mut out = String::from("$");
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else if !seg.is_empty()
            && seg
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        {
            out.push('.');
            out.push_str(&seg);
        } else {
            out.push_str(&format!("[{}]", Value::String(seg)));
        }
    }
    out
}

/// The outcome of checking one payload against its topic's schemas.
#[derive(Debug)]
pub struct Invalid {
    /// What to do with the event (the strictest of the failing schemas: raise wins).
    pub on_invalid: OnInvalid,
    /// The violations, schema by schema.
    pub violations: Vec<Violation>,
}

const CACHE_LIMIT: usize = 8192;

/// The schemas that apply to a topic, in registration order.
pub type TopicSchemas = Arc<[Arc<Schema>]>;

/// The schemas of one bus.
#[derive(Debug, Default)]
pub struct Schemas {
    all: RwLock<Vec<Arc<Schema>>>,
    by_topic: Mutex<HashMap<Box<str>, TopicSchemas>>,
    invalid: Mutex<HashMap<Box<str>, u64>>,
    count: AtomicU64,
}

impl Schemas {
    /// Adds a schema (a later one for the same pattern text replaces it).
    pub fn register(&self, schema: Schema) {
        let mut all = self.all.write();
        all.retain(|s| s.pattern_text != schema.pattern_text);
        all.push(Arc::new(schema));
        self.count.store(all.len() as u64, Ordering::Release);
        self.by_topic.lock().clear();
    }

    /// Whether any schema is registered (one atomic load).
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// The schemas whose pattern matches `topic`.
    pub fn for_topic(&self, topic: &str) -> Arc<[Arc<Schema>]> {
        if let Some(s) = self.by_topic.lock().get(topic) {
            return s.clone();
        }
        let found: Arc<[Arc<Schema>]> = self
            .all
            .read()
            .iter()
            .filter(|s| s.pattern.matches(topic))
            .cloned()
            .collect();
        let mut cache = self.by_topic.lock();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(topic.into(), found.clone());
        found
    }

    /// Checks `payload` (of an event on `topic`) against `schemas`
    /// ([`Schemas::for_topic`]); an invalid one is counted for its topic.
    pub fn check(&self, topic: &str, schemas: &[Arc<Schema>], payload: &Value) -> Option<Invalid> {
        let out = Self::evaluate(schemas, payload);
        if out.is_some() {
            *self.invalid.lock().entry(topic.into()).or_default() += 1;
        }
        out
    }

    /// Checks again the payload of an event already dead-lettered for its schema
    /// (`replay_dead_letters()`), against the schemas of `topic` registered now;
    /// not counted in [`Schemas::invalid_counts`] (the event was counted when it
    /// was published).
    pub fn recheck(&self, topic: &str, payload: &Value) -> Option<Invalid> {
        if self.is_empty() {
            return None;
        }
        Self::evaluate(&self.for_topic(topic), payload)
    }

    fn evaluate(schemas: &[Arc<Schema>], payload: &Value) -> Option<Invalid> {
        let mut out: Option<Invalid> = None;
        for s in schemas {
            if s.is_valid(payload) {
                continue;
            }
            let inv = out.get_or_insert(Invalid {
                on_invalid: OnInvalid::DeadLetter,
                violations: Vec::new(),
            });
            if s.on_invalid == OnInvalid::Raise {
                inv.on_invalid = OnInvalid::Raise;
            }
            inv.violations.extend(s.violations(payload));
        }
        out
    }

    /// Invalid events counted per topic.
    pub fn invalid_counts(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .invalid
            .lock()
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect();
        v.sort();
        v
    }

    /// The registered schemas' patterns and modes.
    pub fn patterns(&self) -> Vec<(String, OnInvalid)> {
        self.all
            .read()
            .iter()
            .map(|s| (s.pattern_text.clone(), s.on_invalid))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool_schema() -> Value {
        json!({
            "type": "object",
            "required": ["tool", "params"],
            "properties": {
                "tool": {"type": "string", "minLength": 1},
                "params": {"type": "object"},
                "n": {"type": "integer", "minimum": 0}
            }
        })
    }

    #[test]
    fn violations_name_the_path_and_keyword() {
        let s = Schema::compile("hook.**", &tool_schema(), OnInvalid::Raise).unwrap();
        assert!(s.is_valid(&json!({"tool": "Bash", "params": {}})));
        let v = s.violations(&json!({"tool": 5, "params": {}, "n": -1}));
        let got: Vec<(&str, &str)> = v
            .iter()
            .map(|x| (x.path.as_str(), x.keyword.as_str()))
            .collect();
        assert!(got.contains(&("$.tool", "type")), "{got:?}");
        assert!(got.contains(&("$.n", "minimum")), "{got:?}");
        let v = s.violations(&json!({"tool": "x"}));
        assert_eq!(
            (v[0].path.as_str(), v[0].keyword.as_str()),
            ("$", "required")
        );
    }

    #[test]
    fn the_registry_finds_schemas_by_topic_and_counts_invalid_events() {
        let reg = Schemas::default();
        assert!(reg.is_empty());
        reg.register(Schema::compile("hook.*", &tool_schema(), OnInvalid::DeadLetter).unwrap());
        assert_eq!(reg.for_topic("hook.pre").len(), 1);
        assert!(reg.for_topic("system.x").is_empty());
        let schemas = reg.for_topic("hook.pre");
        let bad = reg.check("hook.pre", &schemas, &json!({})).unwrap();
        assert_eq!(bad.on_invalid, OnInvalid::DeadLetter);
        assert!(reg
            .check("hook.pre", &schemas, &json!({"tool": "a", "params": {}}))
            .is_none());
        assert_eq!(reg.invalid_counts(), vec![("hook.pre".to_string(), 1)]);
        // A re-check (dead-letter replay) sees the schemas of now, uncounted.
        assert!(reg.recheck("hook.pre", &json!({})).is_some());
        assert!(reg
            .recheck("hook.pre", &json!({"tool": "a", "params": {}}))
            .is_none());
        assert!(reg.recheck("system.x", &json!({})).is_none());
        assert_eq!(reg.invalid_counts(), vec![("hook.pre".to_string(), 1)]);
        assert!(Schema::compile("hook.*", &json!({"type": 5}), OnInvalid::Raise).is_err());
        assert!(Schema::compile("hook..x", &json!({}), OnInvalid::Raise).is_err());
    }

    #[test]
    fn pointers_become_json_paths() {
        assert_eq!(json_path(""), "$");
        assert_eq!(json_path("/a/0/b c/x~1y"), "$.a[0][\"b c\"][\"x/y\"]");
    }
}
