//! A local spool in front of a remote log: appends that cannot reach the server go to
//! a SQLite log on this machine and are forwarded, once and in order, when the server
//! answers again.
//!
//! * The spool is an ordinary [`SqliteLog`] file (same schema, same fsync), read by
//!   one consumer group, [`FORWARD_GROUP`]: the forwarder claims a batch, appends it
//!   to the remote log, then acknowledges it and lets retention delete it. A
//!   forwarder that dies between the remote append and the ack leaves the batch
//!   pending; the next one takes it first (`claim_expired` with no idle time, under
//!   the lock below) and appends it again: the remote append de-duplicates on the
//!   records' publisher and publisher sequence number, which the spool keeps (Redis:
//!   the `pub:<publisher>` ranges of the append script, within `dedup_ttl`).
//! * One forwarder at a time per spool (an advisory lock on `<spool>.lock`, not
//!   waited for): forwarding is in spool order. While a forward is running elsewhere,
//!   or the spool holds something this process could not forward, a new append goes
//!   to the spool too, behind what is there, so one publisher's events stay in order.
//! * `<spool>.pending`, a marker file, says "the spool may hold something": a
//!   publisher checks it with one `stat`, so the fast path (server up, spool empty)
//!   never opens SQLite. A spooling append creates it after its commit; a forwarder
//!   removes it before draining, so an append racing the drain is either drained or
//!   leaves the marker set.
//!
//! [`SpooledLog`] wraps a log with it: `append` spools on an I/O error (server down,
//! connection lost, timeout), every other method goes to the remote log, and a
//! background thread forwards while the spool holds anything.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::sqlite::{SqliteLog, SqliteOptions};
use super::{
    DeadLetter, Durability, Entry, EntryId, GroupStats, LogError, LogStats, Record, Result,
    Retention, RetentionReport, SharedLog, StartAt,
};

/// The spool's consumer group: what is acknowledged there has reached the remote log.
pub const FORWARD_GROUP: &str = "mpm:forward";
/// Records per forwarded batch (one remote append each).
const FORWARD_BATCH: usize = 500;
/// How often a running bus's forwarder looks at the marker.
const FORWARD_EVERY: Duration = Duration::from_millis(500);
/// After an append failed to reach the server, appends go straight to the spool for
/// this long (a blackholed server would otherwise cost a connect timeout each).
const DOWN_FOR: Duration = Duration::from_secs(1);

/// An exclusive advisory lock on `file` without waiting (`flock(LOCK_EX | LOCK_NB)`):
/// true if taken, false if another open file description holds it. Released when
/// the file is closed (also when the process dies).
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this `File` owns for the whole call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// NOTE: elsewhere no lock: two processes forwarding at once can interleave their
/// batches in Redis (each batch stays in order; the event ids keep one copy of each).
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// What one [`Spool::forward`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forwarded {
    /// Records appended to the remote log.
    pub records: u64,
    /// Another process was forwarding this spool (nothing done here).
    pub busy: bool,
}

/// A SQLite spool file and its marker and lock files.
pub struct Spool {
    path: PathBuf,
    marker: PathBuf,
    lock_path: PathBuf,
    log: Mutex<Option<Arc<SqliteLog>>>,
    instance: String,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("path", &self.path).finish()
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl Spool {
    /// The spool at `path` (nothing is opened or created until something is spooled or
    /// forwarded).
    pub fn new(path: impl Into<PathBuf>) -> Spool {
        let path = path.into();
        Spool {
            marker: with_suffix(&path, ".pending"),
            lock_path: with_suffix(&path, ".lock"),
            path,
            log: Mutex::new(None),
            instance: super::new_instance_id(),
        }
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the spool may hold records not yet forwarded (one `stat`).
    pub fn has_pending(&self) -> bool {
        self.marker.exists()
    }

    fn io(&self, what: &str, e: std::io::Error) -> LogError {
        LogError::Io {
            location: self.path.display().to_string(),
            detail: format!("{what}: {e}"),
        }
    }

    fn log(&self) -> Result<Arc<SqliteLog>> {
        let mut slot = self.log.lock();
        if let Some(l) = slot.as_ref() {
            return Ok(l.clone());
        }
        let mut opts = SqliteOptions::new(&self.path);
        opts.durability = Durability::Sync;
        let log = Arc::new(SqliteLog::open(opts)?);
        log.ensure_group(FORWARD_GROUP, StartAt::Earliest)?;
        *slot = Some(log.clone());
        Ok(log)
    }

    /// Append `records` to the spool (one fsynced transaction) and set the marker.
    /// Returns the spool's ids (not ids of the remote log).
    pub fn put(&self, records: &[Record]) -> Result<Vec<EntryId>> {
        let ids = self.log()?.append(records)?;
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.marker)
            .map_err(|e| self.io("cannot create the spool's marker", e))?;
        Ok(ids)
    }

    /// Forward everything spooled to `target`, oldest first, unless another process is
    /// forwarding this spool right now (`busy`). On an error (the server is down
    /// again) what is left stays spooled, the marker set.
    pub fn forward(&self, target: &dyn SharedLog) -> Result<Forwarded> {
        if !self.path.exists() {
            return Ok(Forwarded::default());
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| self.io("cannot open the spool's lock file", e))?;
        match try_lock(&lock) {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Forwarded {
                    records: 0,
                    busy: true,
                })
            }
            Err(e) => return Err(self.io("cannot lock the spool", e)),
        }
        let result = self.drain(target);
        if result.is_err() {
            // NOTE: the marker was removed before the drain; what is left must be found.
            let _ = File::create(&self.marker);
        }
        drop(lock); // NOTE: closing the file releases the lock
        result
    }

    fn drain(&self, target: &dyn SharedLog) -> Result<Forwarded> {
        match std::fs::remove_file(&self.marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("cannot remove the spool's marker", e)),
        }
        let log = self.log()?;
        let mut done = Forwarded::default();
        loop {
            // NOTE: under the lock no other forwarder runs, so any pending claim is a
            // dead forwarder's batch (possibly already appended): it goes first, again.
            let mut batch =
                log.claim_expired(FORWARD_GROUP, &self.instance, Duration::ZERO, FORWARD_BATCH)?;
            if batch.is_empty() {
                batch = log.read(FORWARD_GROUP, &self.instance, FORWARD_BATCH, None)?;
            }
            if batch.is_empty() {
                break;
            }
            let records: Vec<Record> = batch.iter().map(|e| e.record.clone()).collect();
            target.append(&records)?;
            let ids: Vec<EntryId> = batch.iter().map(|e: &Entry| e.id).collect();
            log.ack(FORWARD_GROUP, &ids)?;
            done.records += ids.len() as u64;
        }
        if done.records > 0 {
            log.apply_retention(&Retention {
                max_age: Some(Duration::ZERO),
                max_bytes: None,
                hard_max_age: None,
            })?;
        }
        Ok(done)
    }
}

/// The state a [`SpooledLog`] shares with its forwarding thread.
struct Shared {
    remote: Arc<dyn SharedLog>,
    spool: Spool,
    /// Whether a thread forwards (then appends skip the server for [`DOWN_FOR`] after
    /// it failed: the thread forwards what they spool).
    background: bool,
    down_until: Mutex<Option<Instant>>,
    stop: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<()>,
    forwarded: std::sync::atomic::AtomicU64,
    spooled: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn forward(&self) -> Result<Forwarded> {
        let r = self.spool.forward(self.remote.as_ref());
        if matches!(r, Err(LogError::Io { .. })) {
            *self.down_until.lock() = Some(Instant::now() + DOWN_FOR);
        }
        if let Ok(f) = &r {
            self.forwarded.fetch_add(f.records, Ordering::Relaxed);
        }
        r
    }

    fn put(&self, records: &[Record]) -> Result<Vec<EntryId>> {
        let ids = self.spool.put(records)?;
        self.spooled
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(ids)
    }
}

/// A remote log with a local [`Spool`] for appends (see the module docs).
pub struct SpooledLog {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for SpooledLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpooledLog")
            .field("remote", &self.shared.remote.location())
            .field("spool", &self.shared.spool.path)
            .finish()
    }
}

impl SpooledLog {
    /// `remote` with the spool at `spool_path`. With `background`, a thread forwards
    /// the spool whenever it holds something and the remote log answers (a running
    /// bus); without, forwarding happens only in [`SharedLog::append`] and
    /// [`SpooledLog::forward`] (a short-lived hook process).
    pub fn new(remote: Arc<dyn SharedLog>, spool_path: PathBuf, background: bool) -> SpooledLog {
        let shared = Arc::new(Shared {
            remote,
            spool: Spool::new(spool_path),
            background,
            down_until: Mutex::new(None),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            forwarded: Default::default(),
            spooled: Default::default(),
        });
        let thread = background.then(|| {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("mpm-spool-forward".into())
                .spawn(move || forward_loop(&s))
                .expect("spawn the spool forwarder")
        });
        SpooledLog {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Forward what the spool holds now (see [`Spool::forward`]).
    pub fn forward(&self) -> Result<Forwarded> {
        self.shared.forward()
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.shared.spool
    }

    /// Records this handle spooled and forwarded so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.spooled.load(Ordering::Relaxed),
            self.shared.forwarded.load(Ordering::Relaxed),
        )
    }

    fn stop_thread(&self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _g = self.shared.wake_lock.lock();
            self.shared.wake.notify_all();
        }
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

fn forward_loop(s: &Shared) {
    while !s.stop.load(Ordering::Acquire) {
        let down = s.down_until.lock().is_some_and(|t| Instant::now() < t);
        if !down && s.spool.has_pending() {
            // NOTE: an error here is the server being down still: the marker stays
            // and the next round tries again; the appends themselves reported it.
            let _ = s.forward();
        }
        let mut g = s.wake_lock.lock();
        if !s.stop.load(Ordering::Acquire) {
            s.wake.wait_for(&mut g, FORWARD_EVERY);
        }
    }
}

impl Drop for SpooledLog {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

impl SharedLog for SpooledLog {
    fn location(&self) -> &str {
        self.shared.remote.location()
    }

    /// To the remote log, or to the spool when the remote log cannot be reached (an
    /// I/O error: down, connection lost, timed out) or the spool still holds earlier
    /// records that cannot be forwarded now. Spooled ids are the spool's.
    fn append(&self, records: &[Record]) -> Result<Vec<EntryId>> {
        for r in records {
            super::check_record(r)?;
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.shared;
        let down = s.background && s.down_until.lock().is_some_and(|t| Instant::now() < t);
        if down {
            return s.put(records);
        }
        if s.spool.has_pending() {
            match s.forward() {
                Ok(f) if !f.busy => {}
                // NOTE: busy (forwarding elsewhere) or failed: behind what is spooled.
                _ => return s.put(records),
            }
        }
        match s.remote.append(records) {
            Err(LogError::Io { .. }) => {
                *s.down_until.lock() = Some(Instant::now() + DOWN_FOR);
                s.put(records)
            }
            other => other,
        }
    }

    fn ensure_group(&self, group: &str, start: StartAt) -> Result<bool> {
        self.shared.remote.ensure_group(group, start)
    }
    fn groups(&self) -> Result<Vec<String>> {
        self.shared.remote.groups()
    }
    fn delete_group(&self, group: &str) -> Result<bool> {
        self.shared.remote.delete_group(group)
    }
    fn read(
        &self,
        group: &str,
        instance: &str,
        max: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>> {
        self.shared.remote.read(group, instance, max, block)
    }
    fn renew(&self, group: &str, instance: &str, ids: &[EntryId]) -> Result<Vec<EntryId>> {
        self.shared.remote.renew(group, instance, ids)
    }
    fn requeue(&self, group: &str, ids: &[EntryId]) -> Result<u64> {
        self.shared.remote.requeue(group, ids)
    }
    fn release(&self, group: &str, instance: &str, ids: &[EntryId]) -> Result<u64> {
        self.shared.remote.release(group, instance, ids)
    }
    fn ack(&self, group: &str, ids: &[EntryId]) -> Result<u64> {
        self.shared.remote.ack(group, ids)
    }
    fn claim_expired(
        &self,
        group: &str,
        instance: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Entry>> {
        self.shared
            .remote
            .claim_expired(group, instance, min_idle, max)
    }
    fn has_expired(&self, group: &str, min_idle: Duration) -> Result<bool> {
        self.shared.remote.has_expired(group, min_idle)
    }
    fn dead_letter(&self, group: &str, id: EntryId, reason: &str, attempts: u32) -> Result<i64> {
        self.shared.remote.dead_letter(group, id, reason, attempts)
    }
    // NOTE: not spooled: a dead letter written while the remote log is down fails
    // (the publish says False and logs why); spooling it would need a second kind of
    // spooled row for a rare event.
    fn add_dead_letter(
        &self,
        group: &str,
        record: &Record,
        reason: &str,
        attempts: u32,
    ) -> Result<i64> {
        self.shared
            .remote
            .add_dead_letter(group, record, reason, attempts)
    }
    fn dead_letters(&self, group: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> {
        self.shared.remote.dead_letters(group, limit)
    }
    fn replay_dead_letters(&self, group: &str, dl_ids: Option<&[i64]>) -> Result<u64> {
        self.shared.remote.replay_dead_letters(group, dl_ids)
    }
    fn remove_dead_letters(&self, dl_ids: &[i64]) -> Result<u64> {
        self.shared.remote.remove_dead_letters(dl_ids)
    }
    fn group_stats(&self, group: &str) -> Result<GroupStats> {
        self.shared.remote.group_stats(group)
    }
    fn stats(&self) -> Result<LogStats> {
        self.shared.remote.stats()
    }
    fn range(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        topics: Option<&[String]>,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<(EntryId, Record)>> {
        self.shared.remote.range(since, until, topics, after, limit)
    }
    fn apply_retention(&self, policy: &Retention) -> Result<RetentionReport> {
        self.shared.remote.apply_retention(policy)
    }
    fn close(&self) {
        self.stop_thread();
        // NOTE: a last try, so a bus that stops after Redis came back leaves nothing.
        if self.shared.spool.has_pending() {
            let _ = self.shared.forward();
        }
        self.shared.remote.close();
    }
}

/// A Redis log from `opts`: wrapped in a [`SpooledLog`] when `opts.spool` is set
/// (opened without reaching the server, which may be down), a plain checked
/// [`super::redis::RedisLog`] otherwise. `background`: see [`SpooledLog::new`].
pub fn open_redis(
    opts: super::redis::RedisOptions,
    background: bool,
) -> Result<Arc<dyn SharedLog>> {
    use super::redis::RedisLog;
    match opts.spool.clone() {
        None => Ok(Arc::new(RedisLog::open(opts)?)),
        Some(path) => {
            let remote: Arc<dyn SharedLog> = Arc::new(RedisLog::open_unchecked(opts)?);
            Ok(Arc::new(SpooledLog::new(remote, path, background)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::conformance::rec;

    /// A target that refuses appends while `down` (an I/O error, as an unreachable
    /// server gives) and records what it got.
    struct Target {
        log: SqliteLog,
        down: AtomicBool,
    }

    fn target(dir: &Path) -> Arc<Target> {
        Arc::new(Target {
            log: SqliteLog::open(SqliteOptions::new(dir.join("target.db"))).unwrap(),
            down: AtomicBool::new(true),
        })
    }

    fn seqs(t: &Target) -> Vec<u64> {
        t.log
            .range(None, None, None, None, 1000)
            .unwrap()
            .iter()
            .map(|(_, r)| r.publisher_seq)
            .collect()
    }

    #[test]
    fn spooled_while_down_forwarded_in_order_and_a_dead_forwarders_batch_first() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let spool = Spool::new(dir.path().join("spool.db"));
        assert!(!spool.has_pending());
        spool
            .put(&(0..5).map(|i| rec("p", i)).collect::<Vec<_>>())
            .unwrap();
        assert!(spool.has_pending());
        // A forwarder claimed the first two and died before appending them anywhere.
        let log = spool.log().unwrap();
        assert_eq!(log.read(FORWARD_GROUP, "dead", 2, None).unwrap().len(), 2);
        spool
            .put(&(5..8).map(|i| rec("p", i)).collect::<Vec<_>>())
            .unwrap();
        t.down.store(false, Ordering::Release);
        let f = spool.forward(t.as_ref()).unwrap();
        assert_eq!(
            f,
            Forwarded {
                records: 8,
                busy: false
            }
        );
        assert_eq!(seqs(&t), (0..8).collect::<Vec<_>>(), "in spool order, once");
        assert!(!spool.has_pending());
        // Nothing left: a second forward appends nothing.
        assert_eq!(spool.forward(t.as_ref()).unwrap().records, 0);
        assert_eq!(seqs(&t).len(), 8);
    }

    #[test]
    fn a_spooled_log_spools_on_io_errors_and_keeps_a_publishers_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let remote: Arc<dyn SharedLog> = t.clone();
        let log = SpooledLog::new(remote, dir.path().join("spool.db"), false);
        let ids = log.append(&[rec("p", 0), rec("p", 1)]).unwrap();
        assert!(ids.iter().all(|id| id.major < 10), "spool ids: {ids:?}");
        assert!(log.spool().has_pending());
        t.down.store(false, Ordering::Release);
        log.append(&[rec("p", 2)]).unwrap();
        assert_eq!(seqs(&t), vec![0, 1, 2], "the spooled ones first");
        assert_eq!(log.counts(), (2, 2));
        assert!(log
            .append(&[Record {
                priority: 9,
                ..rec("p", 3)
            }])
            .is_err());
    }

    impl SharedLog for Target {
        fn location(&self) -> &str {
            "target"
        }
        fn append(&self, records: &[Record]) -> Result<Vec<EntryId>> {
            if self.down.load(Ordering::Acquire) {
                return Err(LogError::Io {
                    location: "target".into(),
                    detail: "connection refused".into(),
                });
            }
            self.log.append(records)
        }
        fn ensure_group(&self, g: &str, s: StartAt) -> Result<bool> {
            self.log.ensure_group(g, s)
        }
        fn groups(&self) -> Result<Vec<String>> {
            self.log.groups()
        }
        fn delete_group(&self, g: &str) -> Result<bool> {
            self.log.delete_group(g)
        }
        fn read(&self, g: &str, i: &str, m: usize, b: Option<Duration>) -> Result<Vec<Entry>> {
            self.log.read(g, i, m, b)
        }
        fn renew(&self, g: &str, i: &str, ids: &[EntryId]) -> Result<Vec<EntryId>> {
            self.log.renew(g, i, ids)
        }
        fn release(&self, g: &str, i: &str, ids: &[EntryId]) -> Result<u64> {
            self.log.release(g, i, ids)
        }
        fn requeue(&self, g: &str, ids: &[EntryId]) -> Result<u64> {
            self.log.requeue(g, ids)
        }
        fn ack(&self, g: &str, ids: &[EntryId]) -> Result<u64> {
            self.log.ack(g, ids)
        }
        fn claim_expired(&self, g: &str, i: &str, d: Duration, m: usize) -> Result<Vec<Entry>> {
            self.log.claim_expired(g, i, d, m)
        }
        fn dead_letter(&self, g: &str, id: EntryId, r: &str, a: u32) -> Result<i64> {
            self.log.dead_letter(g, id, r, a)
        }
        fn add_dead_letter(&self, g: &str, r: &Record, why: &str, a: u32) -> Result<i64> {
            self.log.add_dead_letter(g, r, why, a)
        }
        fn dead_letters(&self, g: Option<&str>, l: usize) -> Result<Vec<DeadLetter>> {
            self.log.dead_letters(g, l)
        }
        fn replay_dead_letters(&self, g: &str, d: Option<&[i64]>) -> Result<u64> {
            self.log.replay_dead_letters(g, d)
        }
        fn remove_dead_letters(&self, d: &[i64]) -> Result<u64> {
            self.log.remove_dead_letters(d)
        }
        fn group_stats(&self, g: &str) -> Result<GroupStats> {
            self.log.group_stats(g)
        }
        fn stats(&self) -> Result<LogStats> {
            self.log.stats()
        }
        fn range(
            &self,
            s: Option<i64>,
            u: Option<i64>,
            t: Option<&[String]>,
            a: Option<EntryId>,
            l: usize,
        ) -> Result<Vec<(EntryId, Record)>> {
            self.log.range(s, u, t, a, l)
        }
        fn apply_retention(&self, p: &Retention) -> Result<RetentionReport> {
            self.log.apply_retention(p)
        }
        fn close(&self) {
            self.log.close()
        }
    }
}
