//! The Claude MPM dashboard's inbound protocol: what its server
//! (claude-mpm 5.9.10's `UnifiedMonitorServer`) handles from a Socket.IO client.
//!
//! The server handles `claude_event` (not the `hook_event`, `system_event`, ...
//! names it sends *to* browsers) and reads `type`, `subtype`, `timestamp`,
//! `session_id` and `source` from the top level of the payload; a payload
//! without `subtype` shows as "unknown", one without `session_id` in no session.
//! claude-mpm's own hook handler sends the normalized event of
//! `services/socketio/event_normalizer.py` (`NormalizedEvent.to_dict()`):
//! `{event: "mpm_event", source, type, subtype, timestamp, data,
//! correlation_id?, session_id?, cwd?}`. [`payload`] builds that shape from one
//! of our events, plus our `id` and `topic`.
//!
//! `type` / `subtype` ([`classify`]) give what claude-mpm's hook handler gives
//! for the same hook (`hooks/claude_hooks/event_handlers.py`), and sensible
//! pairs for everything else, never "unknown":
//!
//! | our event (topic, type)                         | `type`        | `subtype`                       |
//! |-------------------------------------------------|---------------|---------------------------------|
//! | `hook.*`, `UserPromptSubmit`                    | `hook`        | `user_prompt`                   |
//! | `hook.*`, `PreToolUse`                          | `hook`        | `pre_tool`                      |
//! | `hook.*`, `PostToolUse`                         | `hook`        | `post_tool`                     |
//! | `hook.*`, `Notification`                        | `hook`        | `notification`                  |
//! | `hook.*`, `Stop`                                | `hook`        | `stop`                          |
//! | `hook.*`, `SubagentStart` / `SubagentStop`      | `hook`        | `subagent_start` / `subagent_stop` |
//! | `hook.*`, `SessionStart` / `SessionEnd`         | `hook`        | `session_start` / `session_end` |
//! | `hook.*`, `AssistantResponse` (`publish_response`) | `hook`     | `assistant_response`            |
//! | `hook.*`, `ToolUse` (`publish_tool_use`)        | `hook`        | `post_tool` when `data.result` is set (not null), else `pre_tool` |
//! | `hook.*`, `Subagent<X>` (`publish_subagent_event`) | `hook`     | `subagent_<x>`                  |
//! | `hook.*`, `Error` (`HookEventProducer.publish_error`) | `error` | `hook_error`                    |
//! | `hook.*`, any other type                        | `hook`        | the type in snake case          |
//! | `ServiceStartup` / `ServiceShutdown`            | `system`      | `startup` / `shutdown`          |
//! | `HealthStatus`                                  | `system`      | `health`                        |
//! | `ConfigChange`                                  | `system`      | `config_change`                 |
//! | `PerformanceMetrics`                            | `performance` | `metrics`                       |
//! | `SystemError`                                   | `error`       | `system_error`                  |
//! | `SystemWarning`                                 | `system`      | `warning`                       |
//! | any other topic `a.b.c`, type `T`               | `a`           | `T` in snake case               |
//!
//! A type that gives no subtype (empty, or one that would read "unknown")
//! falls back to the rest of the topic (`a.b.c` -> `b_c`), then to `generic`.
//!
//! Context fields ([`context`]): `session_id` (or `sessionId`), `cwd` (or
//! `working_directory`, `workingDirectory`) and `correlation_id` are looked up
//! in the event's data, at its top level first, then one level down in its
//! nested objects in key order (so `publish_tool_use`'s `params`, `publish_error`'s
//! `details`, `SystemEventProducer`'s `config` / `details` / `context` /
//! `metrics` are searched); the event's own `correlation_id` wins over one in
//! its data. Only non-empty strings count.

use serde_json::{Map, Value};

/// The value of the normalized event's `event` field (the normalizer's constant).
pub const NORMALIZED_EVENT: &str = "mpm_event";

/// Claude Code's hook names and the subtypes claude-mpm's hook handler emits
/// for them (`hook_handler.py`'s routing table, `event_handlers.py`).
const CLAUDE_HOOKS: [(&str, &str); 11] = [
    ("UserPromptSubmit", "user_prompt"),
    ("PreToolUse", "pre_tool"),
    ("PostToolUse", "post_tool"),
    ("Notification", "notification"),
    ("Stop", "stop"),
    ("SubagentStart", "subagent_start"),
    ("SubagentStop", "subagent_stop"),
    ("SessionStart", "session_start"),
    ("SessionEnd", "session_end"),
    ("AssistantResponse", "assistant_response"),
    ("PreCompact", "pre_compact"),
];

/// The event types of our `SystemEventProducer` (any topic).
const SYSTEM_TYPES: [(&str, &str, &str); 7] = [
    ("ServiceStartup", "system", "startup"),
    ("ServiceShutdown", "system", "shutdown"),
    ("HealthStatus", "system", "health"),
    ("ConfigChange", "system", "config_change"),
    ("PerformanceMetrics", "performance", "metrics"),
    ("SystemError", "error", "system_error"),
    ("SystemWarning", "system", "warning"),
];

/// The dashboard's `(type, subtype)` for an event with this topic, type and
/// payload (see the module docs for the table).
pub fn classify(topic: &str, event_type: &str, data: Option<&Value>) -> (String, String) {
    let first = topic.split('.').next().unwrap_or(topic);
    if first == "hook" {
        if let Some((_, sub)) = CLAUDE_HOOKS.iter().find(|(name, _)| *name == event_type) {
            return ("hook".into(), (*sub).into());
        }
        match event_type {
            "ToolUse" => {
                let has_result = data
                    .and_then(|d| d.get("result"))
                    .is_some_and(|r| !r.is_null());
                let sub = if has_result { "post_tool" } else { "pre_tool" };
                return ("hook".into(), sub.into());
            }
            "Error" => return ("error".into(), "hook_error".into()),
            _ => {}
        }
        return ("hook".into(), generic_subtype(topic, event_type));
    }
    if let Some((_, kind, sub)) = SYSTEM_TYPES.iter().find(|(name, ..)| *name == event_type) {
        return ((*kind).into(), (*sub).into());
    }
    (first.to_string(), generic_subtype(topic, event_type))
}

/// `event_type` in snake case; else the topic after its first segment; else
/// `generic`. Never empty, never `unknown`.
fn generic_subtype(topic: &str, event_type: &str) -> String {
    let from_type = snake_case(event_type);
    if !from_type.is_empty() && from_type != "unknown" {
        return from_type;
    }
    let rest = topic.split_once('.').map(|(_, r)| snake_case(r));
    match rest {
        Some(r) if !r.is_empty() && r != "unknown" => r,
        _ => "generic".into(),
    }
}

/// `PreToolUse` -> `pre_tool_use`, `HTTPRequest` -> `http_request`,
/// `tool.start` / `tool-start` -> `tool_start`; already snake-case text stays.
pub fn snake_case(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            if c.is_uppercase() {
                let prev = i.checked_sub(1).map(|j| chars[j]);
                let next = chars.get(i + 1).copied();
                let boundary = match prev {
                    Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                    Some(p) if p.is_uppercase() => next.is_some_and(char::is_lowercase),
                    _ => false,
                };
                if boundary && !out.is_empty() && !out.ends_with('_') {
                    out.push('_');
                }
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// The first non-empty string under any of `keys` in `data`: its top level
/// first, then each nested object one level down, in key order.
pub fn context(data: Option<&Value>, keys: &[&str]) -> Option<String> {
    let obj = data?.as_object()?;
    let find = |m: &Map<String, Value>| {
        keys.iter()
            .filter_map(|k| m.get(*k).and_then(Value::as_str))
            .find(|s| !s.is_empty())
            .map(str::to_string)
    };
    find(obj).or_else(|| obj.values().filter_map(Value::as_object).find_map(find))
}

/// The keys a session id is found under.
pub const SESSION_KEYS: [&str; 2] = ["session_id", "sessionId"];
/// The keys a working directory is found under.
pub const CWD_KEYS: [&str; 3] = ["cwd", "working_directory", "workingDirectory"];
/// The key a correlation id is found under in the data.
pub const CORRELATION_KEYS: [&str; 1] = ["correlation_id"];

/// The fields of one event that the dashboard payload is made of.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    /// Our event id.
    pub id: &'a str,
    /// Dotted topic.
    pub topic: &'a str,
    /// Our event type (`ToolUse`, `PreToolUse`, ...).
    pub event_type: &'a str,
    /// Who produced it.
    pub source: &'a str,
    /// ISO 8601 UTC timestamp.
    pub timestamp_iso: &'a str,
    /// The event's own correlation id.
    pub correlation_id: Option<&'a str>,
}

/// [`payload`] of an event as a Rust sink sees it (its fields and data).
pub fn payload_of(v: &crate::event::EventView) -> Value {
    let timestamp = crate::sinks::dead_letter::iso(&v.timestamp);
    payload(
        &EventFields {
            id: &v.id,
            topic: &v.topic,
            event_type: &v.event_type,
            source: &v.source,
            timestamp_iso: &timestamp,
            correlation_id: v.correlation_id.as_deref(),
        },
        v.data.clone(),
    )
}

/// The normalized event the dashboard's server handles as `claude_event`:
/// `{event, source, type, subtype, timestamp, data, correlation_id?,
/// session_id?, cwd?, id, topic}` (keys in this order; the three optional ones
/// only when known). `data` is the event's payload (`{}` when it has none).
pub fn payload(f: &EventFields<'_>, data: Option<Value>) -> Value {
    let (kind, subtype) = classify(f.topic, f.event_type, data.as_ref());
    let correlation_id = f
        .correlation_id
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .or_else(|| context(data.as_ref(), &CORRELATION_KEYS));
    let session_id = context(data.as_ref(), &SESSION_KEYS);
    let cwd = context(data.as_ref(), &CWD_KEYS);
    let mut m = Map::with_capacity(11);
    m.insert("event".into(), NORMALIZED_EVENT.into());
    m.insert("source".into(), f.source.into());
    m.insert("type".into(), kind.into());
    m.insert("subtype".into(), subtype.into());
    m.insert("timestamp".into(), f.timestamp_iso.into());
    m.insert(
        "data".into(),
        data.filter(|d| !d.is_null())
            .unwrap_or_else(|| Value::Object(Map::new())),
    );
    for (key, value) in [
        ("correlation_id", correlation_id),
        ("session_id", session_id),
        ("cwd", cwd),
    ] {
        if let Some(v) = value {
            m.insert(key.into(), v.into());
        }
    }
    m.insert("id".into(), f.id.into());
    m.insert("topic".into(), f.topic.into());
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sub(topic: &str, ty: &str, data: Value) -> (String, String) {
        classify(topic, ty, Some(&data))
    }

    fn pair(kind: &str, sub: &str) -> (String, String) {
        (kind.into(), sub.into())
    }

    #[test]
    fn claude_code_hooks_get_the_hook_handlers_subtypes() {
        // publish_raw_hook_event(name, ...) puts them on these topics.
        for (name, topic, want) in [
            ("UserPromptSubmit", "hook.generic", "user_prompt"),
            ("PreToolUse", "hook.tool", "pre_tool"),
            ("PostToolUse", "hook.tool", "post_tool"),
            ("Notification", "hook.generic", "notification"),
            ("Stop", "hook.generic", "stop"),
            ("SubagentStart", "hook.subagent", "subagent_start"),
            ("SubagentStop", "hook.subagent", "subagent_stop"),
            ("SessionStart", "hook.generic", "session_start"),
            ("SessionEnd", "hook.generic", "session_end"),
            ("AssistantResponse", "hook.response", "assistant_response"),
            ("PreCompact", "hook.generic", "pre_compact"),
        ] {
            assert_eq!(sub(topic, name, json!({})), pair("hook", want), "{name}");
        }
    }

    #[test]
    fn hook_producer_methods() {
        let tool = |result: Value| json!({"tool": "Read", "params": {}, "result": result});
        assert_eq!(
            sub("hook.tool", "ToolUse", tool(json!("x"))),
            pair("hook", "post_tool")
        );
        assert_eq!(
            sub("hook.tool", "ToolUse", tool(json!(""))),
            pair("hook", "post_tool")
        );
        assert_eq!(
            sub("hook.tool", "ToolUse", tool(Value::Null)),
            pair("hook", "pre_tool")
        );
        assert_eq!(
            sub("hook.tool", "ToolUse", json!({})),
            pair("hook", "pre_tool")
        );
        assert_eq!(
            classify("hook.tool", "ToolUse", None),
            pair("hook", "pre_tool")
        );
        assert_eq!(
            sub("hook.subagent.start", "SubagentStart", json!({})),
            pair("hook", "subagent_start")
        );
        assert_eq!(
            sub("hook.subagent.progress", "SubagentProgress", json!({})),
            pair("hook", "subagent_progress")
        );
        assert_eq!(
            sub("hook.error", "Error", json!({})),
            pair("error", "hook_error")
        );
        assert_eq!(
            sub("hook.response", "AssistantResponse", json!({})),
            pair("hook", "assistant_response")
        );
        assert_eq!(
            sub("hook.generic", "MyHook", json!({})),
            pair("hook", "my_hook")
        );
        // The Claude hook names count on hook topics only ("Stop" is a common word).
        assert_eq!(sub("build.step", "Stop", json!({})), pair("build", "stop"));
        assert_eq!(
            sub("other.x", "ToolUse", json!({})),
            pair("other", "tool_use")
        );
    }

    #[test]
    fn system_producer_methods() {
        for (topic, ty, want) in [
            (
                "system.lifecycle.startup",
                "ServiceStartup",
                ("system", "startup"),
            ),
            (
                "system.lifecycle.shutdown",
                "ServiceShutdown",
                ("system", "shutdown"),
            ),
            ("system.health", "HealthStatus", ("system", "health")),
            ("system.config", "ConfigChange", ("system", "config_change")),
            (
                "system.performance",
                "PerformanceMetrics",
                ("performance", "metrics"),
            ),
            ("system.error", "SystemError", ("error", "system_error")),
            ("system.warning", "SystemWarning", ("system", "warning")),
        ] {
            assert_eq!(sub(topic, ty, json!({})), pair(want.0, want.1), "{ty}");
        }
    }

    #[test]
    fn other_topics_never_read_unknown() {
        assert_eq!(sub("misc.thing", "T3", json!({})), pair("misc", "t3"));
        assert_eq!(
            sub("agent.delegation", "", json!({})),
            pair("agent", "delegation")
        );
        assert_eq!(
            sub("cli.cmd.run", "unknown", json!({})),
            pair("cli", "cmd_run")
        );
        assert_eq!(sub("single", "", json!({})), pair("single", "generic"));
        assert_eq!(sub("hook", "", json!({})), pair("hook", "generic"));
        assert_eq!(sub("hook.x", "Unknown", json!({})), pair("hook", "x"));
        assert_eq!(
            sub("system.heartbeat", "", json!({})),
            pair("system", "heartbeat")
        );
    }

    #[test]
    fn snake_case_cases() {
        for (input, want) in [
            ("PreToolUse", "pre_tool_use"),
            ("HTTPRequest", "http_request"),
            ("getHTTP2Response", "get_http2_response"),
            ("already_snake", "already_snake"),
            ("tool.start", "tool_start"),
            ("tool-start", "tool_start"),
            ("  Spaced  Out ", "spaced_out"),
            ("T3", "t3"),
            ("", ""),
            ("...", ""),
        ] {
            assert_eq!(snake_case(input), want, "{input:?}");
        }
    }

    #[test]
    fn context_top_level_then_one_level_down() {
        let d = json!({"session_id": "top", "params": {"session_id": "nested"}});
        assert_eq!(context(Some(&d), &SESSION_KEYS).as_deref(), Some("top"));
        let d =
            json!({"tool": "Read", "params": {"sessionId": "p"}, "result": {"session_id": "r"}});
        assert_eq!(context(Some(&d), &SESSION_KEYS).as_deref(), Some("p"));
        let d = json!({"session_id": "", "details": {"session_id": "d"}});
        assert_eq!(context(Some(&d), &SESSION_KEYS).as_deref(), Some("d"));
        let d = json!({"a": {"b": {"session_id": "too deep"}}, "session_id": 7});
        assert_eq!(context(Some(&d), &SESSION_KEYS), None);
        let d = json!({"working_directory": "/w"});
        assert_eq!(context(Some(&d), &CWD_KEYS).as_deref(), Some("/w"));
        assert_eq!(context(None, &CWD_KEYS), None);
        assert_eq!(context(Some(&json!([1])), &CWD_KEYS), None);
    }

    fn fields<'a>(topic: &'a str, ty: &'a str, corr: Option<&'a str>) -> EventFields<'a> {
        EventFields {
            id: "id-1",
            topic,
            event_type: ty,
            source: "hook_handler",
            timestamp_iso: "2026-12-01T19:19:13.620948+00:00",
            correlation_id: corr,
        }
    }

    #[test]
    fn payload_is_the_normalized_shape() {
        let data = json!({"hook_event_name": "PreToolUse", "session_id": "s-1", "cwd": "/p",
                          "tool_name": "Read"});
        let p = payload(
            &fields("hook.tool", "PreToolUse", Some("c-1")),
            Some(data.clone()),
        );
        let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "event",
                "source",
                "type",
                "subtype",
                "timestamp",
                "data",
                "correlation_id",
                "session_id",
                "cwd",
                "id",
                "topic"
            ]
        );
        assert_eq!(
            p,
            json!({"event": "mpm_event", "source": "hook_handler", "type": "hook",
                   "subtype": "pre_tool", "timestamp": "2026-12-01T19:19:13.620948+00:00",
                   "data": data, "correlation_id": "c-1", "session_id": "s-1", "cwd": "/p",
                   "id": "id-1", "topic": "hook.tool"})
        );
    }

    #[test]
    fn payload_leaves_out_what_is_not_known() {
        let p = payload(&fields("system.health", "HealthStatus", None), None);
        let obj = p.as_object().unwrap();
        assert_eq!(obj["data"], json!({}));
        assert_eq!(
            (&obj["type"], &obj["subtype"]),
            (&json!("system"), &json!("health"))
        );
        for k in ["session_id", "correlation_id", "cwd"] {
            assert!(!obj.contains_key(k), "{k}");
        }
    }

    #[test]
    fn correlation_id_from_the_event_first_then_the_data() {
        let data = json!({"correlation_id": "in-data"});
        let own = payload(&fields("hook.x", "X", Some("own")), Some(data.clone()));
        assert_eq!(own["correlation_id"], "own");
        let from_data = payload(&fields("hook.x", "X", None), Some(data.clone()));
        assert_eq!(from_data["correlation_id"], "in-data");
        let empty_own = payload(&fields("hook.x", "X", Some("")), Some(data));
        assert_eq!(empty_own["correlation_id"], "in-data");
    }
}
