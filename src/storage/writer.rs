//! The single writer thread: owns the write connection and applies everything queued
//! in one transaction per round (group commit).

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

/// Completion callback of a command. Runs on the writer thread, so it must be quick
/// (send on a channel, wake a future).
pub(crate) type Reply<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// An event ready to be inserted: payload already encoded by the caller's thread.
pub(crate) struct Row {
    /// The event; `data_json` holds the *stored* bytes (compressed if `codec` says so).
    pub ev: StoredEvent,
    pub codec: Codec,
    /// Consumers the event was routed to (for restart redelivery).
    pub targets: Vec<String>,
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

pub(crate) enum Cmd {
    Append {
        rows: Vec<Row>,
        reply: Option<Reply<Vec<i64>>>,
    },
    Ack {
        pairs: Vec<(AckKey, String)>,
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
    Shutdown,
}

/// What a write command produced, delivered to its reply after the commit.
enum Outcome {
    Seqs(Vec<i64>),
    Id(i64),
    Count(usize),
    Nothing,
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
        Ok(Writer {
            conn,
            cfg,
            shared,
            total_bytes: total_bytes as u64,
            dirty: false,
        })
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
        let mut next_retention = retention_every.map(|d| Instant::now() + d);
        let mut batch: Vec<Cmd> = Vec::new();
        let mut shutting_down = false;

        while !shutting_down {
            let deadline = [next_flush, next_retention].into_iter().flatten().min();
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
                        other => batch.push(other),
                    }
                    if !shutting_down && events < MAX_BATCH_EVENTS {
                        next = rx.try_recv().ok();
                    }
                }
                self.process(std::mem::take(&mut batch));
            }

            let now = Instant::now();
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
    fn process(&mut self, cmds: Vec<Cmd>) {
        let mut writes = Vec::with_capacity(cmds.len());
        let mut controls = Vec::new();
        for c in cmds {
            match c {
                Cmd::Append { .. }
                | Cmd::Ack { .. }
                | Cmd::DeadLetter { .. }
                | Cmd::RemoveDeadLetters { .. } => writes.push(c),
                Cmd::Retention { .. } | Cmd::Flush { .. } => controls.push(c),
                Cmd::Shutdown => {}
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
                    let r = if self.dirty { self.sync_now() } else { Ok(()) };
                    answer(reply, r);
                }
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
        let tx = self.conn.unchecked_transaction().map_err(|e| self.sq(e))?;
        let mut outcomes = Vec::with_capacity(cmds.len());
        let mut delta = 0i64;
        for c in cmds {
            let o = apply_one(&tx, c, &mut delta).map_err(|e| self.sq(e))?;
            outcomes.push(o);
        }
        // NOTE: in Sync mode (synchronous=FULL) this commit is the one fsync shared by
        // every publisher in the batch. Dropping `tx` on the error paths rolls back.
        tx.commit().map_err(|e| self.sq(e))?;
        Ok((outcomes, delta))
    }

    /// Make everything committed so far durable (Async mode; Sync-mode commits already are).
    fn sync_now(&mut self) -> Result<()> {
        if let Durability::Async { .. } = self.cfg.durability {
            // NOTE: with synchronous=NORMAL a WAL commit is not fsynced; a checkpoint first
            // fsyncs the WAL, then copies it into the database file and fsyncs that. If a
            // reader keeps the checkpoint from covering the whole WAL, fsync the WAL file
            // directly so the "durable within flush_interval" promise still holds.
            let (busy, log, done): (i64, i64, i64) = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(|e| self.sq(e))?;
            if busy != 0 || done < log {
                let mut wal = self.cfg.path.clone().into_os_string();
                wal.push("-wal");
                let wal = PathBuf::from(wal);
                if let Ok(f) = std::fs::File::open(&wal) {
                    f.sync_data().map_err(|e| StorageError::io(&wal, e))?;
                }
            }
        }
        self.dirty = false;
        Ok(())
    }

    /// Delete events older than `max_age`, then the oldest until the total is at most
    /// `max_bytes`; their pending deliveries go with them. Dead letters are not touched.
    pub fn retention(&mut self) -> Result<RetentionReport> {
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

fn apply_one(
    tx: &rusqlite::Transaction<'_>,
    cmd: &Cmd,
    delta: &mut i64,
) -> rusqlite::Result<Outcome> {
    match cmd {
        Cmd::Append { rows, .. } => {
            let mut ins = tx.prepare_cached(
                "INSERT INTO events (id, topic, event_type, source, timestamp_us, published_us, \
                 priority, correlation_id, codec, data, size_bytes) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            let mut ins_d = tx.prepare_cached(
                "INSERT OR IGNORE INTO deliveries (seq, consumer) VALUES (?1, ?2)",
            )?;
            let mut seqs = Vec::with_capacity(rows.len());
            for row in rows {
                let e = &row.ev;
                let size = row.size_bytes() as i64;
                ins.execute(params![
                    e.id,
                    e.topic,
                    e.event_type,
                    e.source,
                    e.timestamp_us,
                    e.published_us,
                    e.priority,
                    e.correlation_id,
                    row.codec as i64,
                    e.data_json,
                    size
                ])?;
                let seq = tx.last_insert_rowid();
                for t in &row.targets {
                    ins_d.execute(params![seq, t])?;
                }
                *delta += size;
                seqs.push(seq);
            }
            Ok(Outcome::Seqs(seqs))
        }
        Cmd::Ack { pairs } => {
            let mut by_id = tx.prepare_cached(
                "DELETE FROM deliveries WHERE consumer = ?2 AND seq IN (SELECT seq FROM events WHERE id = ?1)",
            )?;
            let mut by_seq =
                tx.prepare_cached("DELETE FROM deliveries WHERE seq = ?1 AND consumer = ?2")?;
            for (key, consumer) in pairs {
                match key {
                    AckKey::Id(id) => by_id.execute(params![id, consumer])?,
                    AckKey::Seq(seq) => by_seq.execute(params![seq, consumer])?,
                };
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
            if dl.event_seq > 0 {
                tx.prepare_cached("DELETE FROM deliveries WHERE seq = ?1 AND consumer = ?2")?
                    .execute(params![dl.event_seq, dl.consumer])?;
            } else {
                // NOTE: no index on ids (see schema.rs): this scans, but only for a dead
                // letter whose stored row is unknown to the caller.
                tx.prepare_cached(
                    "DELETE FROM deliveries WHERE consumer = ?2 AND seq IN (SELECT seq FROM events WHERE id = ?1)",
                )?
                .execute(params![e.id, dl.consumer])?;
            }
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
        Cmd::Retention { .. } | Cmd::Flush { .. } | Cmd::Shutdown => Ok(Outcome::Nothing),
    }
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
            Cmd::Retention { .. } | Cmd::Flush { .. } | Cmd::Shutdown => {}
        }
    }
}
