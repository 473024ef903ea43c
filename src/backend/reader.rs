//! [`GroupReader`]: one instance of a consumer group reading a [`SharedLog`] on its own
//! thread — what a subscribed consumer of a bus with a shared backend runs.
//!
//! The thread claims entries (`read`, blocking up to `poll`), hands them to a
//! `deliver` callback, keeps the claims of everything delivered and not yet
//! acknowledged alive (`renew` every `claim_timeout / 3`: the heartbeat), takes over
//! claims of dead instances (`claim_expired` every `claim_timeout / 2`, and as soon as
//! a cheap read, `has_expired`, made every `poll`, sees released or expired claims),
//! and writes acknowledgements in batches, together with its next read
//! (`ack_and_read`). At most `max_in_flight` entries are out at once; with
//! less room than a batch (or half of `max_in_flight`) it waits for acks instead of
//! claiming a small batch.
//! [`GroupReader::stop`] writes the collected acks and releases what is still in
//! flight, so another instance gets it at once instead of after the claim timeout.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{new_instance_id, Entry, EntryId, LogError, Result, SharedLog, StartAt};

/// Options of [`GroupReader::start`].
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// The consumer group (consumer name).
    pub group: String,
    /// This instance's id. Default [`new_instance_id`].
    pub instance: String,
    /// Where the group starts if the log does not know it. Default `Earliest`.
    pub start: StartAt,
    /// Most entries claimed by one read. Default 256.
    pub batch: usize,
    /// Most entries delivered and not yet acknowledged. Default 1024.
    pub max_in_flight: usize,
    /// A claim idle this long may be taken over by another instance; this reader
    /// renews its claims three times per timeout. Default 30 s.
    pub claim_timeout: Duration,
    /// Longest wait of one blocking read (also bounds how long collected acks wait
    /// to be written). Default 100 ms.
    pub poll: Duration,
}

impl ReaderOptions {
    /// Defaults for group `group`.
    pub fn new(group: impl Into<String>) -> ReaderOptions {
        ReaderOptions {
            group: group.into(),
            instance: new_instance_id(),
            start: StartAt::Earliest,
            batch: 256,
            max_in_flight: 1024,
            claim_timeout: Duration::from_secs(30),
            poll: Duration::from_millis(100),
        }
    }
}

/// Counters of one [`GroupReader`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Entries handed to `deliver` (redeliveries included).
    pub delivered: u64,
    /// Of those, entries taken over from an expired claim.
    pub taken_over: u64,
    /// Acknowledgements written to the log.
    pub acked: u64,
    /// Claims this reader lost to another instance (found at a renewal).
    pub lost_claims: u64,
    /// Log errors met by the reader thread (it backs off and carries on).
    pub errors: u64,
}

#[derive(Default)]
struct State {
    in_flight: HashSet<EntryId>,
    to_ack: Vec<EntryId>,
    /// Acks taken from `to_ack` whose write has not returned yet (with a read, that
    /// may block up to `poll`).
    writing: usize,
    last_error: Option<LogError>,
}

impl State {
    /// Take the collected acks to write them (see `writing`).
    fn take_acks(&mut self) -> Vec<EntryId> {
        let acks = std::mem::take(&mut self.to_ack);
        self.writing += acks.len();
        acks
    }

    /// The write of `acks` returned: on an error they are kept for the next try.
    fn acks_written(&mut self, acks: Vec<EntryId>, ok: bool) {
        self.writing -= acks.len();
        if !ok {
            // An ack must not be lost to a busy file or a lost connection.
            self.to_ack.extend(acks);
        }
    }
}

struct Shared {
    log: Arc<dyn SharedLog>,
    opts: ReaderOptions,
    state: Mutex<State>,
    cv: Condvar,
    stop: AtomicBool,
    paused: AtomicBool,
    delivered: AtomicU64,
    taken_over: AtomicU64,
    acked: AtomicU64,
    lost: AtomicU64,
    errors: AtomicU64,
}

/// One running instance of a consumer group. See the module docs.
pub struct GroupReader {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

type Deliver = Box<dyn FnMut(Vec<Entry>) + Send>;

impl GroupReader {
    /// Create the group if needed (errors are returned here) and start the reader
    /// thread. `deliver` runs on that thread for each claimed batch, in log order
    /// within a batch; it must not block for long (hand the entries on), and every
    /// entry it gets must later be [`GroupReader::ack`]ed or
    /// [`GroupReader::dead_letter`]ed.
    pub fn start(
        log: Arc<dyn SharedLog>,
        opts: ReaderOptions,
        deliver: impl FnMut(Vec<Entry>) + Send + 'static,
    ) -> Result<GroupReader> {
        if opts.batch == 0 || opts.max_in_flight == 0 {
            return Err(LogError::Invalid(
                "reader batch and max_in_flight must be at least 1".into(),
            ));
        }
        if opts.claim_timeout < Duration::from_millis(30) {
            return Err(LogError::Invalid(format!(
                "claim_timeout {:?} is too short (at least 30 ms)",
                opts.claim_timeout
            )));
        }
        super::check_name("instance", &opts.instance)?;
        log.ensure_group(&opts.group, opts.start)?;
        let shared = Arc::new(Shared {
            log,
            opts,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            taken_over: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("mpm-events-log-{}", shared.opts.group))
            .spawn(move || run(&s, Box::new(deliver)))
            .map_err(|e| LogError::Invalid(format!("cannot start the reader thread: {e}")))?;
        Ok(GroupReader {
            shared,
            thread: Some(thread),
        })
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.shared.opts.instance
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.shared.opts.group
    }

    /// Mark `ids` handled: they leave the in-flight set now; the acknowledgement is
    /// written by the reader thread with the next batch (within `poll`), or by
    /// [`GroupReader::flush`] / [`GroupReader::stop`].
    pub fn ack(&self, ids: &[EntryId]) {
        let o = &self.shared.opts;
        let low = low_water(o);
        let mut st = self.shared.state.lock();
        let had_room = o.max_in_flight.saturating_sub(st.in_flight.len());
        for id in ids {
            st.in_flight.remove(id);
        }
        let room = o.max_in_flight.saturating_sub(st.in_flight.len());
        st.to_ack.extend_from_slice(ids);
        drop(st);
        // NOTE: the reader is woken when it may claim a whole batch again (or nothing
        // is left in flight), not at every ack: woken per ack, it wrote each ack in a
        // transaction of its own and claimed batches of one.
        if (had_room < low && room >= low) || room == o.max_in_flight {
            self.shared.cv.notify_all();
        }
    }

    /// Give up on `id`: a dead letter in the log (written now), out of flight.
    pub fn dead_letter(&self, id: EntryId, reason: &str, attempts: u32) -> Result<i64> {
        let dl = self
            .shared
            .log
            .dead_letter(&self.shared.opts.group, id, reason, attempts)?;
        self.shared.state.lock().in_flight.remove(&id);
        self.shared.cv.notify_all();
        Ok(dl)
    }

    /// Stop claiming new entries (reads and takeovers) while heartbeats and acks go
    /// on: a bus that drains before it stops lets its consumers finish what they hold
    /// without claiming more that it would only release again.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::Release);
        self.shared.cv.notify_all();
    }

    /// Write the collected acknowledgements now.
    pub fn flush(&self) -> Result<()> {
        flush_acks(&self.shared)
    }

    /// Entries delivered and neither acknowledged nor dead-lettered.
    pub fn in_flight(&self) -> usize {
        self.shared.state.lock().in_flight.len()
    }

    /// True when nothing is in flight, every ack is written, and the group's position
    /// is at or past `upto` (e.g. the log's last entry when a `join` began).
    pub fn caught_up(&self, upto: Option<EntryId>) -> Result<bool> {
        {
            let st = self.shared.state.lock();
            if !st.in_flight.is_empty() || !st.to_ack.is_empty() || st.writing > 0 {
                return Ok(false);
            }
        }
        let Some(upto) = upto else { return Ok(true) };
        let g = self.shared.log.group_stats(&self.shared.opts.group)?;
        Ok(g.position.is_some_and(|p| p >= upto) && g.pending == 0 && g.ready == 0)
    }

    /// Counters.
    pub fn stats(&self) -> ReaderStats {
        let s = &self.shared;
        ReaderStats {
            delivered: s.delivered.load(Ordering::Relaxed),
            taken_over: s.taken_over.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
            lost_claims: s.lost.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
        }
    }

    /// The last log error the thread met, if any (taken).
    pub fn take_error(&self) -> Option<LogError> {
        self.shared.state.lock().last_error.take()
    }

    /// Stop the thread (within `poll`), write the collected acks and release the
    /// claims still in flight (another instance gets them at once). Returns how many
    /// were released.
    pub fn stop(mut self) -> Result<u64> {
        self.halt()
    }

    fn halt(&mut self) -> Result<u64> {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        flush_acks(&self.shared)?;
        let held: Vec<EntryId> = self.shared.state.lock().in_flight.drain().collect();
        if held.is_empty() {
            return Ok(0);
        }
        let o = &self.shared.opts;
        self.shared.log.release(&o.group, &o.instance, &held)
    }
}

impl Drop for GroupReader {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.halt();
        }
    }
}

/// Room for fewer entries than this in flight: the reader waits for acks rather
/// than claim a small batch.
fn low_water(o: &ReaderOptions) -> usize {
    o.batch.min(o.max_in_flight / 2).max(1)
}

fn flush_acks(s: &Shared) -> Result<()> {
    let batch = s.state.lock().take_acks();
    if batch.is_empty() {
        return Ok(());
    }
    let r = s.log.ack(&s.opts.group, &batch);
    if let Ok(n) = r {
        s.acked.fetch_add(n, Ordering::Relaxed);
    }
    s.state.lock().acks_written(batch, r.is_ok());
    r.map(|_| ())
}

fn run(s: &Shared, mut deliver: Deliver) {
    let o = &s.opts;
    let heartbeat = o.claim_timeout / 3;
    let takeover_every = (o.claim_timeout / 2).max(Duration::from_millis(20));
    let mut next_heartbeat = Instant::now() + heartbeat;
    let mut next_takeover = Instant::now();
    let mut next_probe = Instant::now();
    while !s.stop.load(Ordering::Acquire) {
        if let Err(e) = step(
            s,
            &mut deliver,
            &mut next_heartbeat,
            (&mut next_takeover, &mut next_probe),
            heartbeat,
            takeover_every,
        ) {
            if e == LogError::Closed {
                return;
            }
            s.errors.fetch_add(1, Ordering::Relaxed);
            let mut st = s.state.lock();
            st.last_error = Some(e);
            // NOTE: back off on errors (busy or full disk) instead of spinning.
            if !s.stop.load(Ordering::Acquire) {
                s.cv.wait_for(&mut st, Duration::from_millis(100));
            }
        }
    }
}

fn step(
    s: &Shared,
    deliver: &mut Deliver,
    next_heartbeat: &mut Instant,
    (next_takeover, next_probe): (&mut Instant, &mut Instant),
    heartbeat: Duration,
    takeover_every: Duration,
) -> Result<()> {
    let o = &s.opts;
    // NOTE: the acks collected since the last step go with this step's read (one
    // round trip on Redis); the paths that do not read write them on their own.
    let now = Instant::now();
    if now >= *next_heartbeat {
        let held: Vec<EntryId> = s.state.lock().in_flight.iter().copied().collect();
        if !held.is_empty() {
            let kept: HashSet<EntryId> = s
                .log
                .renew(&o.group, &o.instance, &held)?
                .into_iter()
                .collect();
            let mut st = s.state.lock();
            for id in held.iter().filter(|id| !kept.contains(id)) {
                // Taken over by another instance (or acked meanwhile): no longer ours.
                if st.in_flight.remove(id) {
                    s.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        *next_heartbeat = now + heartbeat;
    }
    let room = |s: &Shared| {
        o.max_in_flight
            .saturating_sub(s.state.lock().in_flight.len())
    };
    if s.paused.load(Ordering::Acquire) {
        flush_acks(s)?;
        let mut st = s.state.lock();
        if !s.stop.load(Ordering::Acquire) {
            s.cv.wait_for(&mut st, o.poll);
        }
        return Ok(());
    }
    // NOTE: claims another instance released (it stopped) count as expired at once;
    // a plain read every `poll` finds them without waiting for the periodic
    // takeover, and without taking the write lock when there is nothing to take.
    let mut due = now >= *next_takeover;
    if !due && now >= *next_probe && room(s) > 0 {
        *next_probe = now + o.poll;
        due = s.log.has_expired(&o.group, o.claim_timeout)?;
    }
    if due && room(s) > 0 {
        let got = s
            .log
            .claim_expired(&o.group, &o.instance, o.claim_timeout, room(s))?;
        s.taken_over.fetch_add(got.len() as u64, Ordering::Relaxed);
        hand_over(s, deliver, got);
        *next_takeover = now + takeover_every;
    }
    let free = room(s);
    let until = (*next_heartbeat).min(*next_takeover);
    let block = until
        .saturating_duration_since(Instant::now())
        .min(o.poll)
        .max(Duration::from_millis(1));
    let low = low_water(o);
    if free < low {
        // Back-pressure: wait for acks (or the next heartbeat); the acks collected
        // meanwhile are written together at the next step.
        flush_acks(s)?;
        let mut st = s.state.lock();
        if o.max_in_flight.saturating_sub(st.in_flight.len()) < low
            && !s.stop.load(Ordering::Acquire)
        {
            s.cv.wait_for(&mut st, block);
        }
        return Ok(());
    }
    let acks = s.state.lock().take_acks();
    let r = s
        .log
        .ack_and_read(&o.group, &o.instance, &acks, free.min(o.batch), Some(block));
    if let Ok((acked, _)) = &r {
        s.acked.fetch_add(*acked, Ordering::Relaxed);
    }
    // NOTE: on an error, whether the acks were written is unknown: they are written
    // again (see `SharedLog::ack_and_read`).
    s.state.lock().acks_written(acks, r.is_ok());
    hand_over(s, deliver, r?.1);
    Ok(())
}

fn hand_over(s: &Shared, deliver: &mut Deliver, got: Vec<Entry>) {
    if got.is_empty() {
        return;
    }
    {
        // NOTE: in flight before `deliver` runs, since it may ack synchronously.
        let mut st = s.state.lock();
        st.in_flight.extend(got.iter().map(|e| e.id));
    }
    s.delivered.fetch_add(got.len() as u64, Ordering::Relaxed);
    deliver(got);
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::backend::conformance::rec;
    use crate::backend::sqlite::SqliteLog;

    fn log_in(dir: &tempfile::TempDir) -> Arc<dyn SharedLog> {
        Arc::new(SqliteLog::open_path(dir.path().join("log.db")).unwrap())
    }

    fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn opts(group: &str, claim_timeout: Duration) -> ReaderOptions {
        ReaderOptions {
            claim_timeout,
            poll: Duration::from_millis(20),
            ..ReaderOptions::new(group)
        }
    }

    #[test]
    fn a_paused_reader_claims_nothing_but_still_writes_acks() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        log.append(&(0..10).map(|i| rec("p", i)).collect::<Vec<_>>())
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = GroupReader::start(
            log.clone(),
            ReaderOptions {
                batch: 4,
                max_in_flight: 4,
                ..opts("g", Duration::from_secs(30))
            },
            move |batch| tx.send(batch).unwrap(),
        )
        .unwrap();
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        reader.pause();
        let ids: Vec<EntryId> = first.iter().map(|e| e.id).collect();
        reader.ack(&ids);
        wait_until(Duration::from_secs(10), "acks written", || {
            reader.stats().acked == 4
        });
        // Room for 4 more, but paused: nothing else is claimed.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(log.group_stats("g").unwrap().lag, 6);
        assert_eq!(reader.stop().unwrap(), 0);
    }

    #[test]
    fn delivers_everything_once_and_writes_the_acks() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        log.append(&(0..300).map(|i| rec("p", i)).collect::<Vec<_>>())
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = GroupReader::start(
            log.clone(),
            ReaderOptions {
                batch: 32,
                ..opts("g", Duration::from_secs(30))
            },
            move |batch| tx.send(batch).unwrap(),
        )
        .unwrap();
        let mut seen = Vec::new();
        while seen.len() < 300 {
            let batch = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(batch.len() <= 32);
            reader.ack(&batch.iter().map(|e| e.id).collect::<Vec<_>>());
            seen.extend(batch.into_iter().map(|e| e.record.publisher_seq));
        }
        assert_eq!(seen, (0..300).collect::<Vec<_>>());
        let last = log.stats().unwrap().last;
        wait_until(Duration::from_secs(10), "acks written", || {
            reader.caught_up(last).unwrap()
        });
        assert_eq!(reader.stats().acked, 300);
        assert_eq!(reader.stop().unwrap(), 0);
        let g = log.group_stats("g").unwrap();
        assert_eq!((g.pending, g.lag), (0, 0));
    }

    #[test]
    fn heartbeats_keep_claims_and_stop_releases_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        log.append(&(0..5).map(|i| rec("p", i)).collect::<Vec<_>>())
            .unwrap();
        // NOTE: 500 ms: the heartbeat (every 167 ms) has a wide margin on a loaded machine.
        let lease = Duration::from_millis(500);
        let (tx, rx) = mpsc::channel();
        let a = GroupReader::start(log.clone(), opts("g", lease), move |b| tx.send(b).unwrap())
            .unwrap();
        let held = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(held.len(), 5);
        // Not acknowledged for three claim timeouts: the heartbeat keeps them.
        let other = SqliteLog::open_path(dir.path().join("log.db")).unwrap();
        let until = Instant::now() + lease * 3;
        while Instant::now() < until {
            assert!(other
                .claim_expired("g", "thief", lease, 10)
                .unwrap()
                .is_empty());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(a.stats().lost_claims, 0);
        // Stopping releases them: a second instance, already running (its first
        // takeover done, the next one 30 s away), gets them without waiting for the
        // (long) claim timeout nor its next periodic takeover.
        let (tx, rx) = mpsc::channel();
        let b = GroupReader::start(log.clone(), opts("g", Duration::from_secs(60)), move |b| {
            tx.send(b).unwrap()
        })
        .unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        assert_eq!(a.stop().unwrap(), 5);
        let again = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            again.iter().map(|e| e.id).collect::<Vec<_>>(),
            held.iter().map(|e| e.id).collect::<Vec<_>>()
        );
        assert!(again.iter().all(|e| e.deliveries == 2));
        assert_eq!(b.stats().taken_over, 5);
        b.ack(&again.iter().map(|e| e.id).collect::<Vec<_>>());
        b.stop().unwrap();
        assert_eq!(log.group_stats("g").unwrap().pending, 0);
    }

    #[test]
    fn a_dead_instances_claims_are_taken_over_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        log.ensure_group("g", StartAt::Earliest).unwrap();
        log.append(&(0..4).map(|i| rec("p", i)).collect::<Vec<_>>())
            .unwrap();
        // A "dead" instance: claimed, never renews.
        let dead = log.read("g", "dead", 4, None).unwrap();
        let (tx, rx) = mpsc::channel();
        let r = GroupReader::start(
            log.clone(),
            opts("g", Duration::from_millis(200)),
            move |b| tx.send(b).unwrap(),
        )
        .unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            got.extend(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        assert_eq!(
            got.iter().map(|e| e.id).collect::<Vec<_>>(),
            dead.iter().map(|e| e.id).collect::<Vec<_>>()
        );
        r.ack(&got.iter().map(|e| e.id).collect::<Vec<_>>());
        r.stop().unwrap();
    }

    #[test]
    fn in_flight_is_bounded_and_dead_letters_count_as_handled() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        log.append(&(0..30).map(|i| rec("p", i)).collect::<Vec<_>>())
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let r = GroupReader::start(
            log.clone(),
            ReaderOptions {
                max_in_flight: 10,
                ..opts("g", Duration::from_secs(30))
            },
            move |b| tx.send(b).unwrap(),
        )
        .unwrap();
        let mut first = Vec::new();
        while first.len() < 10 {
            first.extend(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        assert_eq!(r.in_flight(), 10);
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "no more until acked"
        );
        r.dead_letter(first[0].id, "boom", 3).unwrap();
        r.ack(&first[1..].iter().map(|e| e.id).collect::<Vec<_>>());
        let mut rest = 0;
        while rest < 20 {
            let b = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            rest += b.len();
            r.ack(&b.iter().map(|e| e.id).collect::<Vec<_>>());
        }
        let last = log.stats().unwrap().last;
        wait_until(Duration::from_secs(10), "caught up", || {
            r.caught_up(last).unwrap()
        });
        assert_eq!(log.dead_letters(Some("g"), 10).unwrap().len(), 1);
        r.stop().unwrap();
    }

    #[test]
    fn bad_options_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        let bad = ReaderOptions {
            claim_timeout: Duration::from_millis(1),
            ..ReaderOptions::new("g")
        };
        let err = GroupReader::start(log.clone(), bad, |_| {}).err().unwrap();
        assert!(err.to_string().contains("claim_timeout"), "{err}");
        let bad = ReaderOptions::new("");
        assert!(GroupReader::start(log, bad, |_| {}).is_err());
    }
}
