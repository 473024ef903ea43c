//! The logging sink: formats each event in Rust exactly like the original
//! `LoggingConsumer._format_event`, picks the level by the original's rules,
//! and hands whole batches of records to a writer (the binding layer's one
//! Python-side thread, which attaches to Python once per batch).
//!
//! A batch's `consume` future resolves only after the writer confirmed the
//! batch, so once the bus is idle the records exist.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::{BoxFuture, Sink, SinkItem};
use crate::event::EventView;

/// Python `logging` levels.
pub const DEBUG: u32 = 10;
/// `logging.INFO`.
pub const INFO: u32 = 20;
/// `logging.WARNING`.
pub const WARNING: u32 = 30;
/// `logging.ERROR`.
pub const ERROR: u32 = 40;

/// Parses a level name like the original's `getattr(logger, level.lower())`.
pub fn parse_level(name: &str) -> Option<u32> {
    match name.to_ascii_uppercase().as_str() {
        "DEBUG" => Some(DEBUG),
        "INFO" => Some(INFO),
        "WARNING" | "WARN" => Some(WARNING),
        "ERROR" => Some(ERROR),
        "CRITICAL" | "FATAL" => Some(50),
        _ => None,
    }
}

/// Settings of the logging sink.
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// Level of events no rule applies to.
    pub level: u32,
    /// Data as indented JSON (`json.dumps(indent=2)`) rather than `str()`.
    pub format_json: bool,
    /// Append the payload.
    pub include_data: bool,
    /// Longest payload text, in characters, before it is cut and `...` added.
    pub max_data_length: usize,
}

/// A batch of `(level, message)` records and the signal that it was written.
pub struct LogBatch {
    /// The records, in event order.
    pub records: Vec<(u32, String)>,
    /// Completed by the writer once every record was handed to the logger.
    pub done: oneshot::Sender<()>,
}

/// Formats events and passes them to the writer in batches.
pub struct LoggingSink {
    config: LoggingConfig,
    tx: parking_lot::Mutex<Option<mpsc::Sender<LogBatch>>>,
    logged: AtomicU64,
    errors: AtomicU64,
}

/// Python truthiness of a payload (the original logs data only `if event.data`).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// `json.dumps(v, indent=2)`: pretty JSON with `ensure_ascii`.
pub fn python_json_indent(v: &Value) -> String {
    let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
    ensure_ascii(&pretty)
}

fn ensure_ascii(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Python `repr()` of a string.
pub fn python_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python `str()` of the payload (dicts, lists, None/True/False as Python prints them).
pub fn python_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => {
            if n.is_f64() {
                let f = n.as_f64().unwrap_or(0.0);
                if f.fract() == 0.0 && f.abs() < 1e16 {
                    format!("{f:.1}")
                } else {
                    format!("{f}")
                }
            } else {
                n.to_string()
            }
        }
        Value::String(s) => python_str_repr(s),
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(python_repr).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(o) => {
            let parts: Vec<String> = o
                .iter()
                .map(|(k, v)| format!("{}: {}", python_str_repr(k), python_repr(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

impl LoggingSink {
    /// A sink and the receiving end its writer must drain.
    /// A sink sending its batches to `tx` (drained by the writer).
    pub fn new(config: LoggingConfig, tx: mpsc::Sender<LogBatch>) -> Self {
        LoggingSink {
            config,
            tx: parking_lot::Mutex::new(Some(tx)),
            logged: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// The original's `_format_event`.
    pub fn format(&self, v: &EventView) -> String {
        let id: String = v.id.chars().take(8).collect();
        let mut msg = format!(
            "[{}] {} (id={}, source={})",
            v.topic, v.event_type, id, v.source
        );
        if self.config.include_data {
            if let Some(data) = v.data.as_ref().filter(|d| truthy(d)) {
                let text = if self.config.format_json {
                    python_json_indent(data)
                } else {
                    python_repr(data)
                };
                msg.push('\n');
                if text.chars().count() > self.config.max_data_length {
                    msg.extend(text.chars().take(self.config.max_data_length));
                    msg.push_str("...");
                } else {
                    msg.push_str(&text);
                }
            }
        }
        let m = v.meta.lock();
        let mut info = Vec::new();
        if m.retry_count > 0 {
            info.push(format!("retries={}", m.retry_count));
        }
        if !m.failed().is_empty() {
            let names: Vec<String> = m.failed().iter().map(|f| python_str_repr(f)).collect();
            info.push(format!("failed={{{}}}", names.join(", ")));
        }
        if !info.is_empty() {
            msg.push_str(&format!(" [{}]", info.join(", ")));
        }
        msg
    }

    /// The original's `_get_log_level`.
    pub fn level(&self, v: &EventView) -> u32 {
        {
            let m = v.meta.lock();
            if !m.failed().is_empty() {
                return ERROR;
            }
            if m.retry_count > 0 {
                return WARNING;
            }
        }
        if v.topic.starts_with("error.") {
            ERROR
        } else if v.topic.starts_with("warning.") {
            WARNING
        } else if v.topic.starts_with("debug.") {
            DEBUG
        } else {
            self.config.level
        }
    }
}

impl Sink for LoggingSink {
    fn needs_data(&self) -> bool {
        self.config.include_data
    }

    fn consume(self: Arc<Self>, items: Vec<SinkItem>) -> BoxFuture<Vec<Result<(), String>>> {
        let n = items.len();
        let records: Vec<(u32, String)> = items
            .iter()
            .map(|i| (self.level(&i.view), self.format(&i.view)))
            .collect();
        let (done, wait) = oneshot::channel();
        let sent = match self.tx.lock().as_ref() {
            Some(tx) => tx.send(LogBatch { records, done }).is_ok(),
            None => false,
        };
        Box::pin(async move {
            let result = if sent && wait.await.is_ok() {
                self.logged.fetch_add(n as u64, Ordering::Relaxed);
                Ok(())
            } else {
                self.errors.fetch_add(n as u64, Ordering::Relaxed);
                Err("the logging writer is not running".to_string())
            };
            vec![result; n]
        })
    }

    fn shutdown(self: Arc<Self>) -> BoxFuture<()> {
        // NOTE: dropping the sender ends the writer thread after it has written
        // every batch already queued.
        self.tx.lock().take();
        Box::pin(async {})
    }

    fn metrics(&self) -> Value {
        json!({
            "events_logged": self.logged.load(Ordering::Relaxed),
            "events_filtered": 0,
            "errors": self.errors.load(Ordering::Relaxed),
        })
    }

    fn is_healthy(&self) -> bool {
        self.tx.lock().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MetaState;
    use chrono::Utc;
    use parking_lot::Mutex;

    fn view(topic: &str, data: Value, meta: MetaState) -> EventView {
        EventView {
            id: "0123456789abcdef".into(),
            topic: topic.into(),
            event_type: "T".into(),
            source: "src".into(),
            timestamp: Utc::now(),
            data: Some(data),
            data_error: None,
            correlation_id: None,
            priority: 3,
            meta: Arc::new(Mutex::new(meta)),
        }
    }

    fn sink(format_json: bool, max: usize) -> LoggingSink {
        let (tx, _rx) = mpsc::channel();
        LoggingSink::new(
            LoggingConfig {
                level: INFO,
                format_json,
                include_data: true,
                max_data_length: max,
            },
            tx,
        )
    }

    #[test]
    fn formats_like_the_original() {
        let s = sink(true, 1000);
        let v = view("hook.x", json!({"b": 1, "a": "é"}), MetaState::default());
        assert_eq!(
            s.format(&v),
            "[hook.x] T (id=01234567, source=src)\n{\n  \"b\": 1,\n  \"a\": \"\\u00e9\"\n}"
        );
        let mut meta = MetaState::default();
        meta.retry_count = 2;
        meta.set_failed(thin_vec::thin_vec![Arc::from("C")]);
        let v = view("x", json!({}), meta);
        assert_eq!(
            s.format(&v),
            "[x] T (id=01234567, source=src) [retries=2, failed={'C'}]"
        );
        assert_eq!(s.level(&v), ERROR);
        let s = sink(false, 10);
        let v = view("debug.x", json!({"k": [null, true]}), MetaState::default());
        assert_eq!(
            s.format(&v),
            "[debug.x] T (id=01234567, source=src)\n{'k': [Non...",
        );
        assert_eq!(s.level(&v), DEBUG);
    }
}
