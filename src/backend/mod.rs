//! Shared durable logs: one log of events shared by many processes, read through
//! consumer groups (the model of Redis Streams: XADD, XREADGROUP, XACK, XAUTOCLAIM,
//! XPENDING).
//!
//! Plain Rust (no pyo3). [`SharedLog`] is the contract every backend implements;
//! [`sqlite::SqliteLog`] is the embedded default (one SQLite file that every process
//! opens). `docs/backends.md` documents the guarantees, the layout and how claims,
//! leases and heartbeats work; `conformance.rs` is the one test suite every backend
//! passes.
//!
//! The vocabulary:
//!
//! * an **entry** is one [`Record`] appended to the log, with an [`EntryId`] that grows
//!   with every append and is never reused;
//! * a **group** is a consumer name. Each group has a position (the last entry handed to
//!   it) and a set of **pending** entries: handed to one of its instances (claimed) and
//!   neither acknowledged nor dead-lettered yet. Different groups each get every entry;
//! * an **instance** is one live reader of a group (one consumer object in one process),
//!   named by a unique id ([`new_instance_id`]). The instances of a group share its
//!   entries: each entry is claimed by one instance at a time;
//! * a **claim** is held by an instance since its last delivery or renewal; once it has
//!   been idle longer than the claim timeout, another instance may take it over with
//!   [`SharedLog::claim_expired`] (its delivery count goes up by one). An instance that
//!   works on an entry longer than that renews its claims ([`SharedLog::renew`]).

pub mod appender;
pub mod codec;
pub mod reader;
pub mod redis;
pub mod spool;
pub mod sqlite;

#[cfg(test)]
pub(crate) mod conformance;

pub mod error;

use std::time::Duration;

pub use error::{LogError, Result};

/// The id of one entry of a shared log. Ordered as the log is: a later append has a
/// larger id.
///
/// Two parts so that both backends map onto it without loss: the SQLite log uses
/// `(seq, 0)`; a Redis stream id `<ms>-<seq>` is `(ms, seq)`. Shown as `major-minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// SQLite: the row's seq. Redis: the milliseconds part.
    pub major: u64,
    /// SQLite: 0. Redis: the sequence part.
    pub minor: u64,
}

impl EntryId {
    /// An id from its two parts.
    pub const fn new(major: u64, minor: u64) -> EntryId {
        EntryId { major, minor }
    }

    /// Parse `"major-minor"` or `"major"` (minor 0).
    pub fn parse(text: &str) -> Result<EntryId> {
        let bad = || {
            LogError::Invalid(format!(
                "entry id {text:?} is not <number> or <number>-<number>"
            ))
        };
        let (a, b) = match text.split_once('-') {
            Some((a, b)) => (a, b),
            None => (text, "0"),
        };
        Ok(EntryId {
            major: a.parse().map_err(|_| bad())?,
            minor: b.parse().map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.major, self.minor)
    }
}

/// One event as the log stores it. The log looks only at `topic` (replay filters),
/// `timestamp_us` (replay windows, `start` by time, retention by age) and validates
/// `priority`; the rest is carried as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The event's own id (kept so consumers can de-duplicate redeliveries).
    pub event_id: String,
    /// Topic, e.g. `hook.pre_tool`. Must be a valid topic (see [`crate::topic`]).
    pub topic: String,
    /// Event priority, 1 (critical) ..= 4 (low).
    pub priority: u8,
    /// Event time, unix microseconds UTC.
    pub timestamp_us: i64,
    /// The publishing process/bus ([`new_instance_id`] of the publisher).
    pub publisher: String,
    /// The publisher's own counter: with `publisher` it gives per-publisher order.
    pub publisher_seq: u64,
    /// The event body, JSON bytes.
    pub payload: Vec<u8>,
    /// Anything else the bus keeps with the event (JSON bytes; may be empty).
    pub metadata: Vec<u8>,
}

/// An entry handed to an instance by [`SharedLog::read`] or [`SharedLog::claim_expired`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id in the log.
    pub id: EntryId,
    /// The stored event.
    pub record: Record,
    /// How many times the entry has been handed out to this group, this time included
    /// (1 at the first delivery). A value above 1 means an earlier claim expired (or a
    /// dead letter was replayed).
    pub deliveries: u32,
}

/// Where a group that the log has not seen before starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Every entry still in the log.
    Earliest,
    /// Only entries appended after the group was created.
    Latest,
    /// Entries whose record timestamp is at or after this time (unix µs UTC).
    Time(i64),
}

/// When [`SharedLog::append`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the entries are on stable storage (fsync): survives a process kill, an OS
    /// crash and a power cut.
    #[default]
    Sync,
    /// After the commit, before the fsync: survives a process kill (SIGKILL); an OS
    /// crash or power cut can lose the last commits.
    Normal,
}

/// A dead letter: an entry a group gave up on, kept in the log (visible to every
/// process) with a copy of its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The dead letter's own id (for [`SharedLog::replay_dead_letters`] and
    /// [`SharedLog::remove_dead_letters`]).
    pub dl_id: i64,
    /// The group that gave up.
    pub group: String,
    /// The entry's id in the log.
    pub id: EntryId,
    /// A copy of the entry's record (the entry itself may be gone by retention).
    pub record: Record,
    /// Why (the last error).
    pub reason: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was dead-lettered, unix µs UTC.
    pub failed_us: i64,
}

/// What [`SharedLog::group_stats`] reports about one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// The group's name.
    pub name: String,
    /// Entries claimed by an instance and neither acknowledged nor dead-lettered.
    pub pending: u64,
    /// Entries waiting to be handed out again (replayed dead letters).
    pub ready: u64,
    /// Entries appended after the group's position (not handed to it yet).
    pub lag: u64,
    /// Dead letters of this group kept in the log.
    pub dead_letters: u64,
    /// The last entry handed to the group (`None` before the first).
    pub position: Option<EntryId>,
}

/// What [`SharedLog::stats`] reports about the whole log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Entries in the log.
    pub entries: u64,
    /// Stored bytes of the entries (payload + metadata as stored).
    pub bytes: u64,
    /// Oldest and newest entry.
    pub first: Option<EntryId>,
    /// Newest entry.
    pub last: Option<EntryId>,
    /// Groups known to the log.
    pub groups: u64,
    /// Dead letters kept, all groups.
    pub dead_letters: u64,
    /// Entries retention removed before every group had handled them (older than the
    /// hard cap), since the log was created.
    pub dropped_unhandled: u64,
}

/// What [`SharedLog::apply_retention`] may delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Delete handled entries whose record timestamp is older than this.
    pub max_age: Option<Duration>,
    /// Then delete the oldest handled entries until the log holds at most this many
    /// bytes ([`LogStats::bytes`]).
    pub max_bytes: Option<u64>,
    /// The hard cap: delete entries older than this even if some group has not handled
    /// them (counted in [`RetentionReport::dropped_unhandled`]).
    pub hard_max_age: Option<Duration>,
}

/// What one retention run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Handled entries deleted for their age.
    pub deleted_by_age: u64,
    /// Handled entries deleted for the size limit.
    pub deleted_by_size: u64,
    /// Entries deleted by the hard cap although some group had not handled them.
    pub dropped_unhandled: u64,
    /// Entries kept although older than `max_age` (or over `max_bytes`) because some
    /// group has not handled them.
    pub kept_unhandled: u64,
}

/// A shared durable log with consumer groups. Every handle (in this process or
/// another) opened on the same location sees the same log. All methods block the
/// calling thread (call them off an async event loop); all are safe to call from many
/// threads at once.
///
/// Delivery is at-least-once: an entry is handed out again after its claim expired
/// (the instance died, or stopped renewing), so consumers de-duplicate on
/// [`Record::event_id`] when they must. Order: a group's entries are handed out in
/// log order; one publisher's entries are in the log in the order its appends
/// returned, so a group with one instance sees each publisher's events in order
/// (redeliveries and several instances can reorder).
pub trait SharedLog: Send + Sync {
    /// Where the log lives, as shown in errors and stats (a path or a URL).
    fn location(&self) -> &str;

    /// Append `records` in one transaction: all of them or none. Returns their ids, in
    /// order. Returns after the commit, which is on stable storage when the handle's
    /// [`Durability`] is `Sync`. Wakes readers blocked in [`SharedLog::read`] in every
    /// process. An empty batch is a no-op.
    fn append(&self, records: &[Record]) -> Result<Vec<EntryId>>;

    /// Create group `group` at `start` if the log does not know it; a known group keeps
    /// its position (`start` is ignored). Returns true if it was created.
    fn ensure_group(&self, group: &str, start: StartAt) -> Result<bool>;

    /// The names of the groups the log knows, sorted.
    fn groups(&self) -> Result<Vec<String>>;

    /// Forget a group: its position, pending entries and dead letters. Retention no
    /// longer keeps entries for it. Returns false if it was not known.
    fn delete_group(&self, group: &str) -> Result<bool>;

    /// Claim up to `max` entries for `instance` of `group`: first entries waiting to be
    /// handed out again (replayed dead letters), then entries after the group's position
    /// (which moves past them). The claim is atomic: no other instance of the group gets
    /// these entries until the claim expires. Each returned entry is pending (for
    /// [`SharedLog::ack`]) with its claim's idle time starting now.
    ///
    /// With `block` set and nothing to claim, waits up to that long for an append (in
    /// any process) and tries again; returns an empty vector at the timeout.
    /// Fails with [`LogError::UnknownGroup`] for a group never ensured.
    fn read(
        &self,
        group: &str,
        instance: &str,
        max: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>>;

    /// Renew `instance`'s claims on `ids` (heartbeat): their idle time restarts, so
    /// [`SharedLog::claim_expired`] does not hand them to another instance. Returns the
    /// ids still claimed by `instance` (the others were acknowledged or taken over).
    fn renew(&self, group: &str, instance: &str, ids: &[EntryId]) -> Result<Vec<EntryId>>;

    /// Give back `instance`'s claims on `ids` without handling them (a consumer that
    /// stops): they count as expired at once, so the next
    /// [`SharedLog::claim_expired`] of any instance takes them (delivery count up by
    /// one). Returns how many `instance` held. (Redis: `XCLAIM ... IDLE <huge>`.)
    fn release(&self, group: &str, instance: &str, ids: &[EntryId]) -> Result<u64>;

    /// Acknowledge `ids` for `group`: they are handled and leave its pending set
    /// (whichever instance holds them). Unknown or already acknowledged ids are
    /// ignored. Returns how many were pending.
    fn ack(&self, group: &str, ids: &[EntryId]) -> Result<u64>;

    /// Acknowledge `acks` (as [`SharedLog::ack`]), then claim as [`SharedLog::read`]:
    /// what a reader does at every step, which a backend may do in fewer round trips
    /// (Redis: one pipeline while entries are waiting). Returns how many of `acks`
    /// were pending, and the claimed entries.
    ///
    /// On an error the caller cannot tell whether the acks were written: it keeps
    /// them and acknowledges them again (acks are idempotent; a repeated one counts 0).
    /// The default calls `ack` (when `acks` is not empty) and then `read`.
    fn ack_and_read(
        &self,
        group: &str,
        instance: &str,
        acks: &[EntryId],
        max: usize,
        block: Option<Duration>,
    ) -> Result<(u64, Vec<Entry>)> {
        let acked = if acks.is_empty() {
            0
        } else {
            self.ack(group, acks)?
        };
        Ok((acked, self.read(group, instance, max, block)?))
    }

    /// Take over up to `max` pending entries of `group` whose claim has been idle for
    /// at least `min_idle` (their instance died or stopped renewing): they become
    /// claimed by `instance`, idle time restarting, delivery count up by one. Oldest
    /// entries first. Entries `instance` itself holds are taken too (a restarted
    /// instance with the same id gets its own back).
    fn claim_expired(
        &self,
        group: &str,
        instance: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Entry>>;

    /// Whether `group` has a pending entry whose claim has been idle for at least
    /// `min_idle` (what [`SharedLog::claim_expired`] would take, released claims
    /// included), by reads only: a reader can look often without taking the write
    /// lock. The default answers true (the caller then tries `claim_expired`).
    fn has_expired(&self, group: &str, min_idle: Duration) -> Result<bool> {
        let _ = (group, min_idle);
        Ok(true)
    }

    /// Give up on entry `id` for `group`: store a dead letter (with a copy of the
    /// record, `reason` and `attempts`) and remove the entry from the group's pending
    /// set, in one transaction. Fails with [`LogError::Invalid`] if the entry is not
    /// pending for the group.
    fn dead_letter(&self, group: &str, id: EntryId, reason: &str, attempts: u32) -> Result<i64>;

    /// Store a dead letter of `record`, which is not in the log and is never appended
    /// to it: an event refused at publish (its payload failed a schema). No group is
    /// handed it; its [`DeadLetter::id`] is `0-0`. `group` is only the name the dead
    /// letter carries: it is not created (a group nobody reads would hold retention
    /// back). Visible to every handle like any dead letter; `replay_dead_letters` does
    /// not apply to it (the bus re-publishes it instead). Returns its id.
    fn add_dead_letter(
        &self,
        group: &str,
        record: &Record,
        reason: &str,
        attempts: u32,
    ) -> Result<i64>;

    /// The dead letters kept in the log, oldest first; of one group or of all.
    fn dead_letters(&self, group: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Hand dead letters back to their group: each becomes a pending entry waiting to
    /// be handed out again (delivery count restarting at 0), its dead letter removed;
    /// an entry retention had removed is restored from the dead letter's copy.
    /// `dl_ids` `None`: all dead letters of `group`. Returns how many.
    fn replay_dead_letters(&self, group: &str, dl_ids: Option<&[i64]>) -> Result<u64>;

    /// Hand entries `ids` to `group` again (a replay into one consumer name): each
    /// becomes a pending entry waiting to be handed out again (delivery count
    /// restarting at 0), as a replayed dead letter does. Entries after the group's
    /// position (it gets them anyway), entries no longer in the log and unknown ids
    /// are skipped. Returns how many were handed back.
    fn requeue(&self, group: &str, ids: &[EntryId]) -> Result<u64>;

    /// Delete dead letters without replaying them. Returns how many.
    fn remove_dead_letters(&self, dl_ids: &[i64]) -> Result<u64>;

    /// Pending, ready and lag counts of one group.
    fn group_stats(&self, group: &str) -> Result<GroupStats>;

    /// Counts of the whole log.
    fn stats(&self) -> Result<LogStats>;

    /// Entries whose record timestamp is in `since <= t < until` (unix µs, either bound
    /// open) and whose topic matches one of `topics` (topic patterns as subscriptions
    /// use them; `None`: all), in log order, at most `limit`, starting after `after`
    /// (for paging). Reads only: no group's position or pending set changes.
    fn range(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        topics: Option<&[String]>,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<(EntryId, Record)>>;

    /// Delete old entries per `policy`. An entry is *handled* when every known group
    /// has moved past it and none has it pending; only handled entries are deleted,
    /// except entries older than `policy.hard_max_age`, which go anyway and are counted
    /// (in the report and in [`LogStats::dropped_unhandled`]).
    fn apply_retention(&self, policy: &Retention) -> Result<RetentionReport>;

    /// Close this handle: later calls fail with [`LogError::Closed`]; readers blocked
    /// in [`SharedLog::read`] return. Other handles are unaffected.
    fn close(&self);
}

/// A fresh instance id, unique across processes and hosts: `<hostname>:<pid>:<random>`.
pub fn new_instance_id() -> String {
    format!(
        "{}:{}:{:016x}",
        hostname(),
        std::process::id(),
        fastrand::u64(..)
    )
}

fn hostname() -> String {
    // NOTE: /proc avoids a libc dependency in the engine (libc is optional, python only);
    // the name only has to tell hosts apart in ids and stats.
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Validate a group or instance name: 1..=200 characters, no control characters.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(LogError::Invalid(format!(
            "{what} name {name:?} must be 1 to 200 characters without control characters"
        )));
    }
    Ok(())
}

/// Validate a record before it is appended.
pub(crate) fn check_record(r: &Record) -> Result<()> {
    crate::topic::validate_topic(&r.topic)
        .map_err(|e| LogError::Invalid(format!("record topic {:?}: {e}", r.topic)))?;
    if !(1..=4).contains(&r.priority) {
        return Err(LogError::Invalid(format!(
            "record priority {} is outside 1..=4",
            r.priority
        )));
    }
    if r.event_id.is_empty() {
        return Err(LogError::Invalid("record event_id is empty".into()));
    }
    Ok(())
}
