//! [`RedisLog`]: the shared log on Redis Streams (consumer groups, the pending-entries
//! list and delivery counts are Redis's own), for buses that span machines.
//!
//! * redis-rs **sync** connections: the [`SharedLog`] trait blocks, so a private pool
//!   of blocking connections serves it and no Tokio runtime thread is ever blocked.
//! * Keys under one hash tag, `{<prefix>}:stream`, `{<prefix>}:dlq`, `{<prefix>}:meta`,
//!   `{<prefix>}:pub:<publisher>` (each publisher's appended ranges, for the publish
//!   de-duplication): a Redis Cluster keeps one bus in one slot, so the Lua scripts
//!   (`scripts.rs`) work there too.
//! * Each stream entry is one binary field `r`, the packed record (`packed.rs`);
//!   entries in the older ten-field layout are still read.
//! * Blocking reads (`XREADGROUP ... BLOCK`) run on dedicated connections whose
//!   response timeout is longer than the longest BLOCK (or `block_timeout`); a read
//!   that fails anyway (timed out, or connection lost after the server delivered)
//!   marks the instance so its next read first re-reads its own pending entries
//!   (`XREADGROUP ... 0`), as does the first read of an instance on a handle: nothing
//!   is stranded in the pending list.
//!
//! `docs/backends.md` ("RedisLog") maps every operation to its commands.

mod packed;
mod scripts;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redis::{Connection, ConnectionLike, RedisError, RedisResult, Value};

use super::{
    check_name, check_record, DeadLetter, Entry, EntryId, GroupStats, LogError, LogStats, Record,
    Result, Retention, RetentionReport, SharedLog, StartAt,
};
use crate::topic::Pattern;

/// The pseudo-consumer that holds replayed dead letters until a `read` hands them out.
const READY: &str = "mpm:ready";
/// Longest single `XREADGROUP BLOCK`: a longer wait is cut in slices so `close` is seen.
const BLOCK_SLICE: Duration = Duration::from_millis(1000);
/// How much longer than the longest BLOCK a blocking read waits for the reply (by
/// default; see [`RedisOptions::block_timeout`]).
const BLOCK_MARGIN: Duration = Duration::from_secs(5);
/// Idle time given to released claims (10 years, in ms): expired for any min-idle.
const RELEASED_IDLE_MS: u64 = 315_360_000_000;

/// Options of [`RedisLog::open`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// The server URL without the query: `redis://[user:pass@]host:port/db` or
    /// `rediss://...` (TLS through rustls).
    pub url: String,
    /// Key prefix; every key is under the hash tag `{prefix}`. Default `mpm`.
    pub prefix: String,
    /// Payloads above this many bytes are stored LZ4-compressed when that saves space.
    /// Default 4096.
    pub compress_threshold: usize,
    /// How long a publisher's appends are remembered after its last one, so that a
    /// retried append or a forward of the same records (same publisher and publisher
    /// sequence numbers) is not stored twice. Default 10 minutes.
    pub dedup_ttl: Duration,
    /// Connect timeout and response timeout of ordinary commands. Default 5 s.
    pub timeout: Duration,
    /// Response timeout of the dedicated blocking-read connections (URL option
    /// `block_timeout=SECONDS`). `None` (the default): the longest BLOCK (1 s) plus
    /// 5 s. A shorter one (even one shorter than a BLOCK) gives up on replies the
    /// server may still send: the instance's next read re-reads what was delivered.
    pub block_timeout: Option<Duration>,
    /// `rediss://` only: trust the CA certificates in this PEM file instead of the
    /// webpki roots (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// A local SQLite spool for appends while Redis cannot be reached (URL option
    /// `spool=PATH` or `spool=default`; see [`crate::backend::spool`]). `None`: an
    /// append that cannot reach Redis fails.
    pub spool: Option<std::path::PathBuf>,
    /// Redis Cluster: the seed nodes (`redis://host:port` each), from a
    /// `redis+cluster://host:port,host:port` URL. Empty: one server at `url`.
    pub cluster_nodes: Vec<String>,
}

impl RedisOptions {
    /// Defaults for a server URL (no query).
    pub fn new(url: impl Into<String>) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            prefix: "mpm".into(),
            compress_threshold: 4096,
            dedup_ttl: Duration::from_secs(600),
            timeout: Duration::from_secs(5),
            block_timeout: None,
            ca_file: None,
            spool: None,
            cluster_nodes: Vec::new(),
        }
    }

    /// Options from a backend URL: `redis://host:port/db?prefix=mpm` (or `rediss://`),
    /// query options `prefix`, `compress_threshold` (bytes), `dedup_ttl`, `timeout` and
    /// `block_timeout` (seconds), `ca_file` (a PEM file of CA certificates, `rediss://` only), `spool`
    /// (`PATH`, `default` for [`default_spool_path`], or `off`).
    pub fn from_url(url: &str) -> Result<RedisOptions> {
        let schemes = [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
        ];
        if !schemes.iter().any(|s| url.starts_with(s)) {
            return Err(LogError::Invalid(format!(
                "backend URL {:?} does not start with redis://, rediss://, \
                 redis+cluster:// or rediss+cluster://",
                mask(url)
            )));
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut o = RedisOptions::new(base);
        if let Some((scheme, rest)) = base.split_once("+cluster://") {
            o.cluster_nodes = cluster_nodes(scheme, rest).ok_or_else(|| {
                LogError::Invalid(format!(
                    "backend URL {:?}: a cluster URL names its nodes as \
                     {scheme}+cluster://[user:password@]host:port,host:port (no database)",
                    mask(url)
                ))
            })?;
            o.url = o.cluster_nodes[0].clone();
        }
        let mut spool_default = false;
        let bad = |pair: &str| {
            LogError::Invalid(format!(
                "backend URL {:?}: bad option {pair:?} (known: prefix=NAME, \
                 compress_threshold=BYTES, dedup_ttl=SECONDS, timeout=SECONDS, \
                 block_timeout=SECONDS, ca_file=PATH, spool=PATH|default|off)",
                mask(url)
            ))
        };
        let secs = |v: &str, pair: &str| -> Result<Duration> {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| bad(pair))
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("prefix", v)) if valid_prefix(v) => o.prefix = v.to_string(),
                Some(("compress_threshold", v)) => {
                    o.compress_threshold = v.parse().map_err(|_| bad(pair))?
                }
                Some(("dedup_ttl", v)) => o.dedup_ttl = secs(v, pair)?,
                Some(("timeout", v)) => o.timeout = secs(v, pair)?,
                Some(("block_timeout", v)) => {
                    o.block_timeout = Some(secs(v, pair).map_err(|_| {
                        LogError::Invalid(format!(
                            "backend URL {:?}: block_timeout must be a positive number of \
                             seconds (the blocking reads' response timeout), not {v:?}",
                            mask(url)
                        ))
                    })?)
                }
                Some(("ca_file", v)) if base.starts_with("rediss://") && !v.is_empty() => {
                    o.ca_file = Some(v.into())
                }
                Some(("spool", "off")) => (o.spool, spool_default) = (None, false),
                Some(("spool", "default")) => spool_default = true,
                Some(("spool", v)) if !v.is_empty() => {
                    (o.spool, spool_default) = (Some(v.into()), false)
                }
                _ => return Err(bad(pair)),
            }
        }
        if spool_default {
            // NOTE: after the loop: the default path names the prefix, given anywhere.
            o.spool = Some(o.default_spool_path()?);
        }
        Ok(o)
    }
}

impl RedisOptions {
    /// The spool `spool=default` means for this server and prefix:
    /// `~/.claude-mpm/mpm-events/spool/<host>_<port>_<db>_<prefix>.db` (one spool per
    /// bus, so a spooled event is only ever forwarded to the bus it was meant for).
    pub fn default_spool_path(&self) -> Result<std::path::PathBuf> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| LogError::Invalid("spool=default needs $HOME to be set".into()))?;
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let server = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let name: String = format!("{server}_{}", self.prefix)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Ok(std::path::Path::new(&home)
            .join(".claude-mpm/mpm-events/spool")
            .join(format!("{name}.db")))
    }
}

/// `redis://[auth@]host:port` per node of `[auth@]h1:p1,h2:p2` (no database: a
/// cluster has only database 0).
fn cluster_nodes(scheme: &str, rest: &str) -> Option<Vec<String>> {
    let rest = rest
        .strip_suffix("/0")
        .unwrap_or(rest)
        .trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .map(|h| (!h.contains('/') && h.contains(':')).then(|| format!("{scheme}://{auth}{h}")))
        .collect::<Option<_>>()?;
    (!nodes.is_empty()).then_some(nodes)
}

fn valid_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

/// The URL with any password replaced by `***` (for messages).
fn mask(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((auth, host)) = rest.split_once('@') {
            let user = auth.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_string()
}

/// One pooled connection: to a single server, or a cluster connection (which routes
/// each command by its key; all of ours are in one slot).
enum Conn {
    One(Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    fn set_read_timeout(&self, d: Option<Duration>) -> RedisResult<()> {
        match self {
            Conn::One(c) => c.set_read_timeout(d),
            Conn::Cluster(c) => c.set_read_timeout(d),
        }
    }

    fn set_write_timeout(&self, d: Option<Duration>) -> RedisResult<()> {
        match self {
            Conn::One(c) => c.set_write_timeout(d),
            Conn::Cluster(c) => c.set_write_timeout(d),
        }
    }

    fn inner(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::One(c) => c,
            Conn::Cluster(c) => c.as_mut(),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Requests (a command or a pipeline: one round trip each) sent by this thread.
    pub(super) static ROUND_TRIPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Conn {
    fn count_round_trip() {
        #[cfg(test)]
        ROUND_TRIPS.with(|n| n.set(n.get() + 1));
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        Conn::count_round_trip();
        self.inner().req_packed_command(cmd)
    }
    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        Conn::count_round_trip();
        self.inner().req_packed_commands(cmd, offset, count)
    }
    fn req_command(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        Conn::count_round_trip();
        self.inner().req_command(cmd)
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
    // NOTE: a cluster connection says no (a pipeline could span slots) but sends a
    // pipeline to the node of its first command's key; ours all name keys of one hash
    // tag, so one node serves the whole pipeline.
    fn supports_pipelining(&self) -> bool {
        true
    }
    fn check_connection(&mut self) -> bool {
        self.inner().check_connection()
    }
    fn is_open(&self) -> bool {
        match self {
            Conn::One(c) => c.is_open(),
            Conn::Cluster(c) => c.is_open(),
        }
    }
}

/// The client that makes [`Conn`]s.
enum Client {
    One(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// Per (group, instance) state of this handle.
#[derive(Default)]
struct InstanceState {
    /// Re-read the instance's own pending entries after this id before new ones.
    recover_from: Option<String>,
    /// The last id handed out by `read` (where recovery starts).
    last: Option<String>,
    /// Entries claimed for the instance beyond a read's `max`, for its next read.
    surplus: Vec<Entry>,
}

/// The keys of one bus.
struct Keys {
    stream: String,
    dlq: String,
    meta: String,
    /// The start of a publisher's de-dup key, `{prefix}:pub:` (see `scripts::append`).
    publisher: String,
}

/// One handle on a shared log in Redis. See the module docs and [`SharedLog`].
pub struct RedisLog {
    location: String,
    opts: RedisOptions,
    keys: Keys,
    client: Client,
    idle: Mutex<Vec<Conn>>,
    /// Connections for blocking reads: their response timeout is set once, to
    /// [`RedisLog::block_timeout`].
    blocking: Mutex<Vec<Conn>>,
    instances: Mutex<HashMap<(String, String), InstanceState>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLog")
            .field("location", &self.location)
            .finish()
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn check_max(max: usize) -> Result<usize> {
    if max == 0 {
        return Err(LogError::Invalid("max must be at least 1".into()));
    }
    Ok(max.min(1 << 16))
}

// ------------------------------------------------------------------ reply parsing

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => bytes(v).map(|b| String::from_utf8_lossy(b).into_owned()),
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => text(v)?.parse().ok(),
    }
}

fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// Field name -> value of a flat `[k, v, k, v, ...]` array (or a RESP3 map).
fn fields(v: &Value) -> HashMap<String, &Value> {
    let mut out = HashMap::new();
    match v {
        Value::Map(m) => {
            for (k, v) in m {
                if let Some(k) = text(k) {
                    out.insert(k, v);
                }
            }
        }
        _ => {
            let a = array(v);
            for kv in a.chunks(2) {
                if let [k, v] = kv {
                    if let Some(k) = text(k) {
                        out.insert(k, v);
                    }
                }
            }
        }
    }
    out
}

// ------------------------------------------------------------------ entry layouts
//
// NOTE: an entry is packed (one field `r`, `packed.rs`) or, written by an older
// version, ten fields (`e`, `t`, `p`, `ts`, `pb`, `ps`, `c`, `d`, `m`, `z`). Both may
// carry `o` (a restored dead letter's copy); a dead letter holds either besides its own
// fields. Every reader goes through these helpers, so both layouts are read alike.

/// The packed record of an entry's fields, if it is packed.
fn packed_field<'a>(f: &HashMap<String, &'a Value>) -> Option<&'a [u8]> {
    f.get("r").and_then(|v| bytes(v))
}

/// An entry's event time (µs), `None` if unreadable.
fn entry_ts(f: &HashMap<String, &Value>) -> Option<i64> {
    match packed_field(f) {
        Some(b) => packed::read(b).ok().map(|p| p.timestamp_us),
        None => f.get("ts").and_then(|v| int(v)),
    }
}

/// An entry's topic, `None` if unreadable.
fn entry_topic<'a>(f: &HashMap<String, &'a Value>) -> Option<std::borrow::Cow<'a, str>> {
    match packed_field(f) {
        Some(b) => packed::read(b).ok().map(|p| p.topic.into()),
        None => f.get("t").and_then(|v| text(v)).map(Into::into),
    }
}

/// The bytes an entry counts for in `meta`'s `bytes` (as the scripts count them).
fn entry_size(f: &HashMap<String, &Value>) -> i64 {
    match packed_field(f) {
        Some(b) => packed::read(b).map_or(0, |p| p.stored_size() as i64),
        None => f.get("z").and_then(|v| int(v)).unwrap_or(0),
    }
}

fn parse_id(s: &str) -> Result<EntryId> {
    EntryId::parse(s)
}

/// The id right after `id` (the smallest larger one).
fn successor(id: EntryId) -> EntryId {
    if id.minor == u64::MAX {
        EntryId::new(id.major + 1, 0)
    } else {
        EntryId::new(id.major, id.minor + 1)
    }
}

/// One stream entry as XRANGE/XREADGROUP return it: id and fields (`None`: the entry
/// was deleted but is still in a pending list).
struct RawEntry<'a> {
    id: EntryId,
    fields: Option<HashMap<String, &'a Value>>,
}

fn raw_entries(v: &Value) -> Result<Vec<RawEntry<'_>>> {
    let mut out = Vec::new();
    for e in array(v) {
        let parts = array(e);
        let id = parts
            .first()
            .and_then(text)
            .ok_or_else(|| LogError::Invalid("stream entry without an id".into()))?;
        let f = match parts.get(1) {
            None | Some(Value::Nil) => None,
            Some(f) => Some(fields(f)),
        };
        out.push(RawEntry {
            id: parse_id(&id)?,
            fields: f,
        });
    }
    Ok(out)
}

impl RedisLog {
    /// Connect to the server of `opts` (one connection, checked with PING).
    pub fn open(opts: RedisOptions) -> Result<RedisLog> {
        let log = RedisLog::open_unchecked(opts)?;
        log.run(false, |c| redis::cmd("PING").query::<Value>(c))?;
        Ok(log)
    }

    /// A handle on the server of `opts` without connecting yet: the first command
    /// connects (a spooled log must open while Redis is down). Fails only on bad
    /// options.
    pub fn open_unchecked(opts: RedisOptions) -> Result<RedisLog> {
        let location = if opts.cluster_nodes.is_empty() {
            format!("{}?prefix={}", mask(&opts.url), opts.prefix)
        } else {
            let nodes: Vec<String> = opts.cluster_nodes.iter().map(|n| mask(n)).collect();
            format!("cluster {}?prefix={}", nodes.join(","), opts.prefix)
        };
        if !valid_prefix(&opts.prefix) {
            return Err(LogError::Invalid(format!(
                "redis key prefix {:?} must be 1 to 100 of [A-Za-z0-9-_.:]",
                opts.prefix
            )));
        }
        if opts.url.starts_with("rediss://") {
            // NOTE: redis-rs builds its rustls ClientConfig from the process default
            // provider; the engine uses ring everywhere (src/sinks/tls.rs). An Err only
            // means a provider is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let certs = match &opts.ca_file {
            None => None,
            Some(ca) => Some(std::fs::read(ca).map_err(|e| LogError::Io {
                location: location.clone(),
                detail: format!("cannot read ca_file {}: {e}", ca.display()),
            })?),
        };
        let client = if opts.cluster_nodes.is_empty() {
            match certs {
                None => redis::Client::open(opts.url.as_str()),
                Some(pem) => redis::Client::build_with_tls(
                    opts.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                ),
            }
            .map(Client::One)
        } else {
            let mut b = redis::cluster::ClusterClientBuilder::new(opts.cluster_nodes.clone())
                .connection_timeout(opts.timeout)
                .response_timeout(opts.timeout);
            if let Some(pem) = certs {
                b = b.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                });
            }
            b.build().map(Client::Cluster)
        }
        .map_err(|e| LogError::Invalid(format!("backend URL {location:?}: {e}")))?;
        let p = &opts.prefix;
        let keys = Keys {
            stream: format!("{{{p}}}:stream"),
            dlq: format!("{{{p}}}:dlq"),
            meta: format!("{{{p}}}:meta"),
            publisher: format!("{{{p}}}:pub:"),
        };
        Ok(RedisLog {
            location,
            opts,
            keys,
            client,
            idle: Mutex::new(Vec::new()),
            blocking: Mutex::new(Vec::new()),
            instances: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        })
    }

    /// Open from a backend URL (see [`RedisOptions::from_url`]).
    pub fn open_url(url: &str) -> Result<RedisLog> {
        RedisLog::open(RedisOptions::from_url(url)?)
    }

    /// The options this handle was opened with.
    pub fn options(&self) -> &RedisOptions {
        &self.opts
    }

    fn err(&self, e: RedisError) -> LogError {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            LogError::Io {
                location: self.location.clone(),
                detail: e.to_string(),
            }
        } else {
            LogError::Backend {
                location: self.location.clone(),
                detail: e.to_string(),
            }
        }
    }

    fn connection(&self) -> Result<Conn> {
        self.connection_in(&self.idle, self.opts.timeout)
    }

    /// The response timeout of blocking reads (see [`RedisOptions::block_timeout`]).
    fn block_timeout(&self) -> Duration {
        self.opts
            .block_timeout
            .unwrap_or(BLOCK_SLICE + BLOCK_MARGIN)
    }

    /// A connection from `pool`, or a new one with response timeout `read_timeout`.
    fn connection_in(&self, pool: &Mutex<Vec<Conn>>, read_timeout: Duration) -> Result<Conn> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        if let Some(c) = pool.lock().pop() {
            return Ok(c);
        }
        let c = match &self.client {
            Client::One(cl) => cl
                .get_connection_with_timeout(self.opts.timeout)
                .map(Conn::One),
            Client::Cluster(cl) => cl.get_connection().map(|c| Conn::Cluster(Box::new(c))),
        }
        .map_err(|e| self.err(e))?;
        c.set_read_timeout(Some(read_timeout))
            .and_then(|_| c.set_write_timeout(Some(self.opts.timeout)))
            .map_err(|e| self.err(e))?;
        Ok(c)
    }

    fn give_back(&self, c: Conn) {
        self.give_back_to(&self.idle, c)
    }

    fn give_back_to(&self, pool: &Mutex<Vec<Conn>>, c: Conn) {
        if !self.closed.load(Ordering::Acquire) {
            let mut idle = pool.lock();
            if idle.len() < 8 {
                idle.push(c);
            }
        }
    }

    /// Run `f` on a pooled connection. A connection that failed with an I/O error or a
    /// timeout is dropped (its state is unknown); with `retry` (idempotent `f`), `f` is
    /// tried once more on a fresh connection.
    fn run<T>(
        &self,
        retry: bool,
        mut f: impl FnMut(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut tries = if retry { 2 } else { 1 };
        loop {
            let mut c = self.connection()?;
            match f(&mut c) {
                Ok(v) => {
                    self.give_back(c);
                    return Ok(v);
                }
                Err(e) => {
                    let broken = e.is_io_error() || e.is_timeout() || e.is_connection_dropped();
                    if !broken {
                        self.give_back(c);
                        return Err(self.err(e));
                    }
                    tries -= 1;
                    if tries == 0 {
                        return Err(self.err(e));
                    }
                }
            }
        }
    }

    fn map_group_err(&self, group: &str, e: LogError) -> LogError {
        match &e {
            LogError::Backend { detail, .. } if detail.contains("NOGROUP") => {
                LogError::UnknownGroup(group.to_string())
            }
            _ => e,
        }
    }

    fn record_of(&self, f: &HashMap<String, &Value>, id: EntryId) -> Result<Record> {
        let corrupt = |what: &str| LogError::Corrupt {
            location: self.location.clone(),
            detail: format!("stream entry {id}: {what}"),
        };
        if let Some(b) = packed_field(f) {
            return packed::read(b)
                .and_then(|p| p.record())
                .map_err(|e| corrupt(&e));
        }
        let get = |k: &str| -> Result<&Value> {
            f.get(k)
                .copied()
                .ok_or_else(|| corrupt(&format!("field {k:?} missing")))
        };
        let s = |k: &str| -> Result<String> {
            text(get(k)?).ok_or_else(|| corrupt(&format!("field {k:?} not a string")))
        };
        let n = |k: &str| -> Result<i64> {
            int(get(k)?).ok_or_else(|| corrupt(&format!("field {k:?} not a number")))
        };
        let stored = bytes(get("d")?).unwrap_or(&[]).to_vec();
        let payload = match n("c")? {
            0 => stored,
            1 => crate::storage::decompress_lz4(&stored).map_err(|e| corrupt(&e))?,
            other => return Err(corrupt(&format!("unknown payload codec {other}"))),
        };
        Ok(Record {
            event_id: s("e")?,
            topic: s("t")?,
            priority: n("p")? as u8,
            timestamp_us: n("ts")?,
            publisher: s("pb")?,
            publisher_seq: n("ps")? as u64,
            payload,
            metadata: bytes(get("m")?).unwrap_or(&[]).to_vec(),
        })
    }

    /// XINFO GROUPS as name -> fields (empty when the stream does not exist yet).
    fn info_groups(&self) -> Result<Vec<HashMap<String, Value>>> {
        let v = self.run(true, |c| {
            match redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&self.keys.stream)
                .query::<Value>(c)
            {
                Err(e) if e.to_string().contains("no such key") => Ok(Value::Array(vec![])),
                other => other,
            }
        })?;
        Ok(array(&v)
            .iter()
            .map(|g| fields(g).into_iter().map(|(k, v)| (k, v.clone())).collect())
            .collect())
    }

    fn group_info(&self, group: &str) -> Result<HashMap<String, Value>> {
        self.info_groups()?
            .into_iter()
            .find(|g| g.get("name").and_then(text).as_deref() == Some(group))
            .ok_or_else(|| LogError::UnknownGroup(group.to_string()))
    }

    /// Delivery counts of `ids` pending for `consumer` in `group`.
    fn delivery_counts(
        &self,
        c: &mut Conn,
        group: &str,
        consumer: &str,
        ids: &[EntryId],
    ) -> redis::RedisResult<HashMap<EntryId, u32>> {
        let mut out = HashMap::new();
        if let (Some(first), Some(last)) = (ids.iter().min(), ids.iter().max()) {
            let v: Value = redis::cmd("XPENDING")
                .arg(&self.keys.stream)
                .arg(group)
                .arg(first.to_string())
                .arg(last.to_string())
                .arg(ids.len().max(1) * 2 + 16)
                .arg(consumer)
                .query(c)?;
            for p in array(&v) {
                let p = array(p);
                if let (Some(id), Some(n)) = (p.first().and_then(text), p.get(3).and_then(int)) {
                    if let Ok(id) = parse_id(&id) {
                        out.insert(id, n as u32);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Turn raw entries into [`Entry`]s for `group`: deleted ones (no fields) and
    /// copies meant for another group are acknowledged and left out; the deleted ones
    /// are counted as trimmed before they were processed.
    fn entries_of(
        &self,
        group: &str,
        raw: Vec<RawEntry<'_>>,
        deliveries: impl Fn(EntryId) -> u32,
    ) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut skip = Vec::new();
        let mut gone = 0i64;
        for r in raw {
            match r.fields {
                None => {
                    gone += 1;
                    skip.push(r.id);
                }
                Some(f) => {
                    if let Some(only) = f.get("o").and_then(|v| text(v)) {
                        if only != group {
                            skip.push(r.id);
                            continue;
                        }
                    }
                    out.push(Entry {
                        id: r.id,
                        record: self.record_of(&f, r.id)?,
                        deliveries: deliveries(r.id),
                    });
                }
            }
        }
        if !skip.is_empty() || gone > 0 {
            self.run(true, |c| {
                let mut p = redis::pipe();
                if !skip.is_empty() {
                    p.cmd("XACK")
                        .arg(&self.keys.stream)
                        .arg(group)
                        .arg(skip.iter().map(|i| i.to_string()).collect::<Vec<_>>())
                        .ignore();
                }
                if gone > 0 {
                    p.cmd("HINCRBY")
                        .arg(&self.keys.meta)
                        .arg("dropped")
                        .arg(gone)
                        .ignore();
                }
                p.query::<()>(c)
            })?;
        }
        Ok(out)
    }

    /// One XREADGROUP (from `from`: ">" for new entries, an id for the instance's own
    /// pending entries after it), optionally blocking up to `block`.
    fn xreadgroup(
        &self,
        group: &str,
        instance: &str,
        max: usize,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Value> {
        // NOTE: the reply may take the whole BLOCK: blocking reads run on their own
        // connections, whose response timeout (set once, when made) is longer than
        // any BLOCK unless `block_timeout` says otherwise. One that gives up first
        // leaves what the server delivered meanwhile in the instance's pending list;
        // the caller marks the instance to re-read it.
        let pool = if block.is_some() {
            &self.blocking
        } else {
            &self.idle
        };
        let read_timeout = if block.is_some() {
            self.block_timeout()
        } else {
            self.opts.timeout
        };
        let mut c = self.connection_in(pool, read_timeout)?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(instance)
            .arg("COUNT")
            .arg(max);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.keys.stream).arg(from);
        match cmd.query::<Value>(&mut c) {
            Ok(v) => {
                self.give_back_to(pool, c);
                Ok(v)
            }
            Err(e) => {
                let broken = e.is_io_error() || e.is_timeout() || e.is_connection_dropped();
                if !broken {
                    self.give_back_to(pool, c);
                }
                Err(self.map_group_err(group, self.err(e)))
            }
        }
    }

    fn instance_mark(&self, group: &str, instance: &str, f: impl FnOnce(&mut InstanceState)) {
        let mut m = self.instances.lock();
        let st = m
            .entry((group.to_string(), instance.to_string()))
            .or_insert_with(|| InstanceState {
                recover_from: Some("0".into()),
                last: None,
                surplus: Vec::new(),
            });
        f(st);
    }

    /// One read (a slice of a blocking one): acknowledge `acks`, then claim. Returns
    /// how many of `acks` were pending, and the entries.
    fn try_read(
        &self,
        group: &str,
        instance: &str,
        acks: &[EntryId],
        max: usize,
        block: Option<Duration>,
    ) -> Result<(u64, Vec<Entry>)> {
        // 1. The instance's own pending entries a lost reply may have stranded (rare:
        // the first read of an instance on this handle, or after a failed read).
        let mut recover = None;
        self.instance_mark(group, instance, |st| {
            recover = st.recover_from.clone();
            if recover.is_some() {
                // Pending for the instance after `last`: the re-read gets them.
                st.surplus.clear();
            }
        });
        if let Some(from) = recover {
            let acked = if acks.is_empty() {
                0
            } else {
                self.ack(group, acks)?
            };
            let v = self.xreadgroup(group, instance, max, &from, None)?;
            let stream = array(&v).first().map(array).unwrap_or(&[]);
            let raw = raw_entries(stream.get(1).unwrap_or(&Value::Nil))?;
            let n = raw.len();
            let last = raw.last().map(|r| r.id.to_string());
            let ids: Vec<EntryId> = raw.iter().map(|r| r.id).collect();
            let counts = self.run(true, |c| self.delivery_counts(c, group, instance, &ids))?;
            let got = self.entries_of(group, raw, |id| counts.get(&id).copied().unwrap_or(2))?;
            self.instance_mark(group, instance, |st| {
                st.recover_from = if n < max { None } else { last.clone() };
                if last.is_some() {
                    st.last = last;
                }
            });
            if !got.is_empty() || n > 0 {
                return Ok((acked, got));
            }
            let (_, got) = self.try_read(group, instance, &[], max, block)?;
            return Ok((acked, got));
        }
        // 2. Entries claimed beyond `max` by the last read (ready + new) come first.
        let mut surplus = Vec::new();
        self.instance_mark(group, instance, |st| {
            let n = st.surplus.len().min(max);
            surplus = st.surplus.drain(..n).collect();
        });
        if !surplus.is_empty() {
            let acked = if acks.is_empty() {
                0
            } else {
                self.ack(group, acks)?
            };
            return Ok((acked, surplus));
        }
        // 3. In one pipeline: a script for the acks and the replayed dead letters
        // waiting for the group, then new entries (not blocking).
        // NOTE: not retried on a lost connection: the server may have run it, leaving
        // what it handed out pending for this instance: the next read re-reads that.
        let mark_lost = |e: &LogError| {
            if matches!(e, LogError::Io { .. }) {
                self.instance_mark(group, instance, |st| {
                    st.recover_from = Some(st.last.clone().unwrap_or_else(|| "0".into()))
                });
            }
        };
        let (script, new) = self
            .run(false, |c| {
                let mut p = redis::pipe();
                let eval = p
                    .cmd("EVAL")
                    .arg(scripts::ACK_AND_READY)
                    .arg(1)
                    .arg(&self.keys.stream)
                    .arg(group)
                    .arg(instance)
                    .arg(max)
                    .arg(READY);
                for id in acks {
                    eval.arg(id.to_string());
                }
                p.cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(group)
                    .arg(instance)
                    .arg("COUNT")
                    .arg(max)
                    .arg("STREAMS")
                    .arg(&self.keys.stream)
                    .arg(">");
                p.query::<(Value, Value)>(c)
            })
            .map_err(|e| self.map_group_err(group, e))
            .inspect_err(mark_lost)?;
        let parts = array(&script);
        let acked = parts.first().and_then(int).unwrap_or(0).max(0) as u64;
        let mut got = self.entries_of(
            group,
            raw_entries(parts.get(1).unwrap_or(&Value::Nil))?,
            |_| 1,
        )?;
        let stream = array(&new).first().map(array).unwrap_or(&[]);
        let raw = raw_entries(stream.get(1).unwrap_or(&Value::Nil))?;
        got.extend(self.entries_of(group, raw, |_| 1)?);
        if got.len() > max {
            // NOTE: only after a replay (ready entries as well as `max` new ones):
            // claimed for this instance, handed out by its next read.
            let rest = got.split_off(max);
            self.instance_mark(group, instance, |st| st.surplus.extend(rest));
        }
        // 4. Nothing waiting: block for new entries on a blocking connection.
        if got.is_empty() && block.is_some() {
            let v = self
                .xreadgroup(group, instance, max, ">", block)
                .inspect_err(mark_lost)?;
            let stream = array(&v).first().map(array).unwrap_or(&[]);
            let raw = raw_entries(stream.get(1).unwrap_or(&Value::Nil))?;
            got.extend(self.entries_of(group, raw, |_| 1)?);
        }
        if let Some(last) = got.iter().map(|e| e.id).max() {
            self.instance_mark(group, instance, |st| st.last = Some(last.to_string()));
        }
        Ok((acked, got))
    }

    /// Every stream entry, paged, from after `after` while `keep_going` says so.
    fn scan(
        &self,
        after: Option<EntryId>,
        mut visit: impl FnMut(EntryId, &HashMap<String, &Value>) -> Result<bool>,
    ) -> Result<()> {
        let mut start = match after {
            Some(a) => format!("({a}"),
            None => "-".to_string(),
        };
        loop {
            let v = self.run(true, |c| {
                redis::cmd("XRANGE")
                    .arg(&self.keys.stream)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(500)
                    .query::<Value>(c)
            })?;
            let raw = raw_entries(&v)?;
            let Some(last) = raw.last().map(|r| r.id) else {
                return Ok(());
            };
            for r in &raw {
                let empty = HashMap::new();
                if !visit(r.id, r.fields.as_ref().unwrap_or(&empty))? {
                    return Ok(());
                }
            }
            start = format!("({last}");
        }
    }

    fn trim_below(&self, cut: EntryId) -> Result<u64> {
        let n = self.run(true, |c| {
            scripts::trim_below()
                .key(&self.keys.stream)
                .key(&self.keys.meta)
                .arg(cut.to_string())
                .invoke::<i64>(c)
        })?;
        Ok(n.max(0) as u64)
    }

    /// Below this id every entry is handled by every group (`None`: no group).
    fn low_water(&self) -> Result<Option<EntryId>> {
        let mut low: Option<EntryId> = None;
        for g in self.info_groups()? {
            let name = g.get("name").and_then(text).unwrap_or_default();
            let pos = g
                .get("last-delivered-id")
                .and_then(text)
                .map(|s| parse_id(&s))
                .transpose()?
                .unwrap_or(EntryId::new(0, 0));
            let mut mark = successor(pos);
            let v = self.run(true, |c| {
                redis::cmd("XPENDING")
                    .arg(&self.keys.stream)
                    .arg(&name)
                    .query::<Value>(c)
            })?;
            if let Some(min) = array(&v).get(1).and_then(text) {
                mark = mark.min(parse_id(&min)?);
            }
            low = Some(low.map_or(mark, |l: EntryId| l.min(mark)));
        }
        Ok(low)
    }

    /// The `EVALSHA` of the append script for `records`, as the RESP bytes sent.
    ///
    /// NOTE: built in one buffer, sized up front: each record is packed straight
    /// into it (its length known before its bytes, `packed::packed_len`), so a batch
    /// costs one allocation (plus one per compressed payload, plus the runs), not a few
    /// per event.
    fn append_command(&self, records: &[Record]) -> Vec<u8> {
        use std::io::Write;
        let (publishers, runs) = runs_of(records);
        let mut out = Vec::with_capacity(append_command_capacity(records));
        let bulks = 3 + 2 + publishers.len() + 3 + 3 * runs.len() + records.len();
        let _ = write!(out, "*{bulks}\r\n");
        put_bulk(&mut out, b"EVALSHA");
        put_bulk(&mut out, scripts::append().get_hash().as_bytes());
        put_bulk(&mut out, (2 + publishers.len()).to_string().as_bytes());
        put_bulk(&mut out, self.keys.stream.as_bytes());
        put_bulk(&mut out, self.keys.meta.as_bytes());
        for p in &publishers {
            let _ = write!(out, "${}\r\n", self.keys.publisher.len() + p.len());
            out.extend_from_slice(self.keys.publisher.as_bytes());
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let ttl_ms = self.opts.dedup_ttl.as_millis().max(1) as u64;
        put_bulk(&mut out, ttl_ms.to_string().as_bytes());
        put_bulk(&mut out, RANGES_KEPT.to_string().as_bytes());
        put_bulk(&mut out, runs.len().to_string().as_bytes());
        for run in &runs {
            for v in [run.key as u64, run.first_seq, run.len as u64] {
                put_bulk(&mut out, v.to_string().as_bytes());
            }
        }
        for r in records {
            let (codec, stored) = encode(&r.payload, self.opts.compress_threshold);
            let _ = write!(out, "${}\r\n", packed::packed_len(r, stored.len()));
            packed::write(&mut out, r, codec, &stored);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[cfg(test)]
    pub(crate) fn append_command_for_test(&self, records: &[Record]) -> Vec<u8> {
        self.append_command(records)
    }

    fn dl_ids(&self, group: Option<&str>) -> Result<Vec<(String, HashMap<String, Value>)>> {
        let v = self.run(true, |c| {
            redis::cmd("XRANGE")
                .arg(&self.keys.dlq)
                .arg("-")
                .arg("+")
                .query::<Value>(c)
        })?;
        let mut out = Vec::new();
        for e in array(&v) {
            let parts = array(e);
            let (Some(id), Some(f)) = (parts.first().and_then(text), parts.get(1)) else {
                continue;
            };
            let f: HashMap<String, Value> =
                fields(f).into_iter().map(|(k, v)| (k, v.clone())).collect();
            if group.is_none_or(|g| f.get("g").and_then(text).as_deref() == Some(g)) {
                out.push((id, f));
            }
        }
        Ok(out)
    }
}

impl SharedLog for RedisLog {
    fn location(&self) -> &str {
        &self.location
    }

    fn append(&self, records: &[Record]) -> Result<Vec<EntryId>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        for r in records {
            check_record(r)?;
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let cmd = self.append_command(records);
        // NOTE: retried once on a lost connection: the records' publisher sequence
        // numbers de-duplicate a first attempt the server applied but whose reply was
        // lost (`scripts::append`).
        let v = self.run(true, |c| {
            let send = |c: &mut Conn| c.req_packed_command(&cmd).and_then(|v| v.extract_error());
            match send(c) {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    scripts::append().load(c)?;
                    send(c)
                }
                other => other,
            }
        })?;
        let ids = array(&v);
        if ids.len() != records.len() {
            return Err(LogError::Backend {
                location: self.location.clone(),
                detail: format!(
                    "the append script returned {} ids for {} records",
                    ids.len(),
                    records.len()
                ),
            });
        }
        ids.iter()
            .map(|s| {
                parse_id(
                    bytes(s)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .unwrap_or(""),
                )
            })
            .collect()
    }

    fn ensure_group(&self, group: &str, start: StartAt) -> Result<bool> {
        check_name("group", group)?;
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let at = match start {
            StartAt::Earliest => "0".to_string(),
            StartAt::Latest => "$".to_string(),
            StartAt::Time(t) => {
                // The group starts after the entry before the first one at or after t;
                // with none, after the last entry seen (never `$`: an append racing
                // this scan must not be skipped).
                let mut prev: Option<EntryId> = None;
                self.scan(None, |id, f| {
                    let ts = entry_ts(f).unwrap_or(i64::MIN);
                    if ts >= t {
                        return Ok(false);
                    }
                    prev = Some(id);
                    Ok(true)
                })?;
                prev.map_or("0".to_string(), |p| p.to_string())
            }
        };
        let r = self.run(true, |c| {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&self.keys.stream)
                .arg(group)
                .arg(&at)
                .arg("MKSTREAM")
                .query::<Value>(c)
        });
        match r {
            Ok(_) => Ok(true),
            Err(LogError::Backend { detail, .. }) if detail.contains("BUSYGROUP") => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn groups(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .info_groups()?
            .iter()
            .filter_map(|g| g.get("name").and_then(text))
            .collect();
        names.sort();
        Ok(names)
    }

    fn delete_group(&self, group: &str) -> Result<bool> {
        check_name("group", group)?;
        let n = self.run(true, |c| {
            match redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(&self.keys.stream)
                .arg(group)
                .query::<i64>(c)
            {
                Err(e) if e.to_string().contains("no such key") => Ok(0),
                other => other,
            }
        })?;
        let dls: Vec<String> = self
            .dl_ids(Some(group))?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if !dls.is_empty() {
            self.run(true, |c| {
                redis::cmd("XDEL")
                    .arg(&self.keys.dlq)
                    .arg(&dls)
                    .query::<i64>(c)
            })?;
        }
        self.instances.lock().retain(|(g, _), _| g != group);
        Ok(n > 0)
    }

    fn read(
        &self,
        group: &str,
        instance: &str,
        max: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>> {
        Ok(self.ack_and_read(group, instance, &[], max, block)?.1)
    }

    fn ack_and_read(
        &self,
        group: &str,
        instance: &str,
        acks: &[EntryId],
        max: usize,
        block: Option<Duration>,
    ) -> Result<(u64, Vec<Entry>)> {
        check_name("instance", instance)?;
        let max = check_max(max)?;
        let deadline = block.map(|b| Instant::now() + b);
        let mut acks = acks;
        let mut acked = 0;
        loop {
            let slice =
                deadline.map(|d| d.saturating_duration_since(Instant::now()).min(BLOCK_SLICE));
            let slice = slice.filter(|s| !s.is_zero());
            let (n, got) = self.try_read(group, instance, acks, max, slice)?;
            // The acks went with the first slice.
            (acked, acks) = (acked + n, &[]);
            let done = match deadline {
                None => true,
                Some(d) => Instant::now() >= d,
            };
            if !got.is_empty() || done {
                return Ok((acked, got));
            }
            if self.closed.load(Ordering::Acquire) {
                return Err(LogError::Closed);
            }
        }
    }

    fn renew(&self, group: &str, instance: &str, ids: &[EntryId]) -> Result<Vec<EntryId>> {
        check_name("instance", instance)?;
        if ids.is_empty() {
            self.group_info(group)?;
            return Ok(Vec::new());
        }
        let v = self
            .run(true, |c| {
                let mut inv = scripts::reclaim_own().prepare_invoke();
                inv.key(&self.keys.stream).arg(group).arg(instance).arg(0);
                for id in ids {
                    inv.arg(id.to_string());
                }
                inv.invoke::<Vec<String>>(c)
            })
            .map_err(|e| self.map_group_err(group, e))?;
        v.iter().map(|s| parse_id(s)).collect()
    }

    fn release(&self, group: &str, instance: &str, ids: &[EntryId]) -> Result<u64> {
        check_name("instance", instance)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let v = self
            .run(true, |c| {
                let mut inv = scripts::reclaim_own().prepare_invoke();
                inv.key(&self.keys.stream)
                    .arg(group)
                    .arg(instance)
                    .arg(RELEASED_IDLE_MS);
                for id in ids {
                    inv.arg(id.to_string());
                }
                inv.invoke::<Vec<String>>(c)
            })
            .map_err(|e| self.map_group_err(group, e))?;
        Ok(v.len() as u64)
    }

    fn ack(&self, group: &str, ids: &[EntryId]) -> Result<u64> {
        check_name("group", group)?;
        if ids.is_empty() {
            self.group_info(group)?;
            return Ok(0);
        }
        let n = self.run(true, |c| {
            // Pipelined in chunks: one round trip per 1,000 ids.
            let mut p = redis::pipe();
            for chunk in ids.chunks(1000) {
                p.cmd("XACK")
                    .arg(&self.keys.stream)
                    .arg(group)
                    .arg(chunk.iter().map(|i| i.to_string()).collect::<Vec<_>>());
            }
            p.query::<Vec<i64>>(c)
        })?;
        Ok(n.iter().sum::<i64>().max(0) as u64)
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
        let mut out = Vec::new();
        let mut cursor = "0-0".to_string();
        loop {
            let want = max - out.len();
            let v = self
                .run(false, |c| {
                    redis::cmd("XAUTOCLAIM")
                        .arg(&self.keys.stream)
                        .arg(group)
                        .arg(instance)
                        .arg(min_idle.as_millis() as u64)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(want)
                        .query::<Value>(c)
                })
                .map_err(|e| self.map_group_err(group, e))?;
            let parts = array(&v);
            let next = parts.first().and_then(text).unwrap_or_else(|| "0-0".into());
            let raw = raw_entries(parts.get(1).unwrap_or(&Value::Nil))?;
            // NOTE: Redis 7 returns (and drops from the pending list) the ids of entries
            // deleted from the stream before anyone handled them: counted, never hidden.
            let deleted = parts.get(2).map(|d| array(d).len()).unwrap_or(0);
            if deleted > 0 {
                self.run(true, |c| {
                    redis::cmd("HINCRBY")
                        .arg(&self.keys.meta)
                        .arg("dropped")
                        .arg(deleted)
                        .query::<i64>(c)
                })?;
            }
            let ids: Vec<EntryId> = raw.iter().map(|r| r.id).collect();
            let counts = self.run(true, |c| self.delivery_counts(c, group, instance, &ids))?;
            out.extend(self.entries_of(group, raw, |id| counts.get(&id).copied().unwrap_or(2))?);
            if next == "0-0" || out.len() >= max {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }

    fn has_expired(&self, group: &str, min_idle: Duration) -> Result<bool> {
        // NOTE: one XPENDING with IDLE (it walks the group's pending list, at most what
        // is in flight): a reader probes every poll and runs XAUTOCLAIM (and the
        // XPENDING of the delivery counts) only when something is to be taken.
        let v = self
            .run(true, |c| {
                redis::cmd("XPENDING")
                    .arg(&self.keys.stream)
                    .arg(group)
                    .arg("IDLE")
                    .arg(min_idle.as_millis() as u64)
                    .arg("-")
                    .arg("+")
                    .arg(1)
                    .query::<Value>(c)
            })
            .map_err(|e| self.map_group_err(group, e))?;
        Ok(!array(&v).is_empty())
    }

    fn dead_letter(&self, group: &str, id: EntryId, reason: &str, attempts: u32) -> Result<i64> {
        check_name("group", group)?;
        let r = self.run(false, |c| {
            scripts::dead_letter()
                .key(&self.keys.stream)
                .key(&self.keys.dlq)
                .key(&self.keys.meta)
                .arg(group)
                .arg(id.to_string())
                .arg(reason)
                .arg(attempts)
                .arg(now_us())
                .invoke::<i64>(c)
        });
        match r {
            Err(LogError::Backend { detail, .. })
                if detail.contains("NOTPENDING") || detail.contains("GONE") =>
            {
                Err(LogError::Invalid(format!(
                    "entry {id} is not pending for group {group:?} (or no longer in the \
                     log); cannot dead-letter it"
                )))
            }
            Err(e) => Err(self.map_group_err(group, e)),
            Ok(n) => Ok(n),
        }
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
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let (codec, stored) = encode(&record.payload, self.opts.compress_threshold);
        let size = stored.len() + record.metadata.len();
        // NOTE: not retried: a lost reply after the server applied it would store the
        // dead letter twice (the script has no de-duplication key).
        self.run(false, |c| {
            scripts::add_dead_letter()
                .key(&self.keys.dlq)
                .key(&self.keys.meta)
                .arg(group)
                .arg(reason)
                .arg(attempts)
                .arg(now_us())
                .arg(&record.event_id)
                .arg(&record.topic)
                .arg(record.priority)
                .arg(record.timestamp_us)
                .arg(&record.publisher)
                .arg(record.publisher_seq)
                .arg(codec)
                .arg(stored.as_ref())
                .arg(&record.metadata)
                .arg(size)
                .invoke::<i64>(c)
        })
    }

    fn dead_letters(&self, group: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        for (dlid, f) in self.dl_ids(group)? {
            if out.len() >= limit {
                break;
            }
            let refs: HashMap<String, &Value> = f.iter().map(|(k, v)| (k.clone(), v)).collect();
            let id = parse_id(&refs.get("id").and_then(|v| text(v)).unwrap_or_default())?;
            out.push(DeadLetter {
                dl_id: parse_id(&dlid)?.major as i64,
                group: refs.get("g").and_then(|v| text(v)).unwrap_or_default(),
                id,
                record: self.record_of(&refs, id)?,
                reason: refs.get("why").and_then(|v| text(v)).unwrap_or_default(),
                attempts: refs.get("n").and_then(|v| int(v)).unwrap_or(0) as u32,
                failed_us: refs.get("at").and_then(|v| int(v)).unwrap_or(0),
            });
        }
        Ok(out)
    }

    fn replay_dead_letters(&self, group: &str, dl_ids: Option<&[i64]>) -> Result<u64> {
        check_name("group", group)?;
        self.group_info(group)?;
        let wanted: Option<HashSet<i64>> = dl_ids.map(|d| d.iter().copied().collect());
        let ids: Vec<String> = self
            .dl_ids(Some(group))?
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| {
                wanted
                    .as_ref()
                    .is_none_or(|w| parse_id(id).is_ok_and(|p| w.contains(&(p.major as i64))))
            })
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let n = self.run(false, |c| {
            let mut inv = scripts::replay().prepare_invoke();
            inv.key(&self.keys.stream)
                .key(&self.keys.dlq)
                .key(&self.keys.meta)
                .arg(group)
                .arg(READY);
            for id in &ids {
                inv.arg(id);
            }
            inv.invoke::<i64>(c)
        })?;
        Ok(n.max(0) as u64)
    }

    fn requeue(&self, group: &str, ids: &[EntryId]) -> Result<u64> {
        check_name("group", group)?;
        let position = self
            .group_info(group)?
            .get("last-delivered-id")
            .and_then(text)
            .map(|s| parse_id(&s))
            .transpose()?
            .unwrap_or(EntryId::new(0, 0));
        let wanted: Vec<String> = ids
            .iter()
            .filter(|id| **id <= position)
            .map(|id| id.to_string())
            .collect();
        if wanted.is_empty() {
            return Ok(0);
        }
        // NOTE: XCLAIM ... FORCE to the ready pseudo-consumer, as replayed dead letters
        // are; Redis drops ids no longer in the stream, so the reply counts the rest.
        let mut n = 0u64;
        for chunk in wanted.chunks(500) {
            let claimed: Vec<String> = self.run(false, |c| {
                redis::cmd("XCLAIM")
                    .arg(&self.keys.stream)
                    .arg(group)
                    .arg(READY)
                    .arg(0)
                    .arg(chunk)
                    .arg("IDLE")
                    .arg(0)
                    .arg("RETRYCOUNT")
                    .arg(0)
                    .arg("FORCE")
                    .arg("JUSTID")
                    .query(c)
            })?;
            n += claimed.len() as u64;
        }
        Ok(n)
    }

    fn remove_dead_letters(&self, dl_ids: &[i64]) -> Result<u64> {
        if dl_ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = dl_ids.iter().map(|d| format!("{d}-1")).collect();
        let n = self.run(true, |c| {
            redis::cmd("XDEL")
                .arg(&self.keys.dlq)
                .arg(&ids)
                .query::<i64>(c)
        })?;
        Ok(n.max(0) as u64)
    }

    fn group_stats(&self, group: &str) -> Result<GroupStats> {
        let info = self.group_info(group)?;
        let position = info
            .get("last-delivered-id")
            .and_then(text)
            .map(|s| parse_id(&s))
            .transpose()?
            .filter(|p| *p != EntryId::new(0, 0));
        let pending_all = info.get("pending").and_then(int).unwrap_or(0).max(0) as u64;
        let summary = self.run(true, |c| {
            redis::cmd("XPENDING")
                .arg(&self.keys.stream)
                .arg(group)
                .query::<Value>(c)
        })?;
        let mut ready = 0u64;
        for cons in array(array(&summary).get(3).unwrap_or(&Value::Nil)) {
            let cons = array(cons);
            if cons.first().and_then(text).as_deref() == Some(READY) {
                ready = cons.get(1).and_then(int).unwrap_or(0).max(0) as u64;
            }
        }
        let lag = match info.get("lag").and_then(int) {
            Some(l) => l.max(0) as u64,
            None => {
                // NOTE: Redis reports no lag after some deletions; count instead.
                let mut n = 0u64;
                self.scan(position, |_, _| {
                    n += 1;
                    Ok(true)
                })?;
                n
            }
        };
        let dead_letters = self.dl_ids(Some(group))?.len() as u64;
        Ok(GroupStats {
            name: group.to_string(),
            pending: pending_all.saturating_sub(ready),
            ready,
            lag,
            dead_letters,
            position,
        })
    }

    fn stats(&self) -> Result<LogStats> {
        let groups = self.info_groups()?.len() as u64;
        let v = self.run(true, |c| {
            redis::pipe()
                .cmd("XLEN")
                .arg(&self.keys.stream)
                .cmd("HMGET")
                .arg(&self.keys.meta)
                .arg("bytes")
                .arg("dropped")
                .cmd("XRANGE")
                .arg(&self.keys.stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .cmd("XREVRANGE")
                .arg(&self.keys.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .cmd("XLEN")
                .arg(&self.keys.dlq)
                .query::<Vec<Value>>(c)
        })?;
        let first_id = |v: Option<&Value>| -> Result<Option<EntryId>> {
            Ok(raw_entries(v.unwrap_or(&Value::Nil))?.first().map(|r| r.id))
        };
        let meta = array(v.get(1).unwrap_or(&Value::Nil));
        Ok(LogStats {
            entries: v.first().and_then(int).unwrap_or(0).max(0) as u64,
            bytes: meta.first().and_then(int).unwrap_or(0).max(0) as u64,
            first: first_id(v.get(2))?,
            last: first_id(v.get(3))?,
            groups,
            dead_letters: v.get(4).and_then(int).unwrap_or(0).max(0) as u64,
            dropped_unhandled: meta.get(1).and_then(int).unwrap_or(0).max(0) as u64,
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
        let limit = check_max(limit)?;
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
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let mut out = Vec::new();
        self.scan(after, |id, f| {
            if f.is_empty() || f.contains_key("o") {
                // A dead letter's restored copy is not a new event.
                return Ok(true);
            }
            let ts = entry_ts(f).unwrap_or(0);
            if since.is_some_and(|s| ts < s) || until.is_some_and(|u| ts >= u) {
                return Ok(true);
            }
            if let Some(ps) = &patterns {
                let topic = entry_topic(f).unwrap_or_default();
                if !ps.iter().any(|p| p.matches(&topic)) {
                    return Ok(true);
                }
            }
            out.push((id, self.record_of(f, id)?));
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    fn apply_retention(&self, policy: &Retention) -> Result<RetentionReport> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let now = now_us();
        let cutoff = |d: Duration| now.saturating_sub(d.as_micros().min(i64::MAX as u128) as i64);
        let mut report = RetentionReport::default();
        // NOTE: a stream is trimmed from its start (XTRIM MINID): ages are judged in log
        // order, so an old-stamped entry behind a newer one waits for it.
        if let Some(hard) = policy.hard_max_age {
            let t = cutoff(hard);
            let low = self.low_water()?;
            let mut cut = None;
            let mut unhandled = Vec::new();
            self.scan(None, |id, f| {
                let ts = entry_ts(f).unwrap_or(i64::MAX);
                if ts >= t {
                    return Ok(false);
                }
                if low.is_some_and(|l| id >= l) {
                    unhandled.push(id);
                }
                cut = Some(successor(id));
                Ok(true)
            })?;
            if let Some(cut) = cut {
                self.trim_below(cut)?;
                if !unhandled.is_empty() {
                    let groups = self.groups()?;
                    let strs: Vec<String> = unhandled.iter().map(|i| i.to_string()).collect();
                    self.run(true, |c| {
                        let mut p = redis::pipe();
                        for g in &groups {
                            for chunk in strs.chunks(1000) {
                                p.cmd("XACK")
                                    .arg(&self.keys.stream)
                                    .arg(g)
                                    .arg(chunk)
                                    .ignore();
                            }
                        }
                        p.cmd("HINCRBY")
                            .arg(&self.keys.meta)
                            .arg("dropped")
                            .arg(strs.len())
                            .ignore();
                        p.query::<()>(c)
                    })?;
                }
                report.dropped_unhandled = unhandled.len() as u64;
            }
        }
        let low = self.low_water()?;
        let handled = |id: EntryId| low.is_none_or(|l| id < l);
        if let Some(age) = policy.max_age {
            let t = cutoff(age);
            let mut cut = None;
            let mut deleted = 0u64;
            let mut kept = 0u64;
            self.scan(None, |id, f| {
                let ts = entry_ts(f).unwrap_or(i64::MAX);
                if ts >= t {
                    return Ok(false);
                }
                if handled(id) && kept == 0 {
                    cut = Some(successor(id));
                    deleted += 1;
                } else {
                    kept += 1;
                }
                Ok(true)
            })?;
            if let Some(cut) = cut {
                let _ = deleted;
                report.deleted_by_age = self.trim_below(cut)?;
            }
            report.kept_unhandled = kept;
        }
        if let Some(max_bytes) = policy.max_bytes {
            let total = self.stats()?.bytes;
            let mut excess = total as i64 - max_bytes.min(i64::MAX as u64) as i64;
            if excess > 0 {
                let mut cut = None;
                self.scan(None, |id, f| {
                    if excess <= 0 || !handled(id) {
                        return Ok(false);
                    }
                    excess -= entry_size(f);
                    cut = Some(successor(id));
                    Ok(true)
                })?;
                if let Some(cut) = cut {
                    report.deleted_by_size = self.trim_below(cut)?;
                }
            }
        }
        Ok(report)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle.lock().clear();
        self.blocking.lock().clear();
    }
}

fn encode(data: &[u8], threshold: usize) -> (u8, std::borrow::Cow<'_, [u8]>) {
    if data.len() > threshold {
        let packed = lz4_flex::compress_prepend_size(data);
        if packed.len() < data.len() {
            return (packed::LZ4, std::borrow::Cow::Owned(packed));
        }
    }
    (packed::RAW, std::borrow::Cow::Borrowed(data))
}

/// How many appended ranges a publisher's de-dup key keeps (its highest sequence
/// numbers); older ones are forgotten even within `dedup_ttl`.
///
/// NOTE: a range is one append of a run (a batch, or a single publish): a bus
/// appending one event at a time 1,000 times a second keeps 100 s of them, 15 MB
/// in Redis at the cap (`MEMORY USAGE` of 100,000 such members: 14.6 MB).
/// Forgetting can only let a very late retry duplicate, never drop an event.
const RANGES_KEPT: usize = 100_000;

/// Publisher sequence numbers at or above this are not de-duplicated: the script's
/// numbers are doubles, exact below 2^53.
const SEQ_EXACT: u64 = 1 << 53;

/// One run of an append: `len` records in a row of one publisher with consecutive
/// sequence numbers from `first_seq`; `key` is its publisher's index among the
/// script's KEYS (from 3), 0 for no de-duplication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    key: usize,
    first_seq: u64,
    len: usize,
}

/// The distinct publishers of `records` (in order of first appearance) and the runs
/// that cut `records` into stretches of one publisher's consecutive sequence numbers.
fn runs_of(records: &[Record]) -> (Vec<&str>, Vec<Run>) {
    let mut publishers: Vec<&str> = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    let mut prev: Option<&Record> = None;
    for r in records {
        let exact = r.publisher_seq < SEQ_EXACT;
        if let (Some(p), Some(run)) = (prev, runs.last_mut()) {
            if exact
                && run.key != 0
                && r.publisher_seq == p.publisher_seq + 1
                && r.publisher == p.publisher
            {
                run.len += 1;
                prev = Some(r);
                continue;
            }
        }
        let key = if exact {
            // NOTE: a linear search: a batch has one publisher or a few (a spool
            // forward may have more; it is rare and bounded by its batch).
            match publishers.iter().position(|p| *p == r.publisher) {
                Some(i) => 3 + i,
                None => {
                    publishers.push(&r.publisher);
                    2 + publishers.len()
                }
            }
        } else {
            0
        };
        runs.push(Run {
            key,
            first_seq: r.publisher_seq,
            len: 1,
        });
        prev = Some(r);
    }
    (publishers, runs)
}

/// An upper bound of the bytes of `RedisLog::append_command` for `records` (so its
/// buffer never grows): per record, its bulk header and trailer (at most 25 bytes),
/// the packed header and four varints (at most 23 + 4 x 10), the strings, and the
/// payload uncompressed (a compressed one is only kept when smaller); at worst a run
/// per record (three bulks of at most 20 digits: 3 x 45) and a key per record (at most
/// 107 bytes of `{prefix}:pub:`, the publisher, 25 of framing).
fn append_command_capacity(records: &[Record]) -> usize {
    // NOTE: the command head: 8 bulks of at most 25 bytes of framing, a 40-byte sha,
    // two keys of at most 100 + 10 bytes each (prefix of at most 100), three numbers.
    512 + records
        .iter()
        .map(|r| {
            88 + 135
                + 140
                + r.event_id.len()
                + r.topic.len()
                + 2 * r.publisher.len()
                + r.metadata.len()
                + r.payload.len()
        })
        .sum::<usize>()
}

/// Append one RESP bulk string to `out`.
fn put_bulk(out: &mut Vec<u8>, b: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "${}\r\n", b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}
