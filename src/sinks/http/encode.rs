//! The bodies the HTTP consumer posts, one function per `format`.
//!
//! - `claude-mpm`: what claude-mpm's hook handler posts to `POST /api/events`,
//!   `{"namespace": "", "event": "claude_event", "data": <normalized event>}`,
//!   the normalized event being [`dashboard::payload`] (the Socket.IO consumer's).
//! - `cloudevents`: CloudEvents 1.0 in the JSON event format, as the HTTP
//!   binding's structured mode (`application/cloudevents+json`, one event) or
//!   batched mode (`application/cloudevents-batch+json`, a JSON array).
//!   Attributes: `specversion` "1.0", `id` (ours), `source`
//!   `/mpm-events/<our source>` (a URI reference, percent-encoded), `type`
//!   `mpm_events.<our event type>` (e.g. `mpm_events.PreToolUse`: the type says
//!   what happened, the topic where it was routed), `time` (RFC 3339, UTC),
//!   `datacontenttype` `application/json`, `data` (our payload, omitted when
//!   null), and the extensions `topic`, `correlationid` (ours, else one in the
//!   data) and `sessionid` (from the data) when known.
//! - `json`: our `Event.to_dict()` (one object; a JSON array for a batch).

use chrono::SecondsFormat;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

use crate::event::{priority_name, EventView};
use crate::sinks::dead_letter::iso;
use crate::sinks::socketio::dashboard;

/// `Content-Type` of a `claude-mpm` or `json` body.
pub const JSON: &str = "application/json";
/// `Content-Type` of one CloudEvent in structured mode.
pub const CLOUDEVENT: &str = "application/cloudevents+json; charset=utf-8";
/// `Content-Type` of a CloudEvents batch.
pub const CLOUDEVENTS_BATCH: &str = "application/cloudevents-batch+json; charset=utf-8";

/// The `event` claude-mpm's hook handler posts (its server reads only `data`).
pub const CLAUDE_EVENT: &str = "claude_event";

/// RFC 3986 unreserved characters stay as they are in the `source` path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// claude-mpm's hook handler's body for one event.
pub fn claude_mpm(v: &EventView) -> Value {
    json!({"namespace": "", "event": CLAUDE_EVENT, "data": dashboard::payload_of(v)})
}

/// One event as a CloudEvent (JSON event format).
pub fn cloudevent(v: &EventView) -> Value {
    let data = v.data.as_ref().filter(|d| !d.is_null());
    let mut m = Map::with_capacity(10);
    m.insert("specversion".into(), "1.0".into());
    m.insert("id".into(), (*v.id).into());
    m.insert(
        "source".into(),
        format!("/mpm-events/{}", utf8_percent_encode(&v.source, SEGMENT)).into(),
    );
    m.insert("type".into(), format!("mpm_events.{}", v.event_type).into());
    m.insert(
        "time".into(),
        v.timestamp
            .to_rfc3339_opts(SecondsFormat::Micros, true)
            .into(),
    );
    m.insert("topic".into(), (*v.topic).into());
    let correlation = v
        .correlation_id
        .clone()
        .filter(|c| !c.is_empty())
        .or_else(|| dashboard::context(data, &dashboard::CORRELATION_KEYS));
    if let Some(c) = correlation {
        m.insert("correlationid".into(), c.into());
    }
    if let Some(s) = dashboard::context(data, &dashboard::SESSION_KEYS) {
        m.insert("sessionid".into(), s.into());
    }
    if let Some(d) = data {
        m.insert("datacontenttype".into(), JSON.into());
        m.insert("data".into(), d.clone());
    }
    Value::Object(m)
}

/// One event as our `Event.to_dict()`.
pub fn event_dict(v: &EventView) -> Value {
    let m = v.meta.lock().snapshot();
    json!({
        "id": &*v.id,
        "topic": &*v.topic,
        "type": &*v.event_type,
        "timestamp": iso(&v.timestamp),
        "source": &*v.source,
        "data": v.data.clone().unwrap_or(Value::Null),
        "metadata": {
            "retry_count": m.retry_count,
            "max_retries": m.max_retries,
            "published_at": m.published_at.map(|t| t.to_rfc3339()),
            "consumed_at": m.consumed_at.map(|t| t.to_rfc3339()),
            "consumers_processed": m.processed.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "consumers_failed": m.failed().iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "error_messages": m.errors(),
        },
        "correlation_id": v.correlation_id,
        "priority": priority_name(v.priority),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MetaState;
    use parking_lot::Mutex;
    use std::sync::Arc;

    fn view(source: &str, data: Option<Value>, correlation: Option<&str>) -> EventView {
        EventView {
            id: "e-1".into(),
            topic: "hook.tool".into(),
            event_type: "PreToolUse".into(),
            source: source.into(),
            timestamp: chrono::DateTime::parse_from_rfc3339("2026-12-01T19:19:13.620948+00:00")
                .unwrap()
                .into(),
            data,
            data_error: None,
            correlation_id: correlation.map(str::to_string),
            priority: 2,
            meta: Arc::new(Mutex::new(MetaState::default())),
        }
    }

    #[test]
    fn claude_mpm_wraps_the_normalized_event() {
        let body = claude_mpm(&view(
            "hook_handler",
            Some(json!({"session_id": "s-1", "tool_name": "Bash"})),
            Some("c-1"),
        ));
        assert_eq!(body["namespace"], "");
        assert_eq!(body["event"], "claude_event");
        let d = &body["data"];
        assert_eq!(d["event"], "mpm_event");
        assert_eq!(
            (d["type"].as_str(), d["subtype"].as_str()),
            (Some("hook"), Some("pre_tool"))
        );
        assert_eq!(d["session_id"], "s-1");
        assert_eq!(d["correlation_id"], "c-1");
        assert_eq!(d["timestamp"], "2026-12-01T19:19:13.620948+00:00");
        assert_eq!(d["data"]["tool_name"], "Bash");
    }

    #[test]
    fn a_cloudevent_has_the_required_attributes_and_lowercase_extensions() {
        let ce = cloudevent(&view(
            "my source/1",
            Some(json!({"params": {"session_id": "s-9"}, "correlation_id": "c-7"})),
            None,
        ));
        assert_eq!(
            ce,
            json!({
                "specversion": "1.0",
                "id": "e-1",
                "source": "/mpm-events/my%20source%2F1",
                "type": "mpm_events.PreToolUse",
                "time": "2026-12-01T19:19:13.620948Z",
                "topic": "hook.tool",
                "correlationid": "c-7",
                "sessionid": "s-9",
                "datacontenttype": "application/json",
                "data": {"params": {"session_id": "s-9"}, "correlation_id": "c-7"},
            })
        );
        for key in ce.as_object().unwrap().keys() {
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "{key}"
            );
        }
        let bare = cloudevent(&view("s", None, Some("own")));
        assert_eq!(bare["correlationid"], "own");
        assert!(bare.get("data").is_none() && bare.get("datacontenttype").is_none());
        assert!(bare.get("sessionid").is_none());
    }

    #[test]
    fn event_dict_is_to_dicts_shape() {
        let d = event_dict(&view("src", Some(json!({"k": 1})), None));
        let keys: Vec<_> = d.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "id",
                "topic",
                "type",
                "timestamp",
                "source",
                "data",
                "metadata",
                "correlation_id",
                "priority"
            ]
        );
        assert_eq!(d["priority"], "HIGH");
        assert_eq!(d["metadata"]["consumers_processed"], json!([]));
    }
}
