//! [`SqliteLog`]: the embedded shared log, one SQLite file (WAL mode) that every
//! process opens.
//!
//! * Every write is one `BEGIN IMMEDIATE` transaction: SQLite serialises writers across
//!   processes with its file lock (waiting up to `busy_timeout`), so concurrent writers
//!   never interleave and a claim (read the position, insert the pending rows, move the
//!   position) is atomic.
//! * Each handle has one connection behind a mutex; methods are short transactions.
//! * Wake-up: an append bumps an in-process notifier shared by every handle on the same
//!   file (instant for same-process readers); a blocked reader also polls
//!   `PRAGMA data_version` (changes when another connection commits), every 1 ms for
//!   the first 100 ms of a wait, then backing off to 50 ms when idle.

mod schema;
mod wake;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::{
    check_name, check_record, DeadLetter, Durability, Entry, EntryId, GroupStats, LogError,
    LogStats, Record, Result, Retention, RetentionReport, SharedLog, StartAt,
};
use crate::topic::Pattern;
use wake::Notifier;

pub use schema::{APPLICATION_ID, SCHEMA_VERSION};

/// Longest pause between two `data_version` polls of an idle blocked reader.
const MAX_POLL: Duration = Duration::from_millis(50);
/// Pause between polls right after activity.
const MIN_POLL: Duration = Duration::from_millis(1);
/// How long a blocked reader keeps polling every [`MIN_POLL`] before backing off.
const ACTIVE_SPELL: Duration = Duration::from_millis(100);

/// Options of [`SqliteLog::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file; parent directories are created.
    pub path: PathBuf,
    /// See [`Durability`]. Default `Sync`.
    pub durability: Durability,
    /// Payloads above this many bytes are stored LZ4-compressed when that saves space
    /// (codec 1). Default 4096.
    pub compress_threshold: usize,
    /// How long a write waits for another process's write lock. Default 10 s.
    pub busy_timeout: Duration,
    /// Run `PRAGMA quick_check` when opening an existing file (reads the whole file).
    /// Default false: short-lived publishers must open fast.
    pub verify_on_open: bool,
    /// Cap on the file size: writes beyond it fail with [`LogError::Full`].
    pub hard_limit_bytes: Option<u64>,
}

impl SqliteOptions {
    /// Defaults for a log at `path`.
    pub fn new(path: impl Into<PathBuf>) -> SqliteOptions {
        SqliteOptions {
            path: path.into(),
            durability: Durability::Sync,
            compress_threshold: 4096,
            busy_timeout: Duration::from_secs(10),
            verify_on_open: false,
            hard_limit_bytes: None,
        }
    }

    /// Options from a backend URL: `sqlite:///abs/path.db`, `sqlite://rel/path.db` or
    /// `sqlite:path.db`, with an optional query `?durability=sync|normal`.
    pub fn from_url(url: &str) -> Result<SqliteOptions> {
        let rest = url.strip_prefix("sqlite:").ok_or_else(|| {
            LogError::Invalid(format!("backend URL {url:?} does not start with sqlite:"))
        })?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(LogError::Invalid(format!(
                "backend URL {url:?} names no file (expected sqlite:///path/to/events.db)"
            )));
        }
        let mut opts = SqliteOptions::new(path);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("durability", "sync")) => opts.durability = Durability::Sync,
                Some(("durability", "normal")) => opts.durability = Durability::Normal,
                _ => {
                    return Err(LogError::Invalid(format!(
                        "backend URL {url:?}: unknown option {pair:?} \
                         (known: durability=sync|normal)"
                    )))
                }
            }
        }
        Ok(opts)
    }
}

/// One handle on a shared SQLite log. See the module docs and [`SharedLog`].
pub struct SqliteLog {
    location: String,
    opts: SqliteOptions,
    conn: Mutex<Option<Connection>>,
    notifier: Arc<Notifier>,
    closed: AtomicBool,
    /// The connection is at `synchronous=NORMAL` although the durability is `Sync`
    /// (for claims and acks; see [`SqliteLog::write_light`]). Changed only with `conn`
    /// locked.
    light: AtomicBool,
}

impl std::fmt::Debug for SqliteLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLog")
            .field("location", &self.location)
            .finish()
    }
}

/// Map a rusqlite error on the log at `location` to a [`LogError`].
pub(crate) fn sq(location: &str, err: rusqlite::Error) -> LogError {
    use rusqlite::ErrorCode;
    let detail = err.to_string();
    let location = location.to_string();
    match &err {
        rusqlite::Error::SqliteFailure(e, _) => match e.code {
            ErrorCode::DiskFull => LogError::Full { location, detail },
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                LogError::Corrupt { location, detail }
            }
            ErrorCode::CannotOpen
            | ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly
            | ErrorCode::SystemIoFailure => LogError::Io { location, detail },
            _ => LogError::Backend { location, detail },
        },
        _ => LogError::Backend { location, detail },
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn seq_of(id: EntryId) -> Result<i64> {
    if id.minor != 0 || id.major == 0 || id.major > i64::MAX as u64 {
        return Err(LogError::Invalid(format!(
            "entry id {id} is not an id of an SQLite log"
        )));
    }
    Ok(id.major as i64)
}

/// `seqs` sorted, without repeats, as runs of consecutive seqs `(first, last)`.
fn seq_runs(mut seqs: Vec<i64>) -> Vec<(i64, i64)> {
    seqs.sort_unstable();
    seqs.dedup();
    seqs.chunk_by(|a, b| a.checked_add(1) == Some(*b))
        .map(|run| (run[0], run[run.len() - 1]))
        .collect()
}

fn id_of(seq: i64) -> EntryId {
    EntryId::new(seq as u64, 0)
}

/// Columns of a record, in the order [`record_from_row`] reads them.
const RECORD_COLS: &str =
    "event_id, topic, priority, timestamp_us, publisher, publisher_seq, codec, payload, metadata";

fn record_from_row(r: &Row<'_>, first: usize) -> rusqlite::Result<Record> {
    let codec: i64 = r.get(first + 6)?;
    let stored: Vec<u8> = r.get(first + 7)?;
    let payload = match codec {
        0 => stored,
        1 => crate::storage::decompress_lz4(&stored).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                first + 7,
                rusqlite::types::Type::Blob,
                e.into(),
            )
        })?,
        other => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                first + 6,
                rusqlite::types::Type::Integer,
                format!("unknown payload codec {other}").into(),
            ))
        }
    };
    Ok(Record {
        event_id: r.get(first)?,
        topic: r.get(first + 1)?,
        priority: r.get::<_, i64>(first + 2)? as u8,
        timestamp_us: r.get(first + 3)?,
        publisher: r.get(first + 4)?,
        publisher_seq: r.get::<_, i64>(first + 5)? as u64,
        payload,
        metadata: r.get(first + 8)?,
    })
}

fn check_max(max: usize) -> Result<i64> {
    if max == 0 {
        return Err(LogError::Invalid("max must be at least 1".into()));
    }
    Ok(max.min(1 << 20) as i64)
}

impl SqliteLog {
    /// Open (creating if needed) the log at `opts.path`. Fails with a [`LogError`]
    /// naming the path if the file cannot be opened or written, is corrupt or not a
    /// shared log, or has a newer schema; the file is not changed then.
    pub fn open(opts: SqliteOptions) -> Result<SqliteLog> {
        let location = opts.path.display().to_string();
        // NOTE: SQLite answers SQLITE_BUSY at once, without its busy handler, in a few
        // steps of an open (switching a new file to WAL, recovering the WAL) while
        // another process does the same: two buses opening one log together failed
        // so. An open that failed leaves nothing behind, so it is tried again, for
        // up to the busy timeout, with short random pauses.
        let began = std::time::Instant::now();
        let conn = loop {
            match schema::open(
                &opts.path,
                &location,
                opts.durability,
                opts.busy_timeout,
                opts.verify_on_open,
            ) {
                Err(LogError::Backend { detail, .. })
                    if detail.contains("database is locked")
                        && began.elapsed() < opts.busy_timeout =>
                {
                    std::thread::sleep(Duration::from_micros(500 + fastrand::u64(0..2_000)));
                }
                other => break other?,
            }
        };
        if let Some(limit) = opts.hard_limit_bytes {
            schema::set_hard_limit(&conn, &location, limit)?;
        }
        let notifier = wake::notifier_for(&opts.path);
        Ok(SqliteLog {
            location,
            opts,
            conn: Mutex::new(Some(conn)),
            notifier,
            closed: AtomicBool::new(false),
            light: AtomicBool::new(false),
        })
    }

    /// [`SqliteLog::open`] with default options.
    pub fn open_path(path: impl AsRef<Path>) -> Result<SqliteLog> {
        SqliteLog::open(SqliteOptions::new(path.as_ref()))
    }

    /// The options this handle was opened with.
    pub fn options(&self) -> &SqliteOptions {
        &self.opts
    }

    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut guard = self.conn.lock();
        match guard.as_mut() {
            Some(c) => f(c),
            None => Err(LogError::Closed),
        }
    }

    /// Run `f` in one `BEGIN IMMEDIATE` transaction; commit if it returns Ok.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        self.write_at(false, f)
    }

    /// [`SqliteLog::write`] for a consumer's bookkeeping (acks, claims): with
    /// `Durability::Sync` committed without an fsync of its own.
    // NOTE: a claim or ack lost to a power cut only means a redelivery (at least
    // once), never a lost event; the WAL is sequential, so the next durable commit
    // (an append, in any process) or checkpoint fsyncs these frames too. Without it,
    // each consumer's claim and ack of every batch cost an fsync on the one write
    // lock the publishers wait for.
    fn write_light<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        self.write_at(true, f)
    }

    /// `synchronous` for the next commit on `c`: NORMAL when `light`, else as the
    /// durability asks (only `Sync` logs switch).
    fn sync_level(&self, c: &Connection, light: bool) -> Result<()> {
        if self.opts.durability != Durability::Sync || self.light.load(Ordering::Acquire) == light {
            return Ok(());
        }
        let level = if light { "NORMAL" } else { "FULL" };
        c.pragma_update(None, "synchronous", level)
            .map_err(self.e())?;
        self.light.store(light, Ordering::Release);
        Ok(())
    }

    fn write_at<T>(
        &self,
        light: bool,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let loc = self.location.as_str();
        self.with_conn(|c| {
            self.sync_level(c, light)?;
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sq(loc, e))?;
            let out = f(&tx)?;
            tx.commit().map_err(|e| sq(loc, e))?;
            Ok(out)
        })
    }

    fn e(&self) -> impl Fn(rusqlite::Error) -> LogError + '_ {
        move |e| sq(&self.location, e)
    }

    fn group_position(&self, c: &Connection, group: &str) -> Result<i64> {
        c.prepare_cached("SELECT position FROM log_groups WHERE name = ?1")
            .and_then(|mut s| s.query_row([group], |r| r.get(0)).optional())
            .map_err(self.e())?
            .ok_or_else(|| LogError::UnknownGroup(group.to_string()))
    }

    fn load(&self, c: &Connection, claimed: Vec<(i64, i64)>) -> Result<Vec<Entry>> {
        // NOTE: one read transaction for the whole batch (unless the caller's write
        // transaction is open): a statement in autocommit takes and drops the WAL
        // index's locks (fcntl) and the pager's shared lock each time; once per entry
        // that was about a fifth of a shared-log reader thread's time (perf, W11).
        let own = c.is_autocommit();
        if own {
            c.execute_batch("BEGIN DEFERRED").map_err(self.e())?;
        }
        let out = self.load_in(c, claimed);
        if own {
            let end = c.execute_batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" });
            if out.is_ok() {
                end.map_err(self.e())?;
            }
        }
        out
    }

    fn load_in(&self, c: &Connection, mut claimed: Vec<(i64, i64)>) -> Result<Vec<Entry>> {
        claimed.sort_unstable_by_key(|&(seq, _)| seq);
        claimed.dedup_by_key(|&mut (seq, _)| seq);
        let mut one = c
            .prepare_cached(&format!(
                "SELECT {RECORD_COLS} FROM log_entries WHERE seq = ?1"
            ))
            .map_err(self.e())?;
        // NOTE: a claim of fresh entries is a run of consecutive seqs; one range scan
        // reads it with one statement instead of one statement (bind, step, reset) per
        // entry, a measured share of a shared-log reader thread's time (perf, W11).
        let mut range = c
            .prepare_cached(&format!(
                "SELECT seq, {RECORD_COLS} FROM log_entries WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq"
            ))
            .map_err(self.e())?;
        let mut out = Vec::with_capacity(claimed.len());
        for run in claimed.chunk_by(|a, b| a.0.checked_add(1) == Some(b.0)) {
            let first = run[0].0;
            if run.len() == 1 {
                let rec = one
                    .query_row([first], |r| record_from_row(r, 0))
                    .optional()
                    .map_err(self.e())?;
                // NOTE: a pending row whose entry is gone was dropped by the hard
                // retention cap between the claim and now; nothing left to deliver.
                if let Some(record) = rec {
                    out.push(Entry {
                        id: id_of(first),
                        record,
                        deliveries: run[0].1 as u32,
                    });
                }
                continue;
            }
            let last = run[run.len() - 1].0;
            let mut rows = range.query(params![first, last]).map_err(self.e())?;
            while let Some(r) = rows.next().map_err(self.e())? {
                let seq: i64 = r.get(0).map_err(self.e())?;
                let record = record_from_row(r, 1).map_err(self.e())?;
                out.push(Entry {
                    id: id_of(seq),
                    record,
                    deliveries: run[(seq - first) as usize].1 as u32,
                });
            }
        }
        Ok(out)
    }

    /// One non-blocking read attempt. Checks without the write lock first whether
    /// there is anything to claim, so idle readers do not contend with writers.
    fn try_read(&self, group: &str, instance: &str, max: i64) -> Result<Vec<Entry>> {
        let loc = self.location.as_str();
        self.with_conn(|c| {
            let position = self.group_position(c, group)?;
            let last: i64 = c
                .prepare_cached("SELECT coalesce(max(seq), 0) FROM log_entries")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(|e| sq(loc, e))?;
            let ready: bool = c
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM log_pending WHERE grp = ?1 AND owner IS NULL)",
                )
                .and_then(|mut s| s.query_row([group], |r| r.get(0)))
                .map_err(|e| sq(loc, e))?;
            if last <= position && !ready {
                return Ok(Vec::new());
            }
            let now = now_us();
            self.sync_level(c, true)?;
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sq(loc, e))?;
            let mut claimed: Vec<(i64, i64)> = Vec::new();
            {
                let mut again = tx
                    .prepare_cached(
                        "UPDATE log_pending SET owner = ?1, claimed_us = ?2, deliveries = deliveries + 1
                         WHERE grp = ?3 AND seq IN (
                             SELECT seq FROM log_pending WHERE grp = ?3 AND owner IS NULL
                             ORDER BY seq LIMIT ?4)
                         RETURNING seq, deliveries",
                    )
                    .map_err(|e| sq(loc, e))?;
                let rows = again
                    .query_map(params![instance, now, group, max], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(|e| sq(loc, e))?;
                for row in rows {
                    claimed.push(row.map_err(|e| sq(loc, e))?);
                }
            }
            let room = max - claimed.len() as i64;
            if room > 0 {
                // Re-read under the write lock: another instance may have moved it.
                let position = self.group_position(&tx, group)?;
                let mut fresh = tx
                    .prepare_cached(
                        "INSERT INTO log_pending (grp, seq, owner, claimed_us, deliveries)
                         SELECT ?1, seq, ?2, ?3, 1 FROM log_entries
                         WHERE seq > ?4 ORDER BY seq LIMIT ?5
                         RETURNING seq",
                    )
                    .map_err(|e| sq(loc, e))?;
                let rows = fresh
                    .query_map(params![group, instance, now, position, room], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map_err(|e| sq(loc, e))?;
                let mut top = position;
                for row in rows {
                    let seq = row.map_err(|e| sq(loc, e))?;
                    top = top.max(seq);
                    claimed.push((seq, 1));
                }
                drop(fresh);
                if top > position {
                    tx.prepare_cached("UPDATE log_groups SET position = ?1 WHERE name = ?2")
                        .and_then(|mut s| s.execute(params![top, group]))
                        .map_err(|e| sq(loc, e))?;
                }
            }
            tx.commit().map_err(|e| sq(loc, e))?;
            // NOTE: the records are read after the commit: the claim holds them for
            // this instance and entries do not change, so the write lock (which every
            // publisher of every process waits for) is not held while a whole batch
            // of payloads is read. (Should this read fail, the claims expire and are
            // taken over: redelivered, not lost.)
            self.load(c, claimed)
        })
    }

    fn data_version(&self) -> Result<i64> {
        self.with_conn(|c| {
            c.query_row("PRAGMA data_version", [], |r| r.get(0))
                .map_err(|e| sq(&self.location, e))
        })
    }
}

impl SharedLog for SqliteLog {
    fn location(&self) -> &str {
        &self.location
    }

    fn append(&self, records: &[Record]) -> Result<Vec<EntryId>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        for r in records {
            check_record(r)?;
        }
        let now = now_us();
        let threshold = self.opts.compress_threshold;
        let ids = self.write(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO log_entries (event_id, topic, priority, timestamp_us, appended_us,
                         publisher, publisher_seq, codec, payload, metadata, size_bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(self.e())?;
            let mut ids = Vec::with_capacity(records.len());
            for r in records {
                let (codec, payload) = encode(&r.payload, threshold);
                let size = (payload.len() + r.metadata.len()) as i64;
                stmt.execute(params![
                    r.event_id,
                    r.topic,
                    r.priority as i64,
                    r.timestamp_us,
                    now,
                    r.publisher,
                    r.publisher_seq as i64,
                    codec,
                    payload,
                    r.metadata,
                    size
                ])
                .map_err(self.e())?;
                ids.push(id_of(tx.last_insert_rowid()));
            }
            Ok(ids)
        })?;
        self.notifier.bump();
        Ok(ids)
    }

    fn ensure_group(&self, group: &str, start: StartAt) -> Result<bool> {
        check_name("group", group)?;
        self.write(|tx| {
            let known: Option<i64> = tx
                .query_row(
                    "SELECT position FROM log_groups WHERE name = ?1",
                    [group],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.e())?;
            if known.is_some() {
                return Ok(false);
            }
            let latest =
                "coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'log_entries'), 0)";
            let position: i64 = match start {
                StartAt::Earliest => 0,
                StartAt::Latest => tx
                    .query_row(&format!("SELECT {latest}"), [], |r| r.get(0))
                    .map_err(self.e())?,
                StartAt::Time(t) => tx
                    .query_row(
                        &format!(
                            "SELECT coalesce((SELECT min(seq) - 1 FROM log_entries
                                              WHERE timestamp_us >= ?1), {latest})"
                        ),
                        [t],
                        |r| r.get(0),
                    )
                    .map_err(self.e())?,
            };
            tx.execute(
                "INSERT INTO log_groups (name, position, created_us) VALUES (?1, ?2, ?3)",
                params![group, position, now_us()],
            )
            .map_err(self.e())?;
            Ok(true)
        })
    }

    fn groups(&self) -> Result<Vec<String>> {
        self.with_conn(|c| {
            let mut s = c
                .prepare_cached("SELECT name FROM log_groups ORDER BY name")
                .map_err(self.e())?;
            let rows = s.query_map([], |r| r.get(0)).map_err(self.e())?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
                .map_err(self.e())
        })
    }

    fn delete_group(&self, group: &str) -> Result<bool> {
        self.write(|tx| {
            let n = tx
                .execute("DELETE FROM log_groups WHERE name = ?1", [group])
                .map_err(self.e())?;
            tx.execute("DELETE FROM log_pending WHERE grp = ?1", [group])
                .map_err(self.e())?;
            tx.execute("DELETE FROM log_dead_letters WHERE grp = ?1", [group])
                .map_err(self.e())?;
            Ok(n > 0)
        })
    }

    fn read(
        &self,
        group: &str,
        instance: &str,
        max: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>> {
        check_name("instance", instance)?;
        let max = check_max(max)?;
        let deadline = block.map(|b| Instant::now() + b);
        loop {
            // NOTE: both marks are taken before the attempt, so an append that lands
            // between the attempt and the wait is not missed.
            let generation = self.notifier.generation();
            let version = self.data_version()?;
            let got = self.try_read(group, instance, max)?;
            if !got.is_empty() {
                return Ok(got);
            }
            let Some(deadline) = deadline else {
                return Ok(got);
            };
            let mut pause = MIN_POLL;
            let waiting_since = Instant::now();
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(Vec::new());
                }
                if self.closed.load(Ordering::Acquire) {
                    return Err(LogError::Closed);
                }
                if self
                    .notifier
                    .wait_change(generation, pause.min(deadline - now))
                {
                    break;
                }
                if self.data_version()? != version {
                    break;
                }
                // NOTE: streams are bursty: keep the short pause for a while after
                // the last activity, then back off towards MAX_POLL when idle.
                if waiting_since.elapsed() >= ACTIVE_SPELL {
                    pause = (pause * 2).min(MAX_POLL);
                }
            }
        }
    }

    fn renew(&self, group: &str, instance: &str, ids: &[EntryId]) -> Result<Vec<EntryId>> {
        let seqs = ids.iter().map(|&i| seq_of(i)).collect::<Result<Vec<_>>>()?;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_us();
        self.write(|tx| {
            let mut s = tx
                .prepare_cached(
                    "UPDATE log_pending SET claimed_us = ?1
                     WHERE grp = ?2 AND seq = ?3 AND owner = ?4",
                )
                .map_err(self.e())?;
            let mut kept = Vec::new();
            for seq in seqs {
                if s.execute(params![now, group, seq, instance])
                    .map_err(self.e())?
                    > 0
                {
                    kept.push(id_of(seq));
                }
            }
            Ok(kept)
        })
    }

    fn release(&self, group: &str, instance: &str, ids: &[EntryId]) -> Result<u64> {
        let seqs = ids.iter().map(|&i| seq_of(i)).collect::<Result<Vec<_>>>()?;
        self.write(|tx| {
            let mut s = tx
                .prepare_cached(
                    "UPDATE log_pending SET claimed_us = 0
                     WHERE grp = ?1 AND seq = ?2 AND owner = ?3",
                )
                .map_err(self.e())?;
            let mut n = 0u64;
            for seq in seqs {
                n += s.execute(params![group, seq, instance]).map_err(self.e())? as u64;
            }
            Ok(n)
        })
    }

    fn ack(&self, group: &str, ids: &[EntryId]) -> Result<u64> {
        let seqs = ids.iter().map(|&i| seq_of(i)).collect::<Result<Vec<_>>>()?;
        self.write_light(|tx| {
            self.group_position(tx, group)?;
            // NOTE: a batch acknowledges runs of consecutive seqs: one statement per
            // run, not per entry (see `load_in`).
            let mut s = tx
                .prepare_cached("DELETE FROM log_pending WHERE grp = ?1 AND seq BETWEEN ?2 AND ?3")
                .map_err(self.e())?;
            let mut n = 0u64;
            for (first, last) in seq_runs(seqs) {
                n += s.execute(params![group, first, last]).map_err(self.e())? as u64;
            }
            Ok(n)
        })
    }

    fn claim_expired(
        &self,
        group: &str,
        instance: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Entry>> {
        check_name("instance", instance)?;
        let max = check_max(max)?;
        let now = now_us();
        let cutoff = now - min_idle.as_micros() as i64;
        self.write(|tx| {
            self.group_position(tx, group)?;
            let claimed: Vec<(i64, i64)> = {
                let mut s = tx
                    .prepare_cached(
                        "UPDATE log_pending SET owner = ?1, claimed_us = ?2, deliveries = deliveries + 1
                         WHERE grp = ?3 AND seq IN (
                             SELECT seq FROM log_pending
                             WHERE grp = ?3 AND owner IS NOT NULL AND claimed_us <= ?4
                             ORDER BY seq LIMIT ?5)
                         RETURNING seq, deliveries",
                    )
                    .map_err(self.e())?;
                let rows = s
                    .query_map(params![instance, now, group, cutoff, max], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(self.e())?;
                rows.collect::<rusqlite::Result<_>>().map_err(self.e())?
            };
            self.load(tx, claimed)
        })
    }

    fn has_expired(&self, group: &str, min_idle: Duration) -> Result<bool> {
        let cutoff = now_us() - min_idle.as_micros() as i64;
        // NOTE: a plain read (WAL): never waits for, nor blocks, a writer.
        self.with_conn(|c| {
            c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM log_pending
                                WHERE grp = ?1 AND owner IS NOT NULL AND claimed_us <= ?2)",
            )
            .and_then(|mut s| s.query_row(params![group, cutoff], |r| r.get(0)))
            .map_err(self.e())
        })
    }

    fn dead_letter(&self, group: &str, id: EntryId, reason: &str, attempts: u32) -> Result<i64> {
        let seq = seq_of(id)?;
        self.write(|tx| {
            self.group_position(tx, group)?;
            let n = tx
                .execute(
                    "DELETE FROM log_pending WHERE grp = ?1 AND seq = ?2",
                    params![group, seq],
                )
                .map_err(self.e())?;
            if n == 0 {
                return Err(LogError::Invalid(format!(
                    "entry {id} is not pending for group {group:?}"
                )));
            }
            let n = tx
                .execute(
                    "INSERT INTO log_dead_letters (grp, seq, event_id, topic, priority,
                         timestamp_us, appended_us, publisher, publisher_seq, codec, payload,
                         metadata, size_bytes, reason, attempts, failed_us)
                     SELECT ?1, seq, event_id, topic, priority, timestamp_us, appended_us,
                         publisher, publisher_seq, codec, payload, metadata, size_bytes,
                         ?3, ?4, ?5
                     FROM log_entries WHERE seq = ?2",
                    params![group, seq, reason, attempts as i64, now_us()],
                )
                .map_err(self.e())?;
            if n == 0 {
                return Err(LogError::Invalid(format!(
                    "entry {id} is no longer in the log (removed by retention)"
                )));
            }
            Ok(tx.last_insert_rowid())
        })
    }

    fn add_dead_letter(
        &self,
        group: &str,
        record: &Record,
        reason: &str,
        attempts: u32,
    ) -> Result<i64> {
        check_name("group", group)?;
        check_record(record)?;
        let (codec, payload) = encode(&record.payload, self.opts.compress_threshold);
        let size = (payload.len() + record.metadata.len()) as i64;
        let now = now_us();
        // NOTE: seq 0 is never an entry's (AUTOINCREMENT starts at 1): the id 0-0.
        self.write(|tx| {
            tx.execute(
                "INSERT INTO log_dead_letters (grp, seq, event_id, topic, priority,
                     timestamp_us, appended_us, publisher, publisher_seq, codec, payload,
                     metadata, size_bytes, reason, attempts, failed_us)
                 VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?6)",
                params![
                    group,
                    record.event_id,
                    record.topic,
                    record.priority as i64,
                    record.timestamp_us,
                    now,
                    record.publisher,
                    record.publisher_seq as i64,
                    codec,
                    payload,
                    record.metadata,
                    size,
                    reason,
                    attempts as i64
                ],
            )
            .map_err(self.e())?;
            Ok(tx.last_insert_rowid())
        })
    }

    fn dead_letters(&self, group: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> {
        let limit = check_max(limit)?;
        self.with_conn(|c| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT dl_id, grp, seq, reason, attempts, failed_us, {RECORD_COLS}
                     FROM log_dead_letters WHERE (?1 IS NULL OR grp = ?1)
                     ORDER BY dl_id LIMIT ?2"
                ))
                .map_err(self.e())?;
            let rows = s
                .query_map(params![group, limit], |r| {
                    Ok(DeadLetter {
                        dl_id: r.get(0)?,
                        group: r.get(1)?,
                        id: id_of(r.get(2)?),
                        reason: r.get(3)?,
                        attempts: r.get::<_, i64>(4)? as u32,
                        failed_us: r.get(5)?,
                        record: record_from_row(r, 6)?,
                    })
                })
                .map_err(self.e())?;
            rows.collect::<rusqlite::Result<_>>().map_err(self.e())
        })
    }

    fn replay_dead_letters(&self, group: &str, dl_ids: Option<&[i64]>) -> Result<u64> {
        let n = self.write(|tx| {
            self.group_position(tx, group)?;
            let ids: Vec<i64> = match dl_ids {
                Some(ids) => ids.to_vec(),
                None => {
                    let mut s = tx
                        .prepare("SELECT dl_id FROM log_dead_letters WHERE grp = ?1 ORDER BY dl_id")
                        .map_err(self.e())?;
                    let rows = s.query_map([group], |r| r.get(0)).map_err(self.e())?;
                    rows.collect::<rusqlite::Result<_>>().map_err(self.e())?
                }
            };
            let now = now_us();
            let mut n = 0u64;
            for dl in ids {
                let seq: Option<i64> = tx
                    .query_row(
                        "SELECT seq FROM log_dead_letters WHERE dl_id = ?1 AND grp = ?2",
                        params![dl, group],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(self.e())?;
                let Some(seq) = seq else { continue };
                // NOTE: an entry retention removed is restored under its old seq
                // (AUTOINCREMENT never hands it out again), so the id stays the same.
                tx.execute(
                    "INSERT OR IGNORE INTO log_entries (seq, event_id, topic, priority,
                         timestamp_us, appended_us, publisher, publisher_seq, codec, payload,
                         metadata, size_bytes)
                     SELECT seq, event_id, topic, priority, timestamp_us, appended_us,
                         publisher, publisher_seq, codec, payload, metadata, size_bytes
                     FROM log_dead_letters WHERE dl_id = ?1",
                    [dl],
                )
                .map_err(self.e())?;
                tx.execute(
                    "INSERT OR REPLACE INTO log_pending (grp, seq, owner, claimed_us, deliveries)
                     VALUES (?1, ?2, NULL, ?3, 0)",
                    params![group, seq, now],
                )
                .map_err(self.e())?;
                tx.execute("DELETE FROM log_dead_letters WHERE dl_id = ?1", [dl])
                    .map_err(self.e())?;
                n += 1;
            }
            Ok(n)
        })?;
        if n > 0 {
            self.notifier.bump();
        }
        Ok(n)
    }

    fn requeue(&self, group: &str, ids: &[EntryId]) -> Result<u64> {
        let n = self.write(|tx| {
            let position = self.group_position(tx, group)?;
            let now = now_us();
            // NOTE: only entries still in the log and already handed to the group
            // (seq <= position); REPLACE also hands back one an instance holds now.
            let mut s = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO log_pending (grp, seq, owner, claimed_us, deliveries)
                     SELECT ?1, seq, NULL, ?2, 0 FROM log_entries WHERE seq = ?3 AND seq <= ?4",
                )
                .map_err(self.e())?;
            let mut n = 0u64;
            for id in ids {
                let seq = seq_of(*id)?;
                n += s
                    .execute(params![group, now, seq, position])
                    .map_err(self.e())? as u64;
            }
            Ok(n)
        })?;
        if n > 0 {
            self.notifier.bump();
        }
        Ok(n)
    }

    fn remove_dead_letters(&self, dl_ids: &[i64]) -> Result<u64> {
        self.write(|tx| {
            let mut s = tx
                .prepare_cached("DELETE FROM log_dead_letters WHERE dl_id = ?1")
                .map_err(self.e())?;
            let mut n = 0u64;
            for dl in dl_ids {
                n += s.execute([dl]).map_err(self.e())? as u64;
            }
            Ok(n)
        })
    }

    fn group_stats(&self, group: &str) -> Result<GroupStats> {
        self.with_conn(|c| {
            let position = self.group_position(c, group)?;
            let (pending, ready): (i64, i64) = c
                .query_row(
                    "SELECT count(owner), count(*) - count(owner) FROM log_pending WHERE grp = ?1",
                    [group],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(self.e())?;
            let lag: i64 = c
                .query_row(
                    "SELECT count(*) FROM log_entries WHERE seq > ?1",
                    [position],
                    |r| r.get(0),
                )
                .map_err(self.e())?;
            let dead: i64 = c
                .query_row(
                    "SELECT count(*) FROM log_dead_letters WHERE grp = ?1",
                    [group],
                    |r| r.get(0),
                )
                .map_err(self.e())?;
            Ok(GroupStats {
                name: group.to_string(),
                pending: pending as u64,
                ready: ready as u64,
                lag: lag as u64,
                dead_letters: dead as u64,
                position: (position > 0).then(|| id_of(position)),
            })
        })
    }

    fn stats(&self) -> Result<LogStats> {
        self.with_conn(|c| {
            let (entries, bytes, first, last): (i64, i64, Option<i64>, Option<i64>) = c
                .query_row(
                    "SELECT count(*), coalesce(sum(size_bytes), 0), min(seq), max(seq)
                     FROM log_entries",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(self.e())?;
            let groups: i64 = c
                .query_row("SELECT count(*) FROM log_groups", [], |r| r.get(0))
                .map_err(self.e())?;
            let dead: i64 = c
                .query_row("SELECT count(*) FROM log_dead_letters", [], |r| r.get(0))
                .map_err(self.e())?;
            let dropped: i64 = c
                .query_row(
                    "SELECT value FROM log_meta WHERE key = 'dropped_unhandled'",
                    [],
                    |r| r.get(0),
                )
                .map_err(self.e())?;
            Ok(LogStats {
                entries: entries as u64,
                bytes: bytes as u64,
                first: first.map(id_of),
                last: last.map(id_of),
                groups: groups as u64,
                dead_letters: dead as u64,
                dropped_unhandled: dropped as u64,
            })
        })
    }

    fn range(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        topics: Option<&[String]>,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<(EntryId, Record)>> {
        let limit = check_max(limit)? as usize;
        let patterns = match topics {
            Some(ts) => Some(
                ts.iter()
                    .map(|t| {
                        Pattern::parse(t)
                            .map_err(|e| LogError::Invalid(format!("topic pattern {t:?}: {e}")))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        let after = match after {
            Some(id) => seq_of(id)?,
            None => 0,
        };
        self.with_conn(|c| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT seq, {RECORD_COLS} FROM log_entries
                     WHERE seq > ?1 AND (?2 IS NULL OR timestamp_us >= ?2)
                       AND (?3 IS NULL OR timestamp_us < ?3)
                     ORDER BY seq"
                ))
                .map_err(self.e())?;
            let mut rows = s.query(params![after, since, until]).map_err(self.e())?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(self.e())? {
                let topic: String = r.get(2).map_err(self.e())?;
                if let Some(ps) = &patterns {
                    if !ps.iter().any(|p| p.matches(&topic)) {
                        continue;
                    }
                }
                let seq: i64 = r.get(0).map_err(self.e())?;
                out.push((id_of(seq), record_from_row(r, 1).map_err(self.e())?));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn apply_retention(&self, policy: &Retention) -> Result<RetentionReport> {
        let now = now_us();
        let cutoff = |d: Duration| now.saturating_sub(d.as_micros().min(i64::MAX as u128) as i64);
        self.write(|tx| {
            let mut report = RetentionReport::default();
            // The low-water mark: every entry below it is handled by every group.
            let low = |tx: &rusqlite::Transaction<'_>| -> Result<i64> {
                tx.query_row(
                    "SELECT min(coalesce((SELECT min(position) + 1 FROM log_groups), 9223372036854775807),
                                coalesce((SELECT min(seq) FROM log_pending), 9223372036854775807))",
                    [],
                    |r| r.get(0),
                )
                .map_err(self.e())
            };
            if let Some(hard) = policy.hard_max_age {
                let t = cutoff(hard);
                let mark = low(tx)?;
                tx.execute(
                    "DELETE FROM log_pending WHERE seq IN
                        (SELECT seq FROM log_entries WHERE timestamp_us < ?1 AND seq >= ?2)",
                    params![t, mark],
                )
                .map_err(self.e())?;
                let dropped = tx
                    .execute(
                        "DELETE FROM log_entries WHERE timestamp_us < ?1 AND seq >= ?2",
                        params![t, mark],
                    )
                    .map_err(self.e())? as u64;
                if dropped > 0 {
                    tx.execute(
                        "UPDATE log_meta SET value = value + ?1 WHERE key = 'dropped_unhandled'",
                        [dropped as i64],
                    )
                    .map_err(self.e())?;
                }
                report.dropped_unhandled = dropped;
            }
            let mark = low(tx)?;
            if let Some(age) = policy.max_age {
                let t = cutoff(age);
                report.deleted_by_age = tx
                    .execute(
                        "DELETE FROM log_entries WHERE seq < ?1 AND timestamp_us < ?2",
                        params![mark, t],
                    )
                    .map_err(self.e())? as u64;
                report.kept_unhandled = tx
                    .query_row(
                        "SELECT count(*) FROM log_entries WHERE seq >= ?1 AND timestamp_us < ?2",
                        params![mark, t],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(self.e())? as u64;
            }
            if let Some(max_bytes) = policy.max_bytes {
                let total: i64 = tx
                    .query_row(
                        "SELECT coalesce(sum(size_bytes), 0) FROM log_entries",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(self.e())?;
                let mut excess = total - max_bytes.min(i64::MAX as u64) as i64;
                if excess > 0 {
                    let mut cut = 0i64;
                    {
                        let mut s = tx
                            .prepare(
                                "SELECT seq, size_bytes FROM log_entries WHERE seq < ?1 ORDER BY seq",
                            )
                            .map_err(self.e())?;
                        let mut rows = s.query([mark]).map_err(self.e())?;
                        while excess > 0 {
                            let Some(r) = rows.next().map_err(self.e())? else {
                                break;
                            };
                            cut = r.get(0).map_err(self.e())?;
                            excess -= r.get::<_, i64>(1).map_err(self.e())?;
                        }
                    }
                    report.deleted_by_size = tx
                        .execute("DELETE FROM log_entries WHERE seq <= ?1", [cut])
                        .map_err(self.e())? as u64;
                }
            }
            Ok(report)
        })
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.conn.lock().take();
        self.notifier.bump();
    }
}

fn encode(data: &[u8], threshold: usize) -> (i64, std::borrow::Cow<'_, [u8]>) {
    if data.len() > threshold {
        let packed = lz4_flex::compress_prepend_size(data);
        if packed.len() < data.len() {
            return (1, std::borrow::Cow::Owned(packed));
        }
    }
    (0, std::borrow::Cow::Borrowed(data))
}
