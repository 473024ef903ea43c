//! A shared log without a bus: `_log_append`, `_log_range`, `_log_read`, `_log_ack`,
//! and what the command line inspects and changes: `_log_scan`, `_log_groups`, `_log_stats`,
//! `_log_dead_letters`, `_log_redrive`, `_log_purge`, `_log_requeue`.
//!
//! Synchronous functions for processes that only write a few events and exit (the
//! `mpm-events hook` command), the `mpm-events tail/stats/dlq/replay` commands, and
//! tests and benchmarks that read a log back:
//! no `EventBus`, no asyncio, no Tokio runtime. Each call holds the GIL only to
//! convert its arguments and results; the log work (open, transaction, fsync) runs
//! with the GIL released, so a deadline timer on another Python thread can still run.
//!
//! Events become records through [`crate::backend::codec`], the one encoding the
//! bus's readers decode. Handles are opened once per process and URL (and
//! durability) and kept. A `sqlite:///` URL opens a [`SqliteLog`], a `redis://` (or
//! `rediss://`, `redis+cluster://`) one a Redis log, with its spool when configured.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::backend::codec::{record_from_stored, stored_from_record};
use crate::backend::redis::RedisOptions;
use crate::backend::sqlite::{SqliteLog, SqliteOptions};
use crate::backend::{Durability, EntryId, LogError, Record, SharedLog, StartAt};
use crate::python::convert::json::{pack_json, to_json, unpack_json};
use crate::python::model::{Event, Payload};
use crate::python::runtime::errors::{event_error, topic_error, PersistenceError};
use crate::storage::StoredEvent;
use crate::topic::Pattern;

/// A URL and whether its handle fsyncs every commit (`Durability::Sync`).
type HandleKey = (String, bool);

/// Open handles of this process, by URL and durability.
fn handles() -> &'static Mutex<HashMap<HandleKey, Arc<dyn SharedLog>>> {
    static HANDLES: OnceLock<Mutex<HashMap<HandleKey, Arc<dyn SharedLog>>>> = OnceLock::new();
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

/// Which log a URL names, checked with the GIL held.
#[derive(Clone)]
enum Target {
    Sqlite(SqliteOptions),
    /// A Redis log (its URL checked); opened by `redis_handle`.
    Redis,
}

/// The options of `url` (`ValueError` for a URL that is not a SQLite or Redis log's).
fn options(url: &str, durability: Option<Durability>) -> PyResult<Target> {
    let invalid = |e: LogError| match e {
        LogError::Invalid(msg) => PyValueError::new_err(msg),
        other => log_error(other),
    };
    if is_redis(url) {
        // NOTE: on Redis what survives a crash is the server's appendfsync setting;
        // `durability` does not apply (docs/backends.md, RedisLog).
        RedisOptions::from_url(url).map_err(invalid)?;
        return Ok(Target::Redis);
    }
    if !url.starts_with("sqlite:") {
        return Err(PyValueError::new_err(format!(
            "log URL {url:?} is not a shared log's: expected sqlite:///path/to/events.db \
             or redis://host:port/0"
        )));
    }
    let mut opts = SqliteOptions::from_url(url).map_err(invalid)?;
    if let Some(d) = durability {
        opts.durability = d;
    }
    Ok(Target::Sqlite(opts))
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
fn handle(url: &str, target: Target) -> Result<Arc<dyn SharedLog>, LogError> {
    let sync = match &target {
        Target::Sqlite(o) => o.durability == Durability::Sync,
        Target::Redis => return redis_handle(url, false),
    };
    let key = (url.to_string(), sync);
    if let Some(h) = handles().lock().get(&key) {
        return Ok(h.clone());
    }
    // NOTE: opened outside the map's lock: an open can wait for another process's
    // schema creation; two threads racing here open two handles and one is kept.
    let log: Arc<dyn SharedLog> = match target {
        Target::Sqlite(o) => Arc::new(SqliteLog::open(o)?),
        // NOTE: Redis handles live in `redis_handles` (with a spool when the URL
        // names one, and the direct path's short timeout).
        Target::Redis => unreachable!("Redis handles are opened by redis_handle"),
    };
    Ok(handles().lock().entry(key).or_insert(log).clone())
}

/// Runs `f` on the process's handle on `url`, without the GIL, retrying a busy log.
fn with_log<T: Send>(
    py: Python<'_>,
    url: &str,
    f: impl Fn(&dyn SharedLog) -> Result<T, LogError> + Send + Sync,
) -> PyResult<T> {
    let target = options(url, None)?;
    py.detach(|| {
        let log = retry_busy(|| handle(url, target.clone()))?;
        retry_busy(|| f(&*log))
    })
    .map_err(log_error)
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
        published_us: crate::clock::now_unix_micros(),
        priority: e.priority,
        correlation_id: match &e.correlation_id {
            Some(c) => Some(c.bind(py).to_cow()?.into_owned()),
            None => None,
        },
        data_json,
    })
}

/// `stored` as records of this process's publisher, appended by `append`; the
/// publisher's counter moves on whether `append` succeeded or not.
fn append_as_publisher(
    stored: &[StoredEvent],
    append: impl FnOnce(&[Record]) -> Result<Vec<EntryId>, LogError>,
) -> Result<Vec<EntryId>, LogError> {
    let (who, counter) = publisher();
    // NOTE: the counter is held across the append so that this process's
    // publisher_seq grows in log order, as per-publisher order promises. It moves on
    // after a failed append too: a failure may come after the server applied the
    // append (a lost reply), and Redis de-duplicates on (publisher, publisher_seq), so
    // numbers used once are never given to other events.
    let mut seq = counter.lock();
    let records: Vec<Record> = stored
        .iter()
        .enumerate()
        .map(|(i, ev)| record_from_stored(ev, who, *seq + 1 + i as u64))
        .collect();
    *seq += records.len() as u64;
    append(&records)
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

/// `_log_append` on Redis: one append script (idempotent on the records' publisher
/// sequence numbers), or the spool when Redis cannot be reached. Spooled ids are
/// returned as `spool:<id>`.
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

fn entry_ids(texts: &[String]) -> PyResult<Vec<EntryId>> {
    texts.iter().map(|t| entry_id(t)).collect()
}

/// Parsed topic patterns (`InvalidTopicError` naming a bad one).
fn patterns(list: Option<&[String]>) -> PyResult<Vec<Pattern>> {
    list.unwrap_or_default()
        .iter()
        .map(|p| Pattern::parse(p).map_err(topic_error))
        .collect()
}

/// How many entries one page of a scan reads.
const PAGE: usize = 10_000;

/// Entries of the log at `url` by time window and topic patterns, in log order.
#[pyfunction]
#[pyo3(signature = (url, *, since_us=None, until_us=None, topics=None, after=None, limit=10_000, exclude=None, last=None))]
#[allow(clippy::too_many_arguments)]
fn _log_range<'py>(
    py: Python<'py>,
    url: &str,
    since_us: Option<i64>,
    until_us: Option<i64>,
    topics: Option<Vec<String>>,
    after: Option<&str>,
    limit: usize,
    exclude: Option<Vec<String>>,
    last: Option<usize>,
) -> PyResult<Bound<'py, PyList>> {
    let after = after.map(entry_id).transpose()?;
    let exclude = patterns(exclude.as_deref())?;
    patterns(topics.as_deref())?;
    let kept = |r: &Record| !exclude.iter().any(|p| p.matches(&r.topic));
    let rows = with_log(py, url, |log| {
        let Some(n) = last else {
            // NOTE: pages until `limit` entries are kept, so an exclusion does not
            // shorten the answer.
            let mut out = Vec::new();
            let mut from = after;
            loop {
                let page = log.range(since_us, until_us, topics.as_deref(), from, limit.max(1))?;
                let full = page.len() >= limit.max(1);
                from = page.last().map(|(id, _)| *id).or(from);
                out.extend(page.into_iter().filter(|(_, r)| kept(r)));
                if !full || out.len() >= limit || exclude.is_empty() {
                    out.truncate(limit);
                    return Ok(out);
                }
            }
        };
        // The last `n` of the window: one pass in pages, keeping only `n`.
        let mut tail = std::collections::VecDeque::with_capacity(n.min(PAGE));
        let mut from = after;
        loop {
            let page = log.range(since_us, until_us, topics.as_deref(), from, PAGE)?;
            let full = page.len() >= PAGE;
            from = page.last().map(|(id, _)| *id).or(from);
            for row in page.into_iter().filter(|(_, r)| kept(r)) {
                if n == 0 {
                    break;
                }
                if tail.len() == n {
                    tail.pop_front();
                }
                tail.push_back(row);
            }
            if !full {
                return Ok(tail.into_iter().collect::<Vec<_>>());
            }
        }
    })?;
    let out = PyList::empty(py);
    for (id, record) in &rows {
        out.append(entry_dict(py, *id, record, None)?)?;
    }
    Ok(out)
}

/// Entries after `after` whose topic matches `topics` and none of `exclude`, and the
/// id of the last entry looked at, so a follower's next call starts past what did not
/// match instead of reading it again.
#[pyfunction]
#[pyo3(signature = (url, *, since_us=None, until_us=None, topics=None, exclude=None, after=None, limit=1000, budget=50_000))]
#[allow(clippy::too_many_arguments)]
fn _log_scan<'py>(
    py: Python<'py>,
    url: &str,
    since_us: Option<i64>,
    until_us: Option<i64>,
    topics: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    after: Option<&str>,
    limit: usize,
    budget: usize,
) -> PyResult<(Bound<'py, PyList>, Option<String>)> {
    let after = after.map(entry_id).transpose()?;
    let wanted = topics.map(|t| patterns(Some(&t))).transpose()?;
    let exclude = patterns(exclude.as_deref())?;
    let keep = |topic: &str| {
        wanted
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(topic)))
            && !exclude.iter().any(|p| p.matches(topic))
    };
    let (rows, seen) = with_log(py, url, |log| {
        let mut out = Vec::new();
        let mut seen = after;
        let mut looked = 0usize;
        loop {
            // NOTE: the topic filter runs here, not in `range`, so that `seen` moves
            // past entries that do not match.
            let page = log.range(since_us, until_us, None, seen, PAGE)?;
            let full = page.len() >= PAGE;
            for (id, record) in page {
                seen = Some(id);
                looked += 1;
                if keep(&record.topic) {
                    out.push((id, record));
                    if out.len() >= limit.max(1) {
                        return Ok((out, seen));
                    }
                }
            }
            if !full || looked >= budget {
                return Ok((out, seen));
            }
        }
    })?;
    let out = PyList::empty(py);
    for (id, record) in &rows {
        out.append(entry_dict(py, *id, record, None)?)?;
    }
    Ok((out, seen.map(|id| id.to_string())))
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
    let target = options(url, None)?;
    let entries = py
        .detach(|| {
            let log = retry_busy(|| handle(url, target.clone()))?;
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
    let ids = entry_ids(&ids)?;
    with_log(py, url, |log| log.ack(group, &ids))
}

fn id_text(id: Option<EntryId>) -> Option<String> {
    id.map(|i| i.to_string())
}

/// Every consumer group of the log: name, position, pending, ready, lag, dead letters.
#[pyfunction]
fn _log_groups<'py>(py: Python<'py>, url: &str) -> PyResult<Bound<'py, PyList>> {
    let stats = with_log(py, url, |log| {
        log.groups()?
            .iter()
            .map(|g| log.group_stats(g))
            .collect::<Result<Vec<_>, LogError>>()
    })?;
    let out = PyList::empty(py);
    for g in stats {
        let d = PyDict::new(py);
        d.set_item("name", &g.name)?;
        d.set_item("position", id_text(g.position))?;
        d.set_item("pending", g.pending)?;
        d.set_item("ready", g.ready)?;
        d.set_item("lag", g.lag)?;
        d.set_item("dead_letters", g.dead_letters)?;
        out.append(d)?;
    }
    Ok(out)
}

/// Counts of the whole log, and with `topics` the entries per topic (one pass).
#[pyfunction]
#[pyo3(signature = (url, *, topics=true))]
fn _log_stats<'py>(py: Python<'py>, url: &str, topics: bool) -> PyResult<Bound<'py, PyDict>> {
    let (st, counts) = with_log(py, url, |log| {
        let st = log.stats()?;
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        if topics {
            let mut from = None;
            loop {
                let page = log.range(None, None, None, from, PAGE)?;
                let full = page.len() >= PAGE;
                from = page.last().map(|(id, _)| *id).or(from);
                for (_, r) in page {
                    *counts.entry(r.topic).or_default() += 1;
                }
                if !full {
                    break;
                }
            }
        }
        Ok((st, counts))
    })?;
    let d = PyDict::new(py);
    d.set_item("entries", st.entries)?;
    d.set_item("bytes", st.bytes)?;
    d.set_item("first", id_text(st.first))?;
    d.set_item("last", id_text(st.last))?;
    d.set_item("groups", st.groups)?;
    d.set_item("dead_letters", st.dead_letters)?;
    d.set_item("dropped_unhandled", st.dropped_unhandled)?;
    if topics {
        let t = PyDict::new(py);
        for (topic, n) in counts {
            t.set_item(topic, n)?;
        }
        d.set_item("topics", t)?;
    }
    Ok(d)
}

/// The log's dead letters, oldest first, of one group or of all.
#[pyfunction]
#[pyo3(signature = (url, group=None, limit=1000))]
fn _log_dead_letters<'py>(
    py: Python<'py>,
    url: &str,
    group: Option<&str>,
    limit: usize,
) -> PyResult<Bound<'py, PyList>> {
    let letters = with_log(py, url, |log| log.dead_letters(group, limit))?;
    let out = PyList::empty(py);
    for dl in &letters {
        let d = PyDict::new(py);
        d.set_item("dl_id", dl.dl_id)?;
        d.set_item("group", &dl.group)?;
        d.set_item("entry_id", dl.id.to_string())?;
        d.set_item("reason", &dl.reason)?;
        d.set_item("attempts", dl.attempts)?;
        d.set_item("failed_us", dl.failed_us)?;
        d.set_item("event", entry_dict(py, dl.id, &dl.record, None)?)?;
        out.append(d)?;
    }
    Ok(out)
}

/// Hands dead letters back to `group` (`dl_ids` None: all of its); returns how many.
#[pyfunction]
#[pyo3(signature = (url, group, dl_ids=None))]
fn _log_redrive(py: Python<'_>, url: &str, group: &str, dl_ids: Option<Vec<i64>>) -> PyResult<u64> {
    with_log(py, url, |log| {
        log.replay_dead_letters(group, dl_ids.as_deref())
    })
}

/// Deletes dead letters without handing them back; returns how many.
#[pyfunction]
fn _log_purge(py: Python<'_>, url: &str, dl_ids: Vec<i64>) -> PyResult<u64> {
    with_log(py, url, |log| log.remove_dead_letters(&dl_ids))
}

/// Hands the entries `ids` to `group` again (a replay into one consumer name).
#[pyfunction]
fn _log_requeue(py: Python<'_>, url: &str, group: &str, ids: Vec<String>) -> PyResult<u64> {
    let ids = entry_ids(&ids)?;
    with_log(py, url, |log| log.requeue(group, &ids))
}

/// Registers the functions in `mpm_events._core`.
pub fn init_pymodule(m: &Bound<'_, pyo3::types::PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_log_append, m)?)?;
    m.add_function(wrap_pyfunction!(_log_range, m)?)?;
    m.add_function(wrap_pyfunction!(_log_scan, m)?)?;
    m.add_function(wrap_pyfunction!(_log_read, m)?)?;
    m.add_function(wrap_pyfunction!(_log_ack, m)?)?;
    m.add_function(wrap_pyfunction!(_log_groups, m)?)?;
    m.add_function(wrap_pyfunction!(_log_stats, m)?)?;
    m.add_function(wrap_pyfunction!(_log_dead_letters, m)?)?;
    m.add_function(wrap_pyfunction!(_log_redrive, m)?)?;
    m.add_function(wrap_pyfunction!(_log_purge, m)?)?;
    m.add_function(wrap_pyfunction!(_log_requeue, m)?)?;
    Ok(())
}
