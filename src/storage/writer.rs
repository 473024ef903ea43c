//! The single writer thread: owns the write connection and applies everything queued
//! in one transaction per round (group commit).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::compress::Codec;
use super::error::{Result, StorageError};
use super::{now_us, Durability, RetentionReport, Shared, StoredEvent};

/// Most events written in one transaction; more stay queued for the next round so that
/// one huge burst does not delay every waiter behind one giant commit.
const MAX_BATCH_EVENTS: usize = 16_384;

/// Longest time the deliveries of new events stay in memory only (see [`Recent`]): after
/// a crash, events acknowledged within this window are delivered again.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Most events whose deliveries are kept in memory before a checkpoint writes them.
// NOTE: 24 bytes a slot, so at most 24 MiB; a consumer that lags by more than this
// only costs a checkpoint (rows for what it has not acknowledged yet) per that many events.
const MAX_RECENT: usize = 1 << 20;

/// Rows inserted by one statement when a round has that many.
///
/// NOTE: one statement for many rows pays the statement's fixed costs (reset, step,
/// the AUTOINCREMENT counter's update) once for all of them: a measured share of the
/// writer's time per event.
const ROWS_PER_INSERT: usize = 64;

/// Columns bound per row by [`bind_row`].
const COLUMNS: usize = 12;

/// `INSERT INTO events ...` for `n` rows.
fn insert_sql(n: usize) -> String {
    let row = format!("({})", ["?"; COLUMNS].join(", "));
    format!(
        "INSERT INTO events (id, topic, event_type, source, timestamp_us, published_us, \
         priority, correlation_id, codec, data, size_bytes, targets) VALUES {}",
        vec![row; n].join(", ")
    )
}

static INSERT_ONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| insert_sql(1));
static INSERT_MANY: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| insert_sql(ROWS_PER_INSERT));

/// Binds `row`'s columns (in [`insert_sql`] order) from parameter `base + 1` on.
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    base: usize,
    row: &Row,
    targets_json: Option<&str>,
) -> rusqlite::Result<()> {
    let e = &row.ev;
    stmt.raw_bind_parameter(base + 1, &e.id)?;
    stmt.raw_bind_parameter(base + 2, &*e.topic)?;
    stmt.raw_bind_parameter(base + 3, &*e.event_type)?;
    stmt.raw_bind_parameter(base + 4, &*e.source)?;
    stmt.raw_bind_parameter(base + 5, e.timestamp_us)?;
    stmt.raw_bind_parameter(base + 6, e.published_us)?;
    stmt.raw_bind_parameter(base + 7, e.priority)?;
    stmt.raw_bind_parameter(base + 8, &e.correlation_id)?;
    stmt.raw_bind_parameter(base + 9, row.codec as i64)?;
    stmt.raw_bind_parameter(base + 10, &e.data_json)?;
    stmt.raw_bind_parameter(base + 11, row.size_bytes() as i64)?;
    stmt.raw_bind_parameter(base + 12, targets_json)?;
    Ok(())
}

/// The consumers an event was routed to; events of one route share one list.
pub type Targets = Arc<[String]>;

/// Completion callback of a command. Runs on the writer thread, so it must be quick
/// (send on a channel, wake a future).
pub type Reply<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// An event ready to be inserted: payload already encoded by the caller's thread
/// (made by [`super::Store::prepare`]).
pub struct Row {
    /// The event; `data_json` holds the *stored* bytes (compressed if `codec` says so).
    pub ev: StoredEvent,
    pub codec: Codec,
    /// Consumers the event was routed to (for restart redelivery).
    pub targets: Targets,
}

impl Row {
    /// Approximate bytes the row takes in the database; what `max_bytes` counts.
    pub fn size_bytes(&self) -> u64 {
        // NOTE: 48 bytes stand for the integer columns, record header and index entries.
        let e = &self.ev;
        (e.data_json.len()
            + e.id.len()
            + e.topic.len()
            + e.event_type.len()
            + e.source.len()
            + e.correlation_id.as_ref().map_or(0, |c| c.len())
            + 48) as u64
    }
}

pub(crate) struct DeadLetterCmd {
    pub row: Row,
    /// The event's seq in the store if known (`0` or negative: unknown).
    pub event_seq: i64,
    pub consumer: String,
    pub errors_json: String,
    pub attempts: u32,
    pub failed_us: i64,
}

/// Which event an acknowledgement is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckKey {
    /// By event id (a scan of `events`: there is no index on ids; prefer `Seq`).
    Id(String),
    /// By the store's sequence number (a primary-key delete, cheaper).
    Seq(i64),
}

/// A queue of rows the writer takes from when it is told to (see
/// [`super::Store::append_from`]): publishers push to it, and only the push that finds
/// it empty sends the writer a command, so the writer takes many rows per command.
pub trait AppendSource: Send + Sync {
    /// Everything queued now, and the callback for their seqs (in order) or the error;
    /// `None` if nothing is queued.
    fn take(&self) -> Option<(Vec<Row>, Reply<Vec<i64>>)>;
}

pub(crate) enum Cmd {
    Append {
        rows: Vec<Row>,
        reply: Option<Reply<Vec<i64>>>,
    },
    /// Take the rows queued in a source and append them as one `Append`.
    AppendFrom(Arc<dyn AppendSource>),
    Ack {
        pairs: Vec<(AckKey, Arc<str>)>,
    },
    DeadLetter {
        dl: Box<DeadLetterCmd>,
        reply: Reply<i64>,
    },
    RemoveDeadLetters {
        ids: Vec<i64>,
        reply: Reply<usize>,
    },
    Retention {
        reply: Reply<RetentionReport>,
    },
    Flush {
        reply: Reply<()>,
    },
    /// Write the in-memory deliveries to the `deliveries` table (before reading it).
    Checkpoint {
        reply: Reply<()>,
    },
    Shutdown,
}

/// What a write command produced, delivered to its reply after the commit.
enum Outcome {
    Seqs(Vec<i64>),
    Id(i64),
    Count(usize),
    Nothing,
}

/// Pending deliveries of the events appended since the last checkpoint, in memory.
///
/// NOTE: writing a `deliveries` row per (event, consumer) at append and deleting it at
/// the acknowledgement was most of the writer's work per event. Most deliveries are
/// acknowledged within milliseconds, so they are tracked here and only the ones still
/// pending at a checkpoint (every [`CHECKPOINT_EVERY`], at flush, close, retention, or
/// when [`MAX_RECENT`] events wait) become rows. The events' `targets` column lets a
/// restart after a crash rebuild what was in memory (see `schema.rs`).
struct Recent {
    /// The seq of `slots[0]`; deliveries of lower seqs are rows of `deliveries`.
    base: i64,
    /// From `base` on, one per seq: the event's targets and one bit per target still
    /// pending (`None`: no such event, or its deliveries went to the table directly).
    slots: VecDeque<Option<(Targets, u64)>>,
    /// The JSON of the last targets written (their `Arc` is shared by a route's events).
    last_json: Option<(Targets, String)>,
}

impl Recent {
    /// Tracks the deliveries of event `seq`; false if they must go to the table now
    /// (more than 64 targets, or a seq below `base`).
    fn push(&mut self, seq: i64, targets: &Targets) -> bool {
        let end = self.end();
        if targets.len() > 64 || seq < end {
            return false;
        }
        for _ in end..seq {
            self.slots.push_back(None);
        }
        let mask = if targets.len() == 64 {
            u64::MAX
        } else {
            (1u64 << targets.len()) - 1
        };
        self.slots
            .push_back((mask != 0).then(|| (targets.clone(), mask)));
        true
    }

    /// The lowest seq [`Recent::push`] accepts next.
    fn end(&self) -> i64 {
        self.base + self.slots.len() as i64
    }

    /// Marks `consumer`'s delivery of `seq` done; false if `seq` is not tracked here
    /// (its delivery, if any, is a row of `deliveries`).
    fn ack(&mut self, seq: i64, consumer: &str) -> bool {
        if seq < self.base {
            return false;
        }
        let Some(slot) = self.slots.get_mut((seq - self.base) as usize) else {
            return false;
        };
        if let Some((targets, mask)) = slot {
            if let Some(i) = targets.iter().position(|t| t == consumer) {
                *mask &= !(1u64 << i);
                if *mask == 0 {
                    *slot = None;
                }
            }
        }
        true
    }

    /// The `targets` column of `row` (`NULL` for more targets than tracked here).
    fn json_for(&mut self, row: &Row) -> Option<String> {
        if row.targets.len() <= 64 {
            self.targets_json(&row.targets)
        } else {
            None
        }
    }

    /// The `targets` column of an event: a JSON array of names (`NULL` if none).
    fn targets_json(&mut self, targets: &Targets) -> Option<String> {
        if targets.is_empty() {
            return None;
        }
        match &self.last_json {
            Some((t, json)) if Arc::ptr_eq(t, targets) => Some(json.clone()),
            _ => {
                let json = serde_json::to_string(&**targets).unwrap_or_else(|_| "[]".into());
                self.last_json = Some((targets.clone(), json.clone()));
                Some(json)
            }
        }
    }
}

pub(crate) struct WriterConfig {
    pub path: PathBuf,
    pub durability: Durability,
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub retention_interval: Option<Duration>,
}

pub(crate) struct Writer {
    conn: Connection,
    cfg: WriterConfig,
    shared: Arc<Shared>,
    /// Sum of `size_bytes` of all stored events (kept exact by this thread).
    total_bytes: u64,
    /// Something was committed since the last forced sync (Async mode).
    dirty: bool,
    /// Deliveries of events since the last checkpoint.
    recent: Recent,
}

impl Writer {
    pub fn new(conn: Connection, cfg: WriterConfig, shared: Arc<Shared>) -> Result<Writer> {
        let total_bytes: i64 = conn
            .query_row("SELECT coalesce(sum(size_bytes), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(|e| StorageError::from_sqlite(&cfg.path, e))?;
        shared
            .total_bytes
            .store(total_bytes as u64, Ordering::Relaxed);
        let through =
            restore_deliveries(&conn).map_err(|e| StorageError::from_sqlite(&cfg.path, e))?;
        Ok(Writer {
            conn,
            cfg,
            shared,
            total_bytes: total_bytes as u64,
            dirty: false,
            recent: Recent {
                base: through + 1,
                slots: VecDeque::new(),
                last_json: None,
            },
        })
    }

    /// Writes the deliveries still pending in memory to the `deliveries` table and moves
    /// the `deliveries_through` mark past them, in one transaction.
    fn checkpoint(&mut self) -> Result<()> {
        if self.recent.slots.is_empty() {
            return Ok(());
        }
        let through = self.recent.base + self.recent.slots.len() as i64 - 1;
        let res = (|| -> rusqlite::Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT OR IGNORE INTO deliveries (seq, consumer) VALUES (?1, ?2)",
                )?;
                for (i, slot) in self.recent.slots.iter().enumerate() {
                    if let Some((targets, mask)) = slot {
                        let seq = self.recent.base + i as i64;
                        for (j, t) in targets.iter().enumerate() {
                            if mask & (1u64 << j) != 0 {
                                ins.execute(params![seq, t])?;
                            }
                        }
                    }
                }
                tx.prepare_cached(
                    "UPDATE store_meta SET value = ?1 WHERE key = 'deliveries_through'",
                )?
                .execute([through])?;
            }
            tx.commit()
        })();
        res.map_err(|e| self.sq(e))?;
        self.recent.slots.clear();
        self.recent.base = through + 1;
        self.dirty = true;
        Ok(())
    }

    fn sq(&self, e: rusqlite::Error) -> StorageError {
        StorageError::from_sqlite(&self.cfg.path, e)
    }

    /// The writer thread's main loop. Returns when `Shutdown` arrives or every sender
    /// is gone, after writing and syncing everything queued before that.
    pub fn run(mut self, rx: Receiver<Cmd>) {
        let flush_every = match self.cfg.durability {
            Durability::Async { flush_interval } => Some(flush_interval),
            Durability::Sync => None,
        };
        let retention_every = if self.cfg.max_age.is_some() || self.cfg.max_bytes.is_some() {
            self.cfg.retention_interval
        } else {
            None
        };
        let mut next_flush = flush_every.map(|d| Instant::now() + d);
        let mut next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
        let mut next_retention = retention_every.map(|d| Instant::now() + d);
        let mut batch: Vec<Cmd> = Vec::new();
        let mut shutting_down = false;

        while !shutting_down {
            let checkpoint_due = (!self.recent.slots.is_empty()).then_some(next_checkpoint);
            let deadline = [next_flush, next_retention, checkpoint_due]
                .into_iter()
                .flatten()
                .min();
            let first = match deadline {
                Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        shutting_down = true;
                        None
                    }
                },
                None => match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => {
                        shutting_down = true;
                        None
                    }
                },
            };
            if let Some(first) = first {
                // Group commit: take everything already queued (up to a bound).
                let mut events = 0usize;
                let mut next = Some(first);
                while let Some(c) = next.take() {
                    match c {
                        Cmd::Shutdown => shutting_down = true,
                        Cmd::Append { ref rows, .. } => {
                            events += rows.len();
                            batch.push(c)
                        }
                        Cmd::AppendFrom(source) => {
                            if let Some((rows, reply)) = source.take() {
                                events += rows.len();
                                batch.push(Cmd::Append {
                                    rows,
                                    reply: Some(reply),
                                });
                            }
                        }
                        other => batch.push(other),
                    }
                    if !shutting_down && events < MAX_BATCH_EVENTS {
                        next = rx.try_recv().ok();
                    }
                }
                // NOTE: drained, not taken: `batch` keeps its capacity (up to
                // MAX_BATCH_EVENTS commands) instead of growing again every round.
                self.process(batch.drain(..));
            }

            let now = Instant::now();
            if now >= next_checkpoint || self.recent.slots.len() >= MAX_RECENT || shutting_down {
                if let Err(e) = self.checkpoint() {
                    self.shared.record_async_error(e);
                }
                next_checkpoint = now + CHECKPOINT_EVERY;
            }
            if let (Some(at), Some(every)) = (next_flush, flush_every) {
                if now >= at || shutting_down {
                    if self.dirty {
                        if let Err(e) = self.sync_now() {
                            self.shared.record_async_error(e);
                        }
                    }
                    next_flush = Some(now + every);
                }
            }
            if let (Some(at), Some(every)) = (next_retention, retention_every) {
                if now >= at && !shutting_down {
                    if let Err(e) = self.retention() {
                        self.shared.record_async_error(e);
                    }
                    next_retention = Some(Instant::now() + every);
                }
            }
        }
        // Anything still queued after Shutdown (there should be nothing: Shutdown is sent
        // by close/drop when no other sender can exist) is answered as closed by dropping it.
        if self.dirty {
            if let Err(e) = self.sync_now() {
                self.shared.record_async_error(e);
            }
        }
        // NOTE: wal_checkpoint(TRUNCATE) leaves a small WAL behind for the next open; a
        // failure here is harmless (SQLite recovers the WAL at the next open).
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }

    /// Apply one round of commands: all writes in one transaction, then the control
    /// commands (flush, retention) in order.
    fn process(&mut self, cmds: impl ExactSizeIterator<Item = Cmd>) {
        let mut writes = Vec::with_capacity(cmds.len());
        let mut controls = Vec::new();
        for c in cmds {
            match c {
                Cmd::Append { .. }
                | Cmd::Ack { .. }
                | Cmd::DeadLetter { .. }
                | Cmd::RemoveDeadLetters { .. } => writes.push(c),
                Cmd::Retention { .. } | Cmd::Flush { .. } | Cmd::Checkpoint { .. } => {
                    controls.push(c)
                }
                // Turned into `Append` when it was received.
                Cmd::AppendFrom(_) | Cmd::Shutdown => {}
            }
        }
        if !writes.is_empty() {
            match self.apply_in_tx(&writes) {
                Ok((outcomes, delta)) => {
                    self.commit_bytes(delta);
                    deliver(&self.shared, writes, outcomes.into_iter().map(Ok).collect());
                }
                Err(_) if writes.len() > 1 => {
                    // NOTE: the group transaction failed and was rolled back. Retry each
                    // command in its own transaction so one bad command (or a store that is
                    // just full) gives each waiter its own accurate answer.
                    for w in writes {
                        let res = self.apply_in_tx(std::slice::from_ref(&w));
                        let res = res.map(|(mut o, delta)| {
                            self.commit_bytes(delta);
                            o.pop().unwrap_or(Outcome::Nothing)
                        });
                        deliver(&self.shared, vec![w], vec![res]);
                    }
                }
                Err(e) => deliver(&self.shared, writes, vec![Err(e)]),
            }
        }
        for c in controls {
            match c {
                Cmd::Flush { reply } => {
                    let r = self.checkpoint().and_then(|()| {
                        if self.dirty {
                            self.sync_now()
                        } else {
                            Ok(())
                        }
                    });
                    answer(reply, r);
                }
                Cmd::Checkpoint { reply } => answer(reply, self.checkpoint()),
                Cmd::Retention { reply } => answer(reply, self.retention()),
                _ => {}
            }
        }
    }

    fn commit_bytes(&mut self, delta: i64) {
        self.total_bytes = (self.total_bytes as i64 + delta).max(0) as u64;
        self.shared
            .total_bytes
            .store(self.total_bytes, Ordering::Relaxed);
        self.dirty = true;
    }

    /// Run `cmds` in one transaction. On error the transaction is rolled back (nothing
    /// of it is stored) and the error returned.
    fn apply_in_tx(&mut self, cmds: &[Cmd]) -> Result<(Vec<Outcome>, i64)> {
        let path = &self.cfg.path;
        let sq = |e| StorageError::from_sqlite(path, e);
        let tx = self.conn.unchecked_transaction().map_err(sq)?;
        let mut outcomes = Vec::with_capacity(cmds.len());
        let (staged, delta) = {
            let mut apply = Apply {
                tx: &tx,
                recent: &mut self.recent,
                staged: Vec::with_capacity(cmds.len()),
                delta: 0,
                insert: None,
                insert_many: None,
            };
            for c in cmds {
                let o = apply.one(c).map_err(sq)?;
                outcomes.push(o);
            }
            (apply.staged, apply.delta)
        };
        // NOTE: in Sync mode (synchronous=FULL) this commit is the one fsync shared by
        // every publisher in the batch. Dropping `tx` on the error paths rolls back.
        tx.commit().map_err(sq)?;
        // Only now: a rolled-back append must not leave deliveries behind in memory.
        for (seq, targets) in staged {
            // Cannot fail: `inserted` staged only seqs above everything tracked.
            let tracked = self.recent.push(seq, &targets);
            debug_assert!(tracked);
        }
        Ok((outcomes, delta))
    }

    /// Make everything committed so far durable (Async mode; Sync-mode commits already are).
    fn sync_now(&mut self) -> Result<()> {
        if let Durability::Async { .. } = self.cfg.durability {
            // NOTE: committed transactions are in the WAL; fsyncing it makes them durable
            // (what synchronous=FULL does at every commit). A checkpoint here instead
            // (as before) copied the hot pages of the tables into the database file every
            // flush interval, a tenth of the writer's time; SQLite's automatic
            // checkpoints (every 1000 WAL pages) copy them often enough.
            let mut wal = self.cfg.path.clone().into_os_string();
            wal.push("-wal");
            let wal = PathBuf::from(wal);
            match std::fs::File::open(&wal) {
                Ok(f) => f.sync_data().map_err(|e| StorageError::io(&wal, e))?,
                // No WAL file: everything was checkpointed into the database (and
                // fsynced by that checkpoint).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(&wal, e)),
            }
        }
        self.dirty = false;
        Ok(())
    }

    /// Delete events older than `max_age`, then the oldest until the total is at most
    /// `max_bytes`; their pending deliveries go with them. Dead letters are not touched.
    pub fn retention(&mut self) -> Result<RetentionReport> {
        // Every pending delivery in the table first, so deleting rows covers them all.
        self.checkpoint()?;
        let bytes_before = self.total_bytes;
        let tx = self.conn.unchecked_transaction().map_err(|e| self.sq(e))?;
        let mut report = RetentionReport {
            bytes_before,
            ..Default::default()
        };
        let mut freed = 0u64;
        let sq = |e| StorageError::from_sqlite(&self.cfg.path, e);
        if let Some(max_age) = self.cfg.max_age {
            let cutoff = now_us() - i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
            let (n, bytes): (i64, i64) = tx
                .query_row(
                    "SELECT count(*), coalesce(sum(size_bytes), 0) FROM events WHERE timestamp_us < ?1",
                    [cutoff],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sq)?;
            if n > 0 {
                tx.execute(
                    "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM events WHERE timestamp_us < ?1)",
                    [cutoff],
                )
                .map_err(sq)?;
                tx.execute("DELETE FROM events WHERE timestamp_us < ?1", [cutoff])
                    .map_err(sq)?;
            }
            report.deleted_by_age = n as u64;
            freed += bytes as u64;
        }
        if let Some(max_bytes) = self.cfg.max_bytes {
            let mut remaining = bytes_before.saturating_sub(freed);
            if remaining > max_bytes {
                let mut victims = Vec::new();
                {
                    let mut stmt = tx
                        .prepare("SELECT seq, size_bytes FROM events ORDER BY timestamp_us, seq")
                        .map_err(sq)?;
                    let mut rows = stmt.query([]).map_err(sq)?;
                    while remaining > max_bytes {
                        let Some(r) = rows.next().map_err(sq)? else {
                            break;
                        };
                        let seq: i64 = r.get(0).map_err(sq)?;
                        let size: i64 = r.get(1).map_err(sq)?;
                        victims.push(seq);
                        remaining = remaining.saturating_sub(size as u64);
                        freed += size as u64;
                    }
                }
                let mut del_d = tx
                    .prepare("DELETE FROM deliveries WHERE seq = ?1")
                    .map_err(sq)?;
                let mut del_e = tx
                    .prepare("DELETE FROM events WHERE seq = ?1")
                    .map_err(sq)?;
                for seq in &victims {
                    del_d.execute([seq]).map_err(sq)?;
                    del_e.execute([seq]).map_err(sq)?;
                }
                report.deleted_by_size = victims.len() as u64;
            }
        }
        tx.commit().map_err(sq)?;
        if report.deleted_by_age + report.deleted_by_size > 0 {
            self.commit_bytes(-(freed as i64));
            // Give the freed pages back to the file system; harmless if it fails.
            let _ = self.conn.execute_batch("PRAGMA incremental_vacuum");
        }
        report.bytes_after = self.total_bytes;
        Ok(report)
    }
}

/// The rows written by one group transaction.
struct Apply<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    recent: &'a mut Recent,
    /// Deliveries of the appended events, tracked in `recent` once the commit succeeded.
    staged: Vec<(i64, Targets)>,
    /// Change of the stored bytes.
    delta: i64,
    /// The one-row event insert, prepared once per transaction.
    insert: Option<rusqlite::CachedStatement<'a>>,
    /// The [`ROWS_PER_INSERT`]-row event insert, prepared once per transaction.
    insert_many: Option<rusqlite::CachedStatement<'a>>,
}

impl<'a> Apply<'a> {
    fn one(&mut self, cmd: &Cmd) -> rusqlite::Result<Outcome> {
        let tx = self.tx;
        match cmd {
            Cmd::Append { rows, .. } => {
                let mut seqs = Vec::with_capacity(rows.len());
                let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
                for chunk in &mut chunks {
                    let ins = match &mut self.insert_many {
                        Some(ins) => ins,
                        empty => empty.insert(tx.prepare_cached(&INSERT_MANY)?),
                    };
                    let jsons: Vec<Option<String>> =
                        chunk.iter().map(|r| self.recent.json_for(r)).collect();
                    for (k, (row, json)) in chunk.iter().zip(&jsons).enumerate() {
                        bind_row(ins, k * COLUMNS, row, json.as_deref())?;
                    }
                    ins.raw_execute()?;
                    // NOTE: AUTOINCREMENT gives the rows of one statement consecutive
                    // seqs (each is one more than the largest ever), so the last one
                    // tells them all.
                    let last = tx.last_insert_rowid();
                    let first = last - ROWS_PER_INSERT as i64 + 1;
                    for (k, row) in chunk.iter().enumerate() {
                        self.inserted(row, first + k as i64, &mut seqs)?;
                    }
                }
                for row in chunks.remainder() {
                    let ins = match &mut self.insert {
                        Some(ins) => ins,
                        empty => empty.insert(tx.prepare_cached(&INSERT_ONE)?),
                    };
                    let json = self.recent.json_for(row);
                    bind_row(ins, 0, row, json.as_deref())?;
                    ins.raw_execute()?;
                    let seq = tx.last_insert_rowid();
                    self.inserted(row, seq, &mut seqs)?;
                }
                Ok(Outcome::Seqs(seqs))
            }
            Cmd::Ack { pairs } => {
                for (key, consumer) in pairs {
                    self.ack(key, consumer)?;
                }
                Ok(Outcome::Nothing)
            }
            Cmd::DeadLetter { dl, .. } => {
                let e = &dl.row.ev;
                tx.prepare_cached(
                    "INSERT INTO dead_letters (event_seq, event_id, topic, event_type, source, \
                     timestamp_us, published_us, priority, correlation_id, codec, data, consumer, \
                     errors_json, attempts, failed_us) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )?
                .execute(params![
                    (dl.event_seq > 0).then_some(dl.event_seq),
                    e.id,
                    e.topic,
                    e.event_type,
                    e.source,
                    e.timestamp_us,
                    e.published_us,
                    e.priority,
                    e.correlation_id,
                    dl.row.codec as i64,
                    e.data_json,
                    dl.consumer,
                    dl.errors_json,
                    dl.attempts,
                    dl.failed_us
                ])?;
                let id = tx.last_insert_rowid();
                // The pending delivery moves to the dead-letter table: no redelivery at restart.
                let key = if dl.event_seq > 0 {
                    AckKey::Seq(dl.event_seq)
                } else {
                    AckKey::Id(e.id.clone())
                };
                self.ack(&key, &dl.consumer)?;
                Ok(Outcome::Id(id))
            }
            Cmd::RemoveDeadLetters { ids, .. } => {
                let mut del = tx.prepare_cached("DELETE FROM dead_letters WHERE dl_id = ?1")?;
                let mut n = 0;
                for id in ids {
                    n += del.execute([id])?;
                }
                Ok(Outcome::Count(n))
            }
            Cmd::Retention { .. }
            | Cmd::Flush { .. }
            | Cmd::Checkpoint { .. }
            | Cmd::AppendFrom(_)
            | Cmd::Shutdown => Ok(Outcome::Nothing),
        }
    }

    /// Bookkeeping for a row just inserted as `seq`: its deliveries and size.
    fn inserted(&mut self, row: &Row, seq: i64, seqs: &mut Vec<i64>) -> rusqlite::Result<()> {
        // NOTE: an event with more targets than `Recent` tracks gets its deliveries
        // as rows now and no `targets` (nothing to rebuild); see `Recent::json_for`.
        // So does one whose seq `Recent` could not take after the commit (not above
        // everything tracked; AUTOINCREMENT makes that impossible, but a delivery
        // must never depend on it).
        let next = self.staged.last().map_or(self.recent.end(), |(s, _)| s + 1);
        if row.targets.len() <= 64 && seq >= next {
            self.staged.push((seq, row.targets.clone()));
        } else {
            let mut ins_d = self.tx.prepare_cached(
                "INSERT OR IGNORE INTO deliveries (seq, consumer) VALUES (?1, ?2)",
            )?;
            for t in row.targets.iter() {
                ins_d.execute(params![seq, t])?;
            }
        }
        self.delta += row.size_bytes() as i64;
        seqs.push(seq);
        Ok(())
    }

    /// `consumer` is done with the event: in memory if it is recent, else its row goes.
    fn ack(&mut self, key: &AckKey, consumer: &str) -> rusqlite::Result<()> {
        match key {
            AckKey::Seq(seq) => self.ack_seq(*seq, consumer),
            AckKey::Id(id) => {
                // NOTE: no index on ids (see schema.rs): this scans, but only for an ack
                // whose stored row is unknown to the caller.
                let seqs = self
                    .tx
                    .prepare_cached("SELECT seq FROM events WHERE id = ?1")?
                    .query_map([id], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<i64>>>()?;
                seqs.into_iter()
                    .try_for_each(|seq| self.ack_seq(seq, consumer))
            }
        }
    }

    fn ack_seq(&mut self, seq: i64, consumer: &str) -> rusqlite::Result<()> {
        if !self.recent.ack(seq, consumer) {
            self.tx
                .prepare_cached("DELETE FROM deliveries WHERE seq = ?1 AND consumer = ?2")?
                .execute(params![seq, consumer])?;
        }
        Ok(())
    }
}

/// At open: turn the targets of events above the `deliveries_through` mark (left in
/// memory by a writer that did not close cleanly) into `deliveries` rows, and return the
/// new mark (the last seq).
fn restore_deliveries(conn: &Connection) -> rusqlite::Result<i64> {
    let tx = conn.unchecked_transaction()?;
    let through: i64 = tx.query_row(
        "SELECT value FROM store_meta WHERE key = 'deliveries_through'",
        [],
        |r| r.get(0),
    )?;
    let last: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
    if last > through {
        tx.execute(
            "INSERT OR IGNORE INTO deliveries (seq, consumer) \
             SELECT e.seq, j.value FROM events e, json_each(e.targets) j \
             WHERE e.seq > ?1 AND e.targets IS NOT NULL",
            [through],
        )?;
    }
    let mark = last.max(through);
    tx.execute(
        "UPDATE store_meta SET value = ?1 WHERE key = 'deliveries_through'",
        [mark],
    )?;
    tx.commit()?;
    Ok(mark)
}

/// Call a reply, keeping the writer alive if the caller's callback panics.
fn answer<T>(reply: Reply<T>, r: Result<T>) {
    // NOTE: replies can be user callbacks (append_with); a panic in one must not kill
    // the writer thread and with it every later write.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || reply(r)));
}

/// Hand each write command its outcome. `results` has one entry per command, or a
/// single error that applies to all of them.
fn deliver(shared: &Shared, cmds: Vec<Cmd>, results: Vec<Result<Outcome>>) {
    let single_error = if results.len() == 1 && cmds.len() > 1 {
        results.first().and_then(|r| r.as_ref().err().cloned())
    } else {
        None
    };
    let mut results = results.into_iter();
    for c in cmds {
        let r = match &single_error {
            Some(e) => Err(e.clone()),
            None => results.next().unwrap_or(Err(StorageError::Closed)),
        };
        match c {
            Cmd::Append { reply, .. } => match reply {
                Some(reply) => answer(
                    reply,
                    r.map(|o| match o {
                        Outcome::Seqs(s) => s,
                        _ => Vec::new(),
                    }),
                ),
                // Fire-and-forget append (append_async): nobody waits, so keep the error
                // where the owner can find it.
                None => {
                    if let Err(e) = r {
                        shared.record_async_error(e);
                    }
                }
            },
            Cmd::DeadLetter { reply, .. } => answer(
                reply,
                r.map(|o| match o {
                    Outcome::Id(i) => i,
                    _ => 0,
                }),
            ),
            Cmd::RemoveDeadLetters { reply, .. } => answer(
                reply,
                r.map(|o| match o {
                    Outcome::Count(n) => n,
                    _ => 0,
                }),
            ),
            // Acks are fire-and-forget; a failed ack only means a redelivery at restart.
            Cmd::Ack { .. } => {
                if let Err(e) = r {
                    shared.record_async_error(e);
                }
            }
            Cmd::Retention { .. }
            | Cmd::Flush { .. }
            | Cmd::Checkpoint { .. }
            | Cmd::AppendFrom(_)
            | Cmd::Shutdown => {}
        }
    }
}
