//! [`EventView`]: the fields of an event copied for Rust consumers, made while the
//! publisher holds the GIL, with the names consecutive events share.

use crate::event::EventView;
use crate::python::convert::json::*;
use crate::python::model::accepted::{hook_source, AcceptedEvent, Origin, PartsData};
use crate::python::model::event::Payload;
use crate::rules::Projection;
use chrono::{DateTime, Utc};
use pyo3::prelude::*;
use serde_json::Value;
use std::sync::Arc;

/// Recently seen field texts, so consecutive events share one allocation.
#[derive(Default)]
pub struct ViewMemo {
    pub(crate) type_: Option<Arc<str>>,
    pub(crate) source: Option<Arc<str>>,
}

/// `text` as an `Arc<str>`, shared with the previous call's when it is the same text.
pub(crate) fn interned(slot: &mut Option<Arc<str>>, text: &str) -> Arc<str> {
    match slot {
        Some(s) if **s == *text => s.clone(),
        _ => {
            let s: Arc<str> = text.into();
            *slot = Some(s.clone());
            s
        }
    }
}

/// How much of the payload a view copies.
#[derive(Clone, Copy)]
pub enum DataCopy<'a> {
    /// None of it.
    Nothing,
    /// All of it (a Rust sink reads it).
    Whole,
    /// What consumers' rules read of it, when it is packed JSON text: the text
    /// is parsed into the cut-down value only (see [`Projection`]); a payload
    /// still a Python object is copied whole, as with [`DataCopy::Whole`].
    ForRules(&'a Projection),
}

impl DataCopy<'_> {
    /// Whether the view's payload (if copied) is the whole payload.
    pub fn is_whole(&self) -> bool {
        !matches!(self, DataCopy::ForRules(_))
    }
}

/// Copies an event's fields (and, if `with_data`, its payload) for sinks.
pub fn build_view(py: Python<'_>, eref: &AcceptedEvent, with_data: bool) -> PyResult<EventView> {
    let data = if with_data {
        DataCopy::Whole
    } else {
        DataCopy::Nothing
    };
    build_view_with(py, eref, data, &mut ViewMemo::default())
}

/// [`build_view`] copying `data` of the payload, sharing field texts with the
/// previous event through `memo`.
pub fn build_view_with(
    py: Python<'_>,
    eref: &AcceptedEvent,
    data: DataCopy<'_>,
    memo: &mut ViewMemo,
) -> PyResult<EventView> {
    let convert = |converted: Result<Value, String>| match converted {
        Ok(v) => (Some(v), None),
        Err(err) => (None, Some(err)),
    };
    let with_data = !matches!(data, DataCopy::Nothing);
    // NOTE: packed text is our own JSON, so a projection parses it as the whole
    // parse would; a Python object is converted whole (its conversion can fail,
    // and then the rules see no payload, as with the whole copy).
    let parse = |json: &str| match data {
        DataCopy::ForRules(p) => p.parse(json).map_err(|err| err.to_string()),
        _ => serde_json::from_str(json).map_err(|err| err.to_string()),
    };
    let e = match eref.origin(py) {
        Origin::Object(e) => e.borrow(py),
        Origin::Parts(p) => {
            let (data, data_error) = if with_data {
                convert(match &p.data {
                    PartsData::Packed(json) => parse(json),
                    PartsData::Object(o) => to_json(o.bind(py), 0),
                })
            } else {
                (None, None)
            };
            return Ok(EventView {
                id: crate::python::convert::text::uuid_text(&p.id).into(),
                topic: eref.topic.as_ref().into(),
                event_type: interned(&mut memo.type_, &p.type_.bind(py).to_cow()?),
                source: interned(&mut memo.source, &hook_source(py).to_cow()?),
                timestamp: p.timestamp(),
                data,
                data_error,
                correlation_id: match &p.correlation_id {
                    Some(c) => Some(c.bind(py).to_cow()?.into_owned()),
                    None => None,
                },
                priority: eref.priority,
                meta: eref.meta.clone(),
            });
        }
    };
    let ts: DateTime<Utc> = e.timestamp.to_utc();
    let (data, data_error) = if with_data {
        convert(match &e.data {
            Payload::Packed(json, _) => parse(json),
            Payload::Object(o) => to_json(o.bind(py), 0),
        })
    } else {
        (None, None)
    };
    Ok(EventView {
        id: e.id.text(py).into(),
        topic: eref.topic.as_ref().into(),
        event_type: interned(&mut memo.type_, &e.type_.bind(py).to_cow()?),
        source: interned(&mut memo.source, &e.source.bind(py).to_cow()?),
        timestamp: ts,
        data,
        data_error,
        correlation_id: match &e.correlation_id {
            Some(c) => Some(c.bind(py).to_cow()?.into_owned()),
            None => None,
        },
        priority: e.priority,
        meta: eref.meta.clone(),
    })
}

/// [`build_view_with`] for a payload the rules already cut down from the
/// publisher's object before it was packed (`projected`, see
/// [`crate::python::convert::project::project_py`]): the packed text is not parsed.
pub fn build_view_projected(
    py: Python<'_>,
    eref: &AcceptedEvent,
    projected: Result<Value, String>,
    memo: &mut ViewMemo,
) -> PyResult<EventView> {
    let mut view = build_view_with(py, eref, DataCopy::Nothing, memo)?;
    match projected {
        Ok(v) => view.data = Some(v),
        Err(err) => view.data_error = Some(err),
    }
    Ok(view)
}

/// The payload while it is still the publisher's Python object (not yet packed).
pub fn payload_object(py: Python<'_>, eref: &AcceptedEvent) -> PyResult<Option<Py<PyAny>>> {
    Ok(match eref.origin(py) {
        Origin::Object(e) => match &e.borrow(py).data {
            Payload::Object(o) => Some(o.clone_ref(py)),
            Payload::Packed(..) => None,
        },
        Origin::Parts(p) => match &p.data {
            PartsData::Object(o) => Some(o.clone_ref(py)),
            PartsData::Packed(_) => None,
        },
    })
}

/// An accepted event's payload as JSON (for schema validation), or why it is not JSON.
pub fn payload_json(py: Python<'_>, eref: &AcceptedEvent) -> Result<Value, String> {
    match eref.origin(py) {
        Origin::Object(e) => event_payload_json(py, &e.borrow(py)),
        Origin::Parts(p) => match &p.data {
            PartsData::Packed(json) => serde_json::from_str(json).map_err(|err| err.to_string()),
            PartsData::Object(o) => to_json(o.bind(py), 0),
        },
    }
}

/// An `Event`'s payload as JSON, or why it is not JSON.
pub fn event_payload_json(
    py: Python<'_>,
    e: &crate::python::model::event::Event,
) -> Result<Value, String> {
    match &e.data {
        Payload::Packed(json, _) => serde_json::from_str(json).map_err(|err| err.to_string()),
        Payload::Object(o) => to_json(o.bind(py), 0),
    }
}
