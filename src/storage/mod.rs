//! Durable event store: every accepted event is written to a local SQLite database
//! (WAL mode) before dispatch, together with the consumers it was routed to, their
//! acknowledgements and the dead letters.
//!
//! Plain Rust (no pyo3). The layout is documented in `docs/persistence.md`.
//!
//! * One writer thread owns the write connection. Publishers hand it commands through a
//!   channel; each round it takes everything queued, writes it in one transaction and
//!   commits once (group commit), then answers every waiter. In [`Durability::Sync`]
//!   the commit is fsynced (`synchronous=FULL`), so many concurrent publishers share one
//!   fsync; in [`Durability::Async`] commits are not fsynced and the writer forces a sync
//!   every `flush_interval`.
//! * Reads ([`Store::unacked`], [`Store::replay`], [`Store::dead_letters`]) use a
//!   separate read connection and see everything committed.

mod compress;
mod error;
mod schema;
pub use schema::sqlite_process_setup;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::Connection;

pub use compress::{decode as decode_payload, decompress_lz4, encode as encode_payload, Codec};
pub use error::{Result, StorageError};
pub use writer::{AckKey, AppendSource, Reply, Row, Targets};

use writer::{Cmd, DeadLetterCmd, Writer, WriterConfig};

/// How many commands may wait for the writer before publishers block (back-pressure
/// instead of unbounded memory when the disk is slower than the publishers).
const QUEUE_CAPACITY: usize = 65_536;

/// When an append counts as done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// `append` returns once the event is fsynced to disk (group commit: concurrent
    /// appends share one fsync). Nothing acknowledged is lost on a crash or power cut.
    Sync,
    /// Commits are not fsynced; the writer syncs every `flush_interval`. A process crash
    /// loses only what was still queued for the writer; a power cut or OS crash can lose
    /// up to `flush_interval` of acknowledged events.
    Async {
        /// Longest time between syncs.
        flush_interval: Duration,
    },
}

/// Options of [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The database file; parent directories are created.
    pub path: PathBuf,
    /// See [`Durability`]. Default [`Durability::Sync`].
    pub durability: Durability,
    /// Payloads larger than this many bytes are stored LZ4-compressed. Default 4096.
    pub compress_threshold: usize,
    /// Retention: delete events whose `timestamp_us` is older than this.
    pub max_age: Option<Duration>,
    /// Retention: then delete the oldest events until the stored total (see
    /// [`StoreStats::total_bytes`]) is at most this many bytes.
    pub max_bytes: Option<u64>,
    /// How often the writer applies retention by itself when `max_age` or `max_bytes` is
    /// set (`None`: only when [`Store::apply_retention`] is called). Default 60 s.
    pub retention_interval: Option<Duration>,
    /// Hard cap on the database file size (`PRAGMA max_page_count`): appends that would
    /// grow the file beyond it fail with [`StorageError::Full`] instead of deleting
    /// anything. Useful to simulate a full disk. Default `None`.
    pub hard_limit_bytes: Option<u64>,
    /// Run `PRAGMA quick_check` at open (reads the whole file: seconds for gigabytes).
    /// Default true.
    pub verify_on_open: bool,
}

impl StoreOptions {
    /// Defaults for a store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions {
            path: path.into(),
            durability: Durability::Sync,
            compress_threshold: 4096,
            max_age: None,
            max_bytes: None,
            retention_interval: Some(Duration::from_secs(60)),
            hard_limit_bytes: None,
            verify_on_open: true,
        }
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the store, assigned by the store at append (ignored on input).
    /// Strictly increasing, never reused.
    pub seq: i64,
    /// The event's id (kept as given, so consumers can de-duplicate redeliveries).
    pub id: String,
    /// Topic, e.g. `hook.tool.use`.
    // NOTE: Arc<str> for the three names: events of one route or producer share them
    // instead of allocating copies per event on the publishing thread.
    pub topic: Arc<str>,
    /// Event type.
    pub event_type: Arc<str>,
    /// Producer name.
    pub source: Arc<str>,
    /// Event time, unix microseconds UTC (what replay windows and retention use).
    pub timestamp_us: i64,
    /// When the bus accepted it, unix microseconds UTC.
    pub published_us: i64,
    /// Priority, 1..=4.
    pub priority: u8,
    /// Correlation id, if any.
    pub correlation_id: Option<String>,
    /// Raw JSON bytes of the payload (always uncompressed here).
    pub data_json: Vec<u8>,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow {
    /// Dead-letter id (for [`Store::remove_dead_letters`]).
    pub id: i64,
    /// The event (its `seq` is the seq it had in the store, or 0 if unknown).
    pub event: StoredEvent,
    /// The consumer that gave up on it.
    pub consumer: String,
    /// The errors of the attempts.
    pub errors: Vec<String>,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was dead-lettered, unix microseconds.
    pub failed_us: i64,
}

/// What [`Store::apply_retention`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Events deleted because they were older than `max_age`.
    pub deleted_by_age: u64,
    /// Events deleted (oldest first) to get under `max_bytes`.
    pub deleted_by_size: u64,
    /// Stored total before.
    pub bytes_before: u64,
    /// Stored total after.
    pub bytes_after: u64,
}

/// Counters of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Stored events.
    pub events: u64,
    /// Sum of the events' approximate stored sizes (payload as stored + strings + a fixed
    /// per-row overhead); what `max_bytes` limits.
    pub total_bytes: u64,
    /// (event, consumer) deliveries not acknowledged yet.
    pub pending_deliveries: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Fire-and-forget writes (append_async, acks, background retention) that failed.
    pub async_errors: u64,
}

/// State shared between the store handle and its writer thread.
pub(crate) struct Shared {
    total_bytes: AtomicU64,
    async_errors: AtomicU64,
    last_async_error: Mutex<Option<StorageError>>,
}

impl Shared {
    pub(crate) fn record_async_error(&self, e: StorageError) {
        self.async_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_async_error.lock() = Some(e);
    }
}

/// Current time in unix microseconds.
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The durable event store. `Send + Sync`: share it with `Arc`.
pub struct Store {
    path: PathBuf,
    compress_threshold: usize,
    tx: Option<SyncSender<Cmd>>,
    writer: Option<JoinHandle<()>>,
    reader: Mutex<Connection>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Columns read back for an event, in the order [`event_from_row`] expects.
const EVENT_COLUMNS: &str = "e.seq, e.id, e.topic, e.event_type, e.source, e.timestamp_us, \
     e.published_us, e.priority, e.correlation_id, e.codec, e.data";

impl Store {
    /// Open (or create) the store at `opts.path`.
    ///
    /// A file that is not an mpm-events store, or fails the integrity check, gives
    /// [`StorageError::Corrupt`] naming the path; the file is left untouched.
    pub fn open(opts: StoreOptions) -> Result<Store> {
        let path = opts.path.clone();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StorageError::io(parent, e))?;
        }
        schema::check_file_header(&path)?;
        let wconn = schema::connect(&path)?;
        schema::init_writer(&wconn, &path, &opts.durability, opts.verify_on_open)?;
        if let Some(limit) = opts.hard_limit_bytes {
            schema::set_hard_limit(&wconn, &path, limit)?;
        }
        let rconn = schema::connect(&path)?;
        rconn
            .pragma_update(None, "query_only", true)
            .map_err(|e| StorageError::from_sqlite(&path, e))?;

        let shared = Arc::new(Shared {
            total_bytes: AtomicU64::new(0),
            async_errors: AtomicU64::new(0),
            last_async_error: Mutex::new(None),
        });
        let writer = Writer::new(
            wconn,
            WriterConfig {
                path: path.clone(),
                durability: opts.durability.clone(),
                max_age: opts.max_age,
                max_bytes: opts.max_bytes,
                retention_interval: opts.retention_interval,
            },
            shared.clone(),
        )?;
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let handle = std::thread::Builder::new()
            .name("mpm-events-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError::io(&path, e))?;
        Ok(Store {
            path,
            compress_threshold: opts.compress_threshold,
            tx: Some(tx),
            writer: Some(handle),
            reader: Mutex::new(rconn),
            shared,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx
            .as_ref()
            .ok_or(StorageError::Closed)?
            .send(cmd)
            .map_err(|_| StorageError::Closed)
    }

    /// Send a command and block until the writer answers it.
    fn call<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T> {
        let (rtx, rrx) = sync_channel(1);
        self.send(make(Box::new(move |r| {
            let _ = rtx.send(r);
        })))?;
        // A dropped reply (writer thread gone) reads as Closed.
        rrx.recv().unwrap_or(Err(StorageError::Closed))
    }

    /// Check and encode (compress) an event for [`Store::append_from`], on the caller's
    /// thread.
    pub fn prepare(&self, mut ev: StoredEvent, targets: impl Into<Targets>) -> Result<Row> {
        if !(1..=4).contains(&ev.priority) {
            return Err(StorageError::InvalidEvent(format!(
                "priority {} of event {} is not in 1..=4",
                ev.priority, ev.id
            )));
        }
        // NOTE: compression runs on the publisher's thread, not the writer's, so that
        // it is spread over the publishers instead of serialising behind the writer.
        let (codec, stored) =
            compress::encode(std::mem::take(&mut ev.data_json), self.compress_threshold);
        ev.data_json = stored;
        ev.seq = 0;
        Ok(Row {
            ev,
            codec,
            targets: targets.into(),
        })
    }

    /// Store one event routed to `targets` (consumer names) and return its seq.
    ///
    /// Sync mode: returns once the event is on disk. Async mode: returns once it is
    /// committed (not yet fsynced). Errors ([`StorageError::Full`], ...) mean it was not
    /// stored; nothing stored before is affected.
    pub fn append(&self, ev: StoredEvent, targets: impl Into<Targets>) -> Result<i64> {
        let row = self.prepare(ev, targets)?;
        let seqs = self.call(|reply| Cmd::Append {
            rows: vec![row],
            reply: Some(reply),
        })?;
        seqs.first().copied().ok_or(StorageError::Closed)
    }

    /// Store several events in one transaction (all or none) and return their seqs.
    pub fn append_batch(&self, evs: Vec<(StoredEvent, Vec<String>)>) -> Result<Vec<i64>> {
        let rows = evs
            .into_iter()
            .map(|(e, t)| self.prepare(e, t))
            .collect::<Result<Vec<_>>>()?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.call(|reply| Cmd::Append {
            rows,
            reply: Some(reply),
        })
    }

    /// Queue an event and return at once (durable within the flush interval in Async
    /// mode, at the next group commit in Sync mode). A later failure is counted in
    /// [`StoreStats::async_errors`] and kept for [`Store::take_async_error`].
    ///
    /// NOTE: blocks only if 65,536 commands are already queued (back-pressure when the
    /// disk cannot keep up); the same holds for every write method.
    pub fn append_async(&self, ev: StoredEvent, targets: impl Into<Targets>) -> Result<()> {
        let row = self.prepare(ev, targets)?;
        self.send(Cmd::Append {
            rows: vec![row],
            reply: None,
        })
    }

    /// Queue an event and call `done` with its seq (or the error) once it is durable (Sync)
    /// or committed (Async), without blocking the caller. `done` runs on the writer
    /// thread: it must be quick (complete a future, send on a channel).
    pub fn append_with(
        &self,
        ev: StoredEvent,
        targets: impl Into<Targets>,
        done: impl FnOnce(Result<i64>) + Send + 'static,
    ) -> Result<()> {
        let row = self.prepare(ev, targets)?;
        self.send(Cmd::Append {
            rows: vec![row],
            reply: Some(Box::new(move |r: Result<Vec<i64>>| {
                done(r.and_then(|s| s.first().copied().ok_or(StorageError::Closed)))
            })),
        })
    }

    /// Have the writer take the rows queued in `source` at its next round (see
    /// [`AppendSource`]): one command for however many rows are queued by then.
    pub fn append_from(&self, source: Arc<dyn AppendSource>) -> Result<()> {
        self.send(Cmd::AppendFrom(source))
    }

    /// Like [`Store::append_with`], returning a receiver to `.await` (from async code) for
    /// the outcome. A dropped sender (store closed) reads as an error on the receiver.
    pub fn append_deferred(
        &self,
        ev: StoredEvent,
        targets: impl Into<Targets>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<i64>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.append_with(ev, targets, move |r| {
            let _ = tx.send(r);
        })?;
        Ok(rx)
    }

    /// Record that `consumer` has processed event `event_id`. Batched with the next
    /// commit and not waited for: a lost ack means one redelivery after a restart.
    pub fn ack(&self, event_id: &str, consumer: &str) -> Result<()> {
        self.send(Cmd::Ack {
            pairs: vec![(AckKey::Id(event_id.to_string()), consumer.into())],
        })
    }

    /// Several acks at once: `(event_id, consumer)` pairs.
    pub fn ack_many(&self, pairs: Vec<(String, String)>) -> Result<()> {
        self.ack_keys(
            pairs
                .into_iter()
                .map(|(id, c)| (AckKey::Id(id), c.into()))
                .collect(),
        )
    }

    /// Several acks at once, each by event id or by sequence number.
    pub fn ack_keys(&self, pairs: Vec<(AckKey, Arc<str>)>) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        self.send(Cmd::Ack { pairs })
    }

    /// Block until everything queued before this call is committed and on disk.
    pub fn flush(&self) -> Result<()> {
        self.call(|reply| Cmd::Flush { reply })
    }

    /// Stored events that some of `consumers` were routed to and have not acknowledged,
    /// in seq order, each with those consumers (sorted). For redelivery at restart.
    ///
    /// Sees what is committed: call [`Store::flush`] first to include queued writes.
    pub fn unacked(&self, consumers: &[String]) -> Result<Vec<(StoredEvent, Vec<String>)>> {
        if consumers.is_empty() {
            return Ok(Vec::new());
        }
        self.checkpoint()?;
        let sq = |e| StorageError::from_sqlite(&self.path, e);
        let conn = self.reader.lock();
        let mut out: Vec<(StoredEvent, Vec<String>)> = Vec::new();
        // NOTE: SQLite allows 32766 bound parameters; chunk just in case of huge lists
        // and merge the (seq-ordered) chunks afterwards.
        for chunk in consumers.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, d.consumer FROM deliveries d JOIN events e ON e.seq = d.seq \
                 WHERE d.consumer IN ({marks}) ORDER BY d.seq, d.consumer"
            );
            let mut stmt = conn.prepare(&sql).map_err(sq)?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(chunk.iter()))
                .map_err(sq)?;
            while let Some(r) = rows.next().map_err(sq)? {
                let seq: i64 = r.get(0).map_err(sq)?;
                let consumer: String = r.get(11).map_err(sq)?;
                match out.last_mut() {
                    Some((ev, cs)) if ev.seq == seq => cs.push(consumer),
                    _ => out.push((self.event_from_row(r)?, vec![consumer])),
                }
            }
        }
        if consumers.len() > 500 {
            out.sort_by_key(|(e, _)| e.seq);
            let mut merged: Vec<(StoredEvent, Vec<String>)> = Vec::with_capacity(out.len());
            for (e, cs) in out {
                match merged.last_mut() {
                    Some((m, mcs)) if m.seq == e.seq => mcs.extend(cs),
                    _ => merged.push((e, cs)),
                }
            }
            out = merged;
        }
        for (_, cs) in &mut out {
            cs.sort();
            cs.dedup();
        }
        Ok(out)
    }

    /// Stored events with `since_us <= timestamp_us < until_us` (either bound optional)
    /// whose topic passes `topic_filter`, ordered by timestamp then seq.
    pub fn replay(
        &self,
        since_us: Option<i64>,
        until_us: Option<i64>,
        topic_filter: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<StoredEvent>> {
        let mut out = Vec::new();
        self.replay_each(since_us, until_us, topic_filter, &mut |e| {
            out.push(e);
            true
        })?;
        Ok(out)
    }

    /// Streaming form of [`Store::replay`]: calls `each` per event in order until it
    /// returns false. Payloads of filtered-out events are not read or decompressed.
    ///
    /// NOTE: the read connection is locked while `each` runs: `each` must not call the
    /// store's read methods (`replay`, `unacked`, `dead_letters`, `stats`) itself.
    pub fn replay_each(
        &self,
        since_us: Option<i64>,
        until_us: Option<i64>,
        topic_filter: &dyn Fn(&str) -> bool,
        each: &mut dyn FnMut(StoredEvent) -> bool,
    ) -> Result<()> {
        let sq = |e| StorageError::from_sqlite(&self.path, e);
        let conn = self.reader.lock();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e \
             WHERE e.timestamp_us >= ?1 AND e.timestamp_us < ?2 ORDER BY e.timestamp_us, e.seq"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(sq)?;
        let mut rows = stmt
            .query([since_us.unwrap_or(i64::MIN), until_us.unwrap_or(i64::MAX)])
            .map_err(sq)?;
        while let Some(r) = rows.next().map_err(sq)? {
            let topic = r
                .get_ref(2)
                .map_err(sq)?
                .as_str()
                .map_err(|e| sq(e.into()))?;
            if !topic_filter(topic) {
                continue;
            }
            if !each(self.event_from_row(r)?) {
                break;
            }
        }
        Ok(())
    }

    /// Store a dead letter: `event` failed `attempts` times for `consumer` with `errors`.
    /// In the same transaction the pending delivery of the event to `consumer` is
    /// removed (it moved to the dead letters, so it is not redelivered at restart).
    /// Returns the dead letter's id once it is committed.
    pub fn put_dead_letter(
        &self,
        event: &StoredEvent,
        consumer: &str,
        errors: &[String],
        attempts: u32,
    ) -> Result<i64> {
        let event_seq = event.seq;
        let mut row = self.prepare(event.clone(), Vec::new())?;
        row.ev.seq = event_seq;
        let errors_json =
            serde_json::to_string(errors).map_err(|e| StorageError::InvalidEvent(e.to_string()))?;
        let dl = Box::new(DeadLetterCmd {
            row,
            event_seq,
            consumer: consumer.to_string(),
            errors_json,
            attempts,
            failed_us: now_us(),
        });
        self.call(|reply| Cmd::DeadLetter { dl, reply })
    }

    /// All dead letters, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterRow>> {
        let sq = |e| StorageError::from_sqlite(&self.path, e);
        let conn = self.reader.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT coalesce(e.event_seq, 0), e.event_id, e.topic, e.event_type, e.source, \
                 e.timestamp_us, e.published_us, e.priority, e.correlation_id, e.codec, e.data, \
                 e.dl_id, e.consumer, e.errors_json, e.attempts, e.failed_us \
                 FROM dead_letters e ORDER BY e.dl_id",
            )
            .map_err(sq)?;
        let mut rows = stmt.query([]).map_err(sq)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(sq)? {
            let event = self.event_from_row(r)?;
            let errors_json: String = r.get(13).map_err(sq)?;
            let errors: Vec<String> =
                serde_json::from_str(&errors_json).map_err(|e| StorageError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("dead letter errors are not a JSON list: {e}"),
                })?;
            out.push(DeadLetterRow {
                id: r.get(11).map_err(sq)?,
                event,
                consumer: r.get(12).map_err(sq)?,
                errors,
                attempts: r.get(14).map_err(sq)?,
                failed_us: r.get(15).map_err(sq)?,
            });
        }
        Ok(out)
    }

    /// Delete the dead letters with these ids; returns how many existed.
    pub fn remove_dead_letters(&self, ids: &[i64]) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids = ids.to_vec();
        self.call(|reply| Cmd::RemoveDeadLetters { ids, reply })
    }

    /// Apply retention now (by age, then by size); see [`StoreOptions::max_age`] and
    /// [`StoreOptions::max_bytes`]. Runs on the writer thread between group commits.
    pub fn apply_retention(&self) -> Result<RetentionReport> {
        self.call(|reply| Cmd::Retention { reply })
    }

    /// Has the writer put the deliveries it keeps in memory into the `deliveries` table,
    /// so the read connection sees them all. A closed store has nothing in memory.
    fn checkpoint(&self) -> Result<()> {
        match self.call(|reply| Cmd::Checkpoint { reply }) {
            Err(StorageError::Closed) => Ok(()),
            r => r,
        }
    }

    /// Counters (a few `count(*)` queries on the read connection).
    pub fn stats(&self) -> Result<StoreStats> {
        self.checkpoint()?;
        let sq = |e| StorageError::from_sqlite(&self.path, e);
        let conn = self.reader.lock();
        let count = |sql: &str| -> Result<u64> {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(sq)
        };
        Ok(StoreStats {
            events: count("SELECT count(*) FROM events")?,
            total_bytes: count("SELECT coalesce(sum(size_bytes), 0) FROM events")?,
            pending_deliveries: count("SELECT count(*) FROM deliveries")?,
            dead_letters: count("SELECT count(*) FROM dead_letters")?,
            async_errors: self.shared.async_errors.load(Ordering::Relaxed),
        })
    }

    /// The highest seq committed so far (0 for an empty store). Events appended after
    /// this call get higher seqs, so it separates stored history from live traffic.
    pub fn last_seq(&self) -> Result<i64> {
        let conn = self.reader.lock();
        conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))
            .map_err(|e| StorageError::from_sqlite(&self.path, e))
    }

    /// The last error of a fire-and-forget write, if any (cleared by this call).
    pub fn take_async_error(&self) -> Option<StorageError> {
        self.shared.last_async_error.lock().take()
    }

    /// Flush everything queued, stop the writer thread and close the files.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        // NOTE: Shutdown is queued behind everything already sent, so the writer writes
        // (and in Async mode syncs) all of it before it stops.
        let _ = tx.send(Cmd::Shutdown);
        drop(tx);
        if let Some(h) = self.writer.take() {
            h.join().map_err(|_| StorageError::Database {
                path: self.path.clone(),
                detail: "the writer thread panicked".into(),
            })?;
        }
        match self.take_async_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Build a [`StoredEvent`] from the first 11 columns ([`EVENT_COLUMNS`] order),
    /// decompressing the payload.
    fn event_from_row(&self, r: &rusqlite::Row<'_>) -> Result<StoredEvent> {
        let sq = |e| StorageError::from_sqlite(&self.path, e);
        let codec_v: i64 = r.get(9).map_err(sq)?;
        let codec = Codec::from_column(codec_v).ok_or_else(|| StorageError::Corrupt {
            path: self.path.clone(),
            detail: format!("unknown payload codec {codec_v}"),
        })?;
        let seq: i64 = r.get(0).map_err(sq)?;
        let data =
            compress::decode(codec, r.get(10).map_err(sq)?).map_err(|e| StorageError::Corrupt {
                path: self.path.clone(),
                detail: format!("payload of seq {seq} does not decompress: {e}"),
            })?;
        Ok(StoredEvent {
            seq,
            id: r.get(1).map_err(sq)?,
            topic: r.get::<_, String>(2).map_err(sq)?.into(),
            event_type: r.get::<_, String>(3).map_err(sq)?.into(),
            source: r.get::<_, String>(4).map_err(sq)?.into(),
            timestamp_us: r.get(5).map_err(sq)?,
            published_us: r.get(6).map_err(sq)?,
            priority: r.get(7).map_err(sq)?,
            correlation_id: r.get(8).map_err(sq)?,
            data_json: data,
        })
    }
}

impl Drop for Store {
    /// Same as [`Store::close`], ignoring errors: queued writes are not thrown away.
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
