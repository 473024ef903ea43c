//! The bus's events as shared-log [`Record`]s, and back.
//!
//! One encoding for every writer (the bus's publish, the `mpm-events hook` command)
//! and every reader (a consumer group's reader, replay, the CLI), so they agree:
//!
//! * `payload`: the event's `data` as JSON text, as the bus packs it;
//! * `metadata`: a JSON object `{"type", "source", "correlation_id", "published_us"}`
//!   (`correlation_id` omitted when there is none). Unknown keys are ignored on
//!   reading, so later versions may add some.
//!
//! It goes through [`StoredEvent`], the row the per-process store already converts
//! Python events to and from.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{LogError, Record, Result};
use crate::storage::StoredEvent;

#[derive(Serialize, Deserialize)]
struct Meta<'a> {
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    source: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    correlation_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    published_us: i64,
}

/// The record of `ev`, published by `publisher` as its `publisher_seq`-th event.
pub fn record_from_stored(ev: &StoredEvent, publisher: &str, publisher_seq: u64) -> Record {
    let meta = Meta {
        event_type: (&*ev.event_type).into(),
        source: (&*ev.source).into(),
        correlation_id: ev.correlation_id.as_deref().map(Into::into),
        published_us: ev.published_us,
    };
    Record {
        event_id: ev.id.clone(),
        topic: ev.topic.to_string(),
        priority: ev.priority,
        timestamp_us: ev.timestamp_us,
        publisher: publisher.to_string(),
        publisher_seq,
        payload: ev.data_json.clone(),
        // NOTE: serializing this struct of strings and an integer cannot fail.
        metadata: serde_json::to_vec(&meta).expect("metadata serializes"),
    }
}

/// The metadata of a record, read in place: `(type, source, correlation_id,
/// published_us)`.
pub type RecordMeta<'a> = (Cow<'a, str>, Cow<'a, str>, Option<Cow<'a, str>>, i64);

/// The metadata of `r` (an error naming the event if it cannot be read).
pub fn record_meta(r: &Record) -> Result<RecordMeta<'_>> {
    let meta: Meta<'_> = serde_json::from_slice(&r.metadata).map_err(|e| {
        LogError::Invalid(format!(
            "entry of event {} has unreadable metadata: {e}",
            r.event_id
        ))
    })?;
    Ok((
        meta.event_type,
        meta.source,
        meta.correlation_id,
        meta.published_us,
    ))
}

/// The payload of `r` as text that is known to hold one JSON object (what an
/// event's `data` must be), checked without building it; it is turned into Python
/// objects only if a consumer reads it. The bytes back (`Err`) when the text is
/// not valid UTF-8, not strict JSON (`NaN`, say), not an object, or may hold an
/// integer beyond 64 bits (which the lazy reader would turn into a float): the
/// caller leaves those to Python's `json`, which keeps them exact.
pub fn payload_object_text(payload: Vec<u8>) -> std::result::Result<String, Vec<u8>> {
    let starts_as_object = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    // NOTE: `IgnoredAny` walks the whole text (so it is valid JSON) without
    // allocating anything for it; a valid JSON text starting with `{` is an object.
    if !starts_as_object
        || has_long_digit_run(&payload)
        || serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err()
    {
        return Err(payload);
    }
    String::from_utf8(payload).map_err(|e| e.into_bytes())
}

/// Whether `text` has 19 or more ASCII digits in a row (anywhere, strings
/// included: a false alarm only costs the eager path).
fn has_long_digit_run(text: &[u8]) -> bool {
    let mut run = 0;
    for &b in text {
        if b.is_ascii_digit() {
            run += 1;
            if run >= 19 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// The event a record holds (`seq` 0: a log entry has its own id).
pub fn stored_from_record(r: &Record) -> Result<StoredEvent> {
    let (event_type, source, correlation_id, published_us) = record_meta(r)?;
    let meta = Meta {
        event_type,
        source,
        correlation_id,
        published_us,
    };
    Ok(StoredEvent {
        seq: 0,
        id: r.event_id.clone(),
        topic: Arc::from(r.topic.as_str()),
        event_type: Arc::from(&*meta.event_type),
        source: Arc::from(&*meta.source),
        timestamp_us: r.timestamp_us,
        published_us: meta.published_us,
        priority: r.priority,
        correlation_id: meta.correlation_id.map(|c| c.into_owned()),
        data_json: r.payload.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(corr: Option<&str>) -> StoredEvent {
        StoredEvent {
            seq: 7,
            id: "e-1".into(),
            topic: "hook.pre_tool".into(),
            event_type: "PreToolUse".into(),
            source: "hook_handler".into(),
            timestamp_us: 1_700_000_000_000_001,
            published_us: 1_700_000_000_000_002,
            priority: 2,
            correlation_id: corr.map(String::from),
            data_json: br#"{"tool":"Bash","n":[1,2]}"#.to_vec(),
        }
    }

    #[test]
    fn round_trips_with_and_without_a_correlation_id() {
        for corr in [Some("c-9"), None] {
            let r = record_from_stored(&ev(corr), "host:1:abc", 42);
            assert_eq!((r.publisher.as_str(), r.publisher_seq), ("host:1:abc", 42));
            assert_eq!((r.topic.as_str(), r.priority), ("hook.pre_tool", 2));
            let back = stored_from_record(&r).unwrap();
            assert_eq!(back, StoredEvent { seq: 0, ..ev(corr) });
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&record_from_stored(&ev(None), "p", 1).metadata).unwrap();
        assert_eq!(
            meta,
            serde_json::json!({"type": "PreToolUse", "source": "hook_handler",
                               "published_us": 1_700_000_000_000_002i64})
        );
    }

    #[test]
    fn payload_text_is_kept_only_for_one_json_object() {
        let ok = |t: &str| payload_object_text(t.as_bytes().to_vec());
        assert_eq!(
            ok(r#" {"a":[1,2.5,"x"]}"#).unwrap(),
            r#" {"a":[1,2.5,"x"]}"#
        );
        assert_eq!(ok(r#"{"n":123456789012345678}"#).unwrap().len(), 24);
        for bad in [
            "[1]",
            "\"s\"",
            "{\"a\":",
            "{} x",
            "",
            r#"{"x":NaN}"#,
            r#"{"big":1234567890123456789012}"#,
        ] {
            assert_eq!(ok(bad).unwrap_err(), bad.as_bytes(), "{bad:?}");
        }
        assert!(payload_object_text(b"{\"a\":\"\xff\"}".to_vec()).is_err());
    }

    #[test]
    fn unreadable_metadata_is_an_error_naming_the_event() {
        let mut r = record_from_stored(&ev(None), "p", 1);
        r.metadata = b"not json".to_vec();
        let e = stored_from_record(&r).unwrap_err().to_string();
        assert!(e.contains("e-1") && e.contains("metadata"), "{e}");
        // Extra keys from a later version are ignored.
        r.metadata = br#"{"type":"T","source":"s","future":1}"#.to_vec();
        let back = stored_from_record(&r).unwrap();
        assert_eq!((&*back.event_type, back.published_us), ("T", 0));
    }
}
