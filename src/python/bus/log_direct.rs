//! A shared log without a bus: `_log_append`, `_log_range`, `_log_read`, `_log_ack`.
//!
//! Synchronous functions for processes that only write a few events and exit (the
//! `mpm-events hook` command), and for tests and benchmarks that read a log back:
//! no `EventBus`, no asyncio, no Tokio runtime. Each call holds the GIL only to
//! convert its arguments and results; the log work (open, transaction, fsync) runs
//! with the GIL released, so a deadline timer on another Python thread can still run.
//!
//! Events become records through [`crate::backend::codec`], the one encoding the
//! bus's readers decode. Handles are opened once per process and URL (and
//! durability) and kept.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::backend::codec::{record_from_stored, stored_from_record};
use crate::backend::sqlite::{SqliteLog, SqliteOptions};
use crate::backend::{Durability, EntryId, LogError, Record, SharedLog, StartAt};
use crate::python::convert::json::{pack_json, to_json, unpack_json};
use crate::python::model::{Event, Payload};
use crate::python::runtime::errors::{event_error, topic_error, PersistenceError};
use crate::storage::StoredEvent;

/// A URL and whether its handle fsyncs every commit (`Durability::Sync`).
type HandleKey = (String, bool);

/// Open handles of this process, by URL and durability.
fn handles() -> &'static Mutex<HashMap<HandleKey, Arc<SqliteLog>>> {
    static HANDLES: OnceLock<Mutex<HashMap<HandleKey, Arc<SqliteLog>>>> = OnceLock::new();
    HANDLES.get_or_init(Default::default)
}

/// This process's publisher id and counter (per-publisher order in the log).
fn publisher() -> &'static (String, Mutex<u64>) {
    static PUBLISHER: OnceLock<(String, Mutex<u64>)> = OnceLock::new();
    PUBLISHER.get_or_init(|| (crate::backend::new_instance_id(), Mutex::new(0)))
}

/// A `LogError` as Python sees it: bad arguments are `ValueError`, everything about
/// the log itself a `PersistenceError` (whose message names the path).
fn log_error(e: LogError) -> PyErr {
    match e {
        LogError::Invalid(msg) => PyValueError::new_err(msg),
        other => PersistenceError::new_err(other.to_string()),
    }
}

fn parse_durability(durability: Option<&str>) -> PyResult<Option<Durability>> {
    match durability {
        None => Ok(None),
        Some("sync") => Ok(Some(Durability::Sync)),
        Some("normal") => Ok(Some(Durability::Normal)),
        Some(other) => Err(PyValueError::new_err(format!(
            "durability must be \"sync\" or \"normal\", not {other:?}"
        ))),
    }
}

/// The options of `url` (`ValueError` for a URL that is not a SQLite log's).
fn options(url: &str, durability: Option<Durability>) -> PyResult<SqliteOptions> {
    let mut opts = SqliteOptions::from_url(url).map_err(|e| match e {
        LogError::Invalid(msg) => PyValueError::new_err(msg),
        other => log_error(other),
    })?;
    if let Some(d) = durability {
        opts.durability = d;
    }
    Ok(opts)
}

/// How long a call retries a log that answers "database is locked" at once.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(10);

/// Runs `attempt` again while the log answers `SQLITE_BUSY` ("database is locked"),
/// for up to [`BUSY_RETRY_FOR`], with short random pauses. Call without the GIL.
///
/// NOTE: SQLite returns `SQLITE_BUSY` without waiting in its busy handler in a few
/// cases (while another connection recovers the WAL or sets up a new file): of 50
/// processes appending to a new log at once, now and then one failed so. A failed
/// open leaves no handle, a busy append is rolled back (nothing of it committed), so
/// both are safe to repeat.
fn retry_busy<T>(mut attempt: impl FnMut() -> Result<T, LogError>) -> Result<T, LogError> {
    let began = Instant::now();
    loop {
        match attempt() {
            Err(LogError::Backend { detail, .. })
                if detail.contains("database is locked") && began.elapsed() < BUSY_RETRY_FOR =>
            {
                std::thread::sleep(Duration::from_micros(500 + fastrand::u64(0..2_000)));
            }
            other => return other,
        }
    }
}

/// The process's handle on the log (opened on first use). Call without the GIL.
fn handle(url: &str, opts: SqliteOptions) -> Result<Arc<SqliteLog>, LogError> {
    let key = (url.to_string(), opts.durability == Durability::Sync);
    if let Some(h) = handles().lock().get(&key) {
        return Ok(h.clone());
    }
    // NOTE: opened outside the map's lock: an open can wait for another process's
    // schema creation; two threads racing here open two handles and one is kept.
    let log = Arc::new(SqliteLog::open(opts)?);
    Ok(handles().lock().entry(key).or_insert(log).clone())
}

/// One event, given as an `Event` (ours or any object with its attributes) or a dict
/// of `Event`'s constructor arguments, as the row the codec encodes.
fn stored_event(py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<StoredEvent> {
    let event: Bound<'_, Event> = if let Ok(e) = item.cast::<Event>() {
        e.clone()
    } else if let Ok(d) = item.cast::<PyDict>() {
        py.get_type::<Event>()
            .call((), Some(d))?
            .cast_into::<Event>()
            .map_err(|_| event_error("Event(**dict) did not make an Event"))?
    } else if item.is_none() {
        return Err(event_error(
            "_log_append() expected Events or dicts, got None",
        ));
    } else {
        Bound::new(py, Event::from_foreign(item)?)?
    };
    let e = event.borrow();
    let topic = e.topic_str(py)?;
    crate::topic::validate_topic(&topic).map_err(topic_error)?;
    let data_json = match &e.data {
        Payload::Packed(json, _) => json.as_bytes().to_vec(),
        Payload::Object(o) => match pack_json(o.bind(py)) {
            Some(json) => json.as_bytes().to_vec(),
            None => {
                let value = to_json(o.bind(py), 0).map_err(|msg| {
                    event_error(format!("event data cannot be stored as JSON: {msg}"))
                })?;
                serde_json::to_vec(&value).map_err(|err| event_error(err.to_string()))?
            }
        },
    };
    Ok(StoredEvent {
        seq: 0,
        id: e.id_str(py)?,
        topic: topic.into(),
        event_type: e.type_.bind(py).to_cow()?.as_ref().into(),
        source: e.source.bind(py).to_cow()?.as_ref().into(),
        timestamp_us: e.timestamp.to_utc().timestamp_micros(),
        published_us: chrono::Utc::now().timestamp_micros(),
        priority: e.priority,
        correlation_id: match &e.correlation_id {
            Some(c) => Some(c.bind(py).to_cow()?.into_owned()),
            None => None,
        },
        data_json,
    })
}

/// `stored` as records of this process's publisher, appended by `append`; the
/// publisher's counter moves on only when `append` succeeded.
fn append_as_publisher(
    stored: &[StoredEvent],
    append: impl FnOnce(&[Record]) -> Result<Vec<EntryId>, LogError>,
) -> Result<Vec<EntryId>, LogError> {
    let (who, counter) = publisher();
    // NOTE: the counter is held across the append so that this process's
    // publisher_seq grows in log order, as per-publisher order promises.
    let mut seq = counter.lock();
    let records: Vec<Record> = stored
        .iter()
        .enumerate()
        .map(|(i, ev)| record_from_stored(ev, who, *seq + 1 + i as u64))
        .collect();
    let ids = append(&records)?;
    *seq += records.len() as u64;
    Ok(ids)
}

/// Appends `events` to the shared log at `url` in one transaction and returns
/// their entry ids.
#[pyfunction]
#[pyo3(signature = (url, events, *, durability=None, default_spool=false))]
fn _log_append(
    py: Python<'_>,
    url: &str,
    events: &Bound<'_, PyAny>,
    durability: Option<&str>,
    default_spool: bool,
) -> PyResult<Vec<String>> {
    let durability = parse_durability(durability)?;
    let mut stored = Vec::new();
    for item in events.try_iter()? {
        stored.push(stored_event(py, &item?)?);
    }
    if is_redis(url) {
        return append_redis(py, url, &stored, default_spool);
    }
    let opts = options(url, durability)?;
    let ids = py
        .detach(|| -> Result<Vec<EntryId>, LogError> {
            let log = retry_busy(|| handle(url, opts.clone()))?;
            append_as_publisher(&stored, |records| retry_busy(|| log.append(records)))
        })
        .map_err(log_error)?;
    Ok(ids.into_iter().map(|id| id.to_string()).collect())
}

// ------------------------------------------------------------ Redis (+ spool)

fn is_redis(url: &str) -> bool {
    [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "rediss+cluster://",
    ]
    .iter()
    .any(|s| url.starts_with(s))
}

/// Connect and response timeout of a hook's Redis commands unless the URL says
/// `timeout=`: short, so an unreachable server leaves time to spool within the hook's
/// deadline (2 s by default).
const DIRECT_REDIS_TIMEOUT: Duration = Duration::from_millis(750);

/// Open Redis handles by URL and whether `default_spool` was asked for.
type RedisHandles = Mutex<HashMap<(String, bool), Arc<dyn SharedLog>>>;

/// Redis handles of this process (with their spool when configured), by URL.
fn redis_handles() -> &'static RedisHandles {
    static HANDLES: OnceLock<RedisHandles> = OnceLock::new();
    HANDLES.get_or_init(Default::default)
}

/// The process's handle on the Redis log at `url`; with `default_spool` and no
/// `spool=` in the URL, spooling to `spool=default`. No background forwarder: a
/// direct caller forwards what is spooled in its next append. Call without the GIL.
fn redis_handle(url: &str, default_spool: bool) -> Result<Arc<dyn SharedLog>, LogError> {
    let key = (url.to_string(), default_spool);
    if let Some(h) = redis_handles().lock().get(&key) {
        return Ok(h.clone());
    }
    let mut opts = crate::backend::redis::RedisOptions::from_url(url)?;
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let says = |name: &str| query.split('&').any(|p| p.split('=').next() == Some(name));
    if default_spool && !says("spool") {
        opts.spool = Some(opts.default_spool_path()?);
    }
    if !says("timeout") {
        opts.timeout = DIRECT_REDIS_TIMEOUT;
    }
    let log = crate::backend::spool::open_redis(opts, false)?;
    Ok(redis_handles().lock().entry(key).or_insert(log).clone())
}

/// `_log_append` on Redis: one append script (idempotent on the event ids), or the
/// spool when Redis cannot be reached. Spooled ids are returned as `spool:<id>`.
fn append_redis(
    py: Python<'_>,
    url: &str,
    stored: &[StoredEvent],
    default_spool: bool,
) -> PyResult<Vec<String>> {
    if stored.is_empty() {
        // NOTE: nothing to append: the URL is checked, no server is contacted.
        crate::backend::redis::RedisOptions::from_url(url).map_err(log_error)?;
        return Ok(Vec::new());
    }
    let out = py
        .detach(|| -> Result<Vec<String>, LogError> {
            let log = redis_handle(url, default_spool)?;
            let ids = append_as_publisher(stored, |records| log.append(records))?;
            // NOTE: a Redis id has a millisecond time as its major part; a spool's ids
            // are small sequence numbers (under 2^40, i.e. before 2004 as a time).
            Ok(ids
                .into_iter()
                .map(|id| {
                    if id.major < (1 << 40) {
                        format!("spool:{id}")
                    } else {
                        id.to_string()
                    }
                })
                .collect())
        })
        .map_err(log_error)?;
    Ok(out)
}

/// The handle for a reading helper: Redis or SQLite by the URL. Call without the GIL.
fn any_handle(url: &str, opts: Option<SqliteOptions>) -> Result<Arc<dyn SharedLog>, LogError> {
    match opts {
        Some(o) => Ok(retry_busy(|| handle(url, o.clone()))?),
        None => redis_handle(url, false),
    }
}

/// `options(url)` for SQLite URLs, `None` for Redis ones.
fn any_options(url: &str) -> PyResult<Option<SqliteOptions>> {
    if is_redis(url) {
        crate::backend::redis::RedisOptions::from_url(url).map_err(log_error)?;
        return Ok(None);
    }
    options(url, None).map(Some)
}

/// An entry as a dict: the event's fields plus where the log has it.
fn entry_dict<'py>(
    py: Python<'py>,
    id: EntryId,
    record: &Record,
    deliveries: Option<u32>,
) -> PyResult<Bound<'py, PyDict>> {
    let ev = stored_from_record(record).map_err(log_error)?;
    let d = PyDict::new(py);
    d.set_item("entry_id", id.to_string())?;
    d.set_item("id", &ev.id)?;
    d.set_item("topic", &*ev.topic)?;
    d.set_item("type", &*ev.event_type)?;
    d.set_item("source", &*ev.source)?;
    d.set_item("timestamp_us", ev.timestamp_us)?;
    d.set_item("published_us", ev.published_us)?;
    d.set_item("priority", ev.priority)?;
    d.set_item("correlation_id", ev.correlation_id.as_deref())?;
    let text = std::str::from_utf8(&ev.data_json).map_err(|e| {
        PersistenceError::new_err(format!("entry {id} holds data that is not UTF-8: {e}"))
    })?;
    d.set_item("data", unpack_json(py, text)?)?;
    d.set_item("publisher", &record.publisher)?;
    d.set_item("publisher_seq", record.publisher_seq)?;
    if let Some(n) = deliveries {
        d.set_item("deliveries", n)?;
    }
    Ok(d)
}

fn entry_id(text: &str) -> PyResult<EntryId> {
    EntryId::parse(text).map_err(log_error)
}

/// Entries of the log at `url` by time window and topic patterns, in log order.
#[pyfunction]
#[pyo3(signature = (url, *, since_us=None, until_us=None, topics=None, after=None, limit=10_000))]
fn _log_range<'py>(
    py: Python<'py>,
    url: &str,
    since_us: Option<i64>,
    until_us: Option<i64>,
    topics: Option<Vec<String>>,
    after: Option<&str>,
    limit: usize,
) -> PyResult<Bound<'py, PyList>> {
    let opts = any_options(url)?;
    let after = after.map(entry_id).transpose()?;
    let rows = py
        .detach(|| {
            let log = any_handle(url, opts.clone())?;
            retry_busy(|| log.range(since_us, until_us, topics.as_deref(), after, limit))
        })
        .map_err(log_error)?;
    let out = PyList::empty(py);
    for (id, record) in &rows {
        out.append(entry_dict(py, *id, record, None)?)?;
    }
    Ok(out)
}

/// Groups this process has ensured, by URL and name.
fn ensured() -> &'static Mutex<HashSet<(String, String)>> {
    static ENSURED: OnceLock<Mutex<HashSet<(String, String)>>> = OnceLock::new();
    ENSURED.get_or_init(Default::default)
}

/// Claims up to `max` entries of the log at `url` for `instance` of `group`.
#[pyfunction]
#[pyo3(signature = (url, group, instance, max=100, block_ms=0, *, start="earliest"))]
fn _log_read<'py>(
    py: Python<'py>,
    url: &str,
    group: &str,
    instance: &str,
    max: usize,
    block_ms: u64,
    start: &str,
) -> PyResult<Bound<'py, PyList>> {
    let start = match start {
        "earliest" => StartAt::Earliest,
        "latest" => StartAt::Latest,
        other => {
            return Err(PyValueError::new_err(format!(
                "start must be \"earliest\" or \"latest\", not {other:?}"
            )))
        }
    };
    let opts = any_options(url)?;
    let entries = py
        .detach(|| {
            let log = any_handle(url, opts.clone())?;
            let key = (url.to_string(), group.to_string());
            if !ensured().lock().contains(&key) {
                retry_busy(|| log.ensure_group(group, start))?;
                ensured().lock().insert(key);
            }
            let block = (block_ms > 0).then(|| Duration::from_millis(block_ms));
            retry_busy(|| log.read(group, instance, max, block))
        })
        .map_err(log_error)?;
    let out = PyList::empty(py);
    for e in &entries {
        out.append(entry_dict(py, e.id, &e.record, Some(e.deliveries))?)?;
    }
    Ok(out)
}

/// Acknowledges entries of `group` (their `entry_id`s); returns how many were pending.
#[pyfunction]
fn _log_ack(py: Python<'_>, url: &str, group: &str, ids: Vec<String>) -> PyResult<u64> {
    let opts = any_options(url)?;
    let ids = ids
        .iter()
        .map(|t| entry_id(t))
        .collect::<PyResult<Vec<_>>>()?;
    py.detach(|| {
        let log = any_handle(url, opts.clone())?;
        retry_busy(|| log.ack(group, &ids))
    })
    .map_err(log_error)
}

/// Registers the functions in `mpm_events._core`.
pub fn init_pymodule(m: &Bound<'_, pyo3::types::PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_log_append, m)?)?;
    m.add_function(wrap_pyfunction!(_log_range, m)?)?;
    m.add_function(wrap_pyfunction!(_log_read, m)?)?;
    m.add_function(wrap_pyfunction!(_log_ack, m)?)?;
    Ok(())
}
