//! Datetimes between Python and Rust: UTC conversion (fast for `timezone.utc`),
//! ISO 8601 parsing.

use chrono::{DateTime, Utc};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static FROMISOFORMAT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(crate) fn to_py_datetime<'py>(
    py: Python<'py>,
    dt: &Option<DateTime<Utc>>,
) -> PyResult<Bound<'py, PyAny>> {
    match dt {
        Some(dt) => dt.into_pyobject(py).map(|b| b.into_any()),
        None => Ok(py.None().into_bound(py)),
    }
}

pub(crate) fn read_datetime(
    obj: &Bound<'_, PyAny>,
    field: &str,
) -> PyResult<Option<DateTime<Utc>>> {
    if obj.is_none() {
        return Ok(None);
    }
    if let Some(dt) = datetime_utc(obj) {
        return Ok(Some(dt));
    }
    if let Ok(s) = obj.extract::<String>() {
        let parsed = parse_timestamp(obj.py(), &s)?;
        return read_datetime(&parsed, field);
    }
    Err(PyTypeError::new_err(format!(
        "EventMetadata.{field} must be a datetime or None"
    )))
}

pub(crate) fn parse_timestamp<'py>(py: Python<'py>, s: &str) -> PyResult<Bound<'py, PyAny>> {
    let f = FROMISOFORMAT
        .import(py, "datetime", "datetime")?
        .getattr("fromisoformat")?;
    f.call1((s,)).map_err(|e| {
        PyValueError::new_err(format!(
            "Event.timestamp {s:?} is not an ISO 8601 datetime: {e}"
        ))
    })
}

static UTC_TZ: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A `datetime` in UTC; naive datetimes are taken as UTC (stored and published
/// timestamps are UTC, like the original's isoformat round trip). `None` if `t` is not
/// a datetime.
pub(crate) fn datetime_utc(t: &Bound<'_, PyAny>) -> Option<DateTime<Utc>> {
    if let Some(dt) = utc_fast(t) {
        return Some(dt);
    }
    t.extract::<DateTime<chrono::FixedOffset>>()
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| t.extract::<chrono::NaiveDateTime>().map(|n| n.and_utc()))
        .ok()
}

/// A datetime whose tzinfo is `datetime.timezone.utc` (what `datetime.now(UTC)` makes),
/// converted with one method call; `None` for any other datetime.
///
/// NOTE: under the stable ABI pyo3's chrono conversion reads the fields and the
/// offset through several Python calls: it was a fifth of `publish_batch`'s time per
/// event into a Rust consumer (W6). `timestamp()` is exact to the microsecond here:
/// Python rounds the exact value to the nearest double, whose error (< 0.25 us for
/// dates before 2100) the rounding below removes.
pub(crate) fn utc_fast(t: &Bound<'_, PyAny>) -> Option<DateTime<Utc>> {
    let py = t.py();
    let utc = UTC_TZ
        .get_or_try_init(py, || {
            py.import("datetime")?
                .getattr("timezone")?
                .getattr("utc")
                .map(Bound::unbind)
        })
        .ok()?;
    if !t.getattr(pyo3::intern!(py, "tzinfo")).ok()?.is(utc) {
        return None;
    }
    let secs: f64 = t
        .call_method0(pyo3::intern!(py, "timestamp"))
        .ok()?
        .extract()
        .ok()?;
    DateTime::from_timestamp_micros((secs * 1e6).round() as i64)
}
