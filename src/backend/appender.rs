//! [`Appender`]: group commit in front of a [`SharedLog`]. Many publishers of one
//! process hand it records; its thread appends everything queued so far in one
//! transaction (one fsync with `Durability::Sync`) and answers each publisher with its
//! entry id. Records are validated when submitted, so one bad record never fails
//! another publisher's commit; a storage error fails the whole round (nothing of it
//! was written).
//!
//! Order: the queue is FIFO and one thread appends, so one publisher's records keep
//! their submission order in the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{check_record, EntryId, LogError, Record, Result, SharedLog};

/// Most records in one transaction.
const MAX_ROUND: usize = 4096;

/// Called with the outcome of a submitted batch (its ids, in order).
pub type Done = Box<dyn FnOnce(Result<Vec<EntryId>>) + Send>;

struct Req {
    records: Vec<Record>,
    done: Done,
}

/// Counters of an [`Appender`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppenderStats {
    /// Records appended.
    pub appended: u64,
    /// Transactions (commits) used for them.
    pub commits: u64,
    /// Rounds that failed (every record of them reported the error).
    pub failed_rounds: u64,
}

#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    commits: AtomicU64,
    failed: AtomicU64,
}

/// Group commit in front of a log. See the module docs.
pub struct Appender {
    tx: Option<SyncSender<Req>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Appender {
    /// Start the appender thread on `log`; at most `capacity` submissions wait (then
    /// submitting blocks: back-pressure).
    pub fn start(log: Arc<dyn SharedLog>, capacity: usize) -> Result<Appender> {
        let (tx, rx) = sync_channel::<Req>(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("mpm-events-log-append".into())
            .spawn(move || run(&*log, &rx, &c))
            .map_err(|e| LogError::Invalid(format!("cannot start the appender thread: {e}")))?;
        Ok(Appender {
            tx: Some(tx),
            thread: Some(thread),
            counters,
        })
    }

    /// Queue `records` (validated now; an invalid one fails the call and nothing is
    /// queued); `done` runs on the appender thread after their commit (or failure).
    pub fn submit(&self, records: Vec<Record>, done: Done) -> Result<()> {
        for r in &records {
            check_record(r)?;
        }
        let tx = self.tx.as_ref().ok_or(LogError::Closed)?;
        let req = Req { records, done };
        match tx.try_send(req) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(req)) => tx.send(req).map_err(|_| LogError::Closed),
            Err(TrySendError::Disconnected(_)) => Err(LogError::Closed),
        }
    }

    /// Append and wait for the commit.
    pub fn append(&self, records: Vec<Record>) -> Result<Vec<EntryId>> {
        let (tx, rx) = sync_channel(1);
        self.submit(
            records,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.recv().map_err(|_| LogError::Closed)?
    }

    /// Counters.
    pub fn stats(&self) -> AppenderStats {
        AppenderStats {
            appended: self.counters.appended.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            failed_rounds: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// Append what is queued, then stop the thread.
    pub fn close(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.close();
    }
}

fn run(log: &dyn SharedLog, rx: &Receiver<Req>, c: &Counters) {
    while let Ok(first) = rx.recv() {
        let mut round = vec![first];
        let mut n = round[0].records.len();
        while n < MAX_ROUND {
            match rx.try_recv() {
                Ok(req) => {
                    n += req.records.len();
                    round.push(req);
                }
                Err(_) => break,
            }
        }
        let mut all = Vec::with_capacity(n);
        let mut sizes = Vec::with_capacity(round.len());
        let mut dones = Vec::with_capacity(round.len());
        for req in round {
            sizes.push(req.records.len());
            all.extend(req.records);
            dones.push(req.done);
        }
        match log.append(&all) {
            Ok(ids) => {
                c.appended.fetch_add(ids.len() as u64, Ordering::Relaxed);
                c.commits.fetch_add(1, Ordering::Relaxed);
                let mut rest = ids.as_slice();
                for (done, k) in dones.into_iter().zip(sizes) {
                    let (mine, tail) = rest.split_at(k);
                    rest = tail;
                    done(Ok(mine.to_vec()));
                }
            }
            Err(e) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                for done in dones {
                    done(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::backend::conformance::rec;
    use crate::backend::sqlite::{SqliteLog, SqliteOptions};

    #[test]
    fn concurrent_publishers_share_commits_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn SharedLog> =
            Arc::new(SqliteLog::open_path(dir.path().join("log.db")).unwrap());
        let app = Arc::new(Appender::start(log.clone(), 1024).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let app = app.clone();
                std::thread::spawn(move || {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let name = format!("t{t}");
                    for i in 0..100 {
                        let tx = tx.clone();
                        app.submit(vec![rec(&name, i)], Box::new(move |r| tx.send(r).unwrap()))
                            .unwrap();
                    }
                    (0..100)
                        .map(|_| rx.recv().unwrap().unwrap()[0])
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let ids: Vec<Vec<EntryId>> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(ids.iter().map(Vec::len).sum::<usize>(), 800);
        let all = log.range(None, None, None, None, 10_000).unwrap();
        assert_eq!(all.len(), 800);
        let mut last: HashMap<String, u64> = HashMap::new();
        for (_, r) in &all {
            if let Some(p) = last.insert(r.publisher.clone(), r.publisher_seq) {
                assert_eq!(r.publisher_seq, p + 1, "{} in order", r.publisher);
            }
        }
        let st = app.stats();
        assert_eq!(st.appended, 800);
        assert!(st.commits <= 800);
    }

    #[test]
    fn a_bad_record_fails_only_its_own_submission() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn SharedLog> =
            Arc::new(SqliteLog::open_path(dir.path().join("log.db")).unwrap());
        let app = Appender::start(log.clone(), 16).unwrap();
        let mut bad = rec("p", 1);
        bad.priority = 7;
        assert!(matches!(app.append(vec![bad]), Err(LogError::Invalid(_))));
        assert_eq!(app.append(vec![rec("p", 2), rec("p", 3)]).unwrap().len(), 2);
        assert_eq!(log.stats().unwrap().entries, 2);
    }

    #[test]
    fn a_full_log_fails_the_round_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = SqliteOptions::new(dir.path().join("log.db"));
        o.hard_limit_bytes = Some(128 * 1024);
        o.compress_threshold = usize::MAX;
        let log: Arc<dyn SharedLog> = Arc::new(SqliteLog::open(o).unwrap());
        let mut app = Appender::start(log.clone(), 16).unwrap();
        let big = |i| Record {
            payload: vec![b'x'; 300_000],
            ..rec("p", i)
        };
        assert!(matches!(
            app.append(vec![big(0)]),
            Err(LogError::Full { .. })
        ));
        assert_eq!(app.append(vec![rec("p", 1)]).unwrap().len(), 1);
        assert_eq!(app.stats().failed_rounds, 1);
        app.close();
        assert_eq!(app.append(vec![rec("p", 2)]), Err(LogError::Closed));
    }
}
