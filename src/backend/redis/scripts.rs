//! The Lua scripts of [`super::RedisLog`]: every multi-step change that must be atomic
//! (publish with de-duplication, a reader's acks + ready entries, owner-checked renew/release,
//! dead letter + ack, replay, trim with byte accounting) runs as one script, so no other client interleaves.
//!
//! NOTE: every key a script touches is passed in KEYS and shares the bus's hash tag, so
//! the scripts run on a Redis Cluster too (all keys in one slot).

use std::sync::OnceLock;

use redis::Script;

/// Append records with idempotency. KEYS: stream, meta, then one key per publisher in
/// the batch, `{prefix}:pub:<publisher>`: a sorted set of the publisher's appended
/// ranges. ARGV: the ranges' lifetime in ms, how many ranges a publisher keeps, the
/// number of runs, then per run its publisher's KEYS index (0: no de-duplication), its
/// first publisher sequence number and its length, then the packed records
/// (`packed.rs`) in order: the runs cut the batch into stretches of one publisher's
/// consecutive sequence numbers. Returns the entry ids; a record whose (publisher,
/// sequence number) an earlier append already stored (a retried publish the server
/// applied, a forward retried after a crash, the same record earlier in this batch)
/// gets the id stored then and is not added again.
///
/// NOTE: the de-duplication is per run, not per record: a run's records are appended
/// one after the other (a script is atomic), so one member `s:n:first:last` (scored by
/// `s`) says where all of them went. A run that overlaps no stored range (one
/// `ZREVRANGEBYSCORE`: ranges never overlap, so the one starting last at or before the
/// run's end is the only candidate) costs one `ZADD` for all its records; an `HSET`
/// field per record cost the server 1.7 µs per event more (3.35 against 1.61,
/// `benches/redis_append_cost.py`; issue 13, W12). Only a run that overlaps (a
/// retry) takes the slow path, record by record, reading the stored ranges back
/// (`XRANGE`) for the ids. Each touched set expires `ARGV[1]` ms after its
/// publisher's last append and keeps its `ARGV[2]` highest ranges.
pub(super) fn append() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| {
        Script::new(
            r#"
if redis.replicate_commands then redis.replicate_commands() end
local function size(r)
  local a, b, c, d = string.byte(r, 20, 23)
  return a + 256 * b + 65536 * c + 16777216 * d
end
local ttl, cap, nruns = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rec0 = 3 + 3 * nruns
local ids, touched = {}, {}
local added = 0
local function parse(m)
  local ps, pn, first, last = string.match(m, '^(%d+):(%d+):([^:]+):(.+)$')
  return tonumber(ps), tonumber(pn), first, last
end
local function last_at_or_before(k, q)
  local m = redis.call('ZREVRANGEBYSCORE', k, string.format('%d', q), '-inf', 'LIMIT', 0, 1)[1]
  if m then return parse(m) end
  return nil
end
local function add(k, s, from, to)
  local first, last
  for i = from, to do
    local rec = ARGV[rec0 + i]
    local id = redis.call('XADD', KEYS[1], '*', 'r', rec)
    ids[i] = id
    first = first or id
    last = id
    added = added + size(rec)
  end
  if k then
    redis.call('ZADD', k, string.format('%d', s),
      string.format('%d:%d:%s:%s', s, to - from + 1, first, last))
    touched[k] = true
  end
end
local done = 0
for r = 1, nruns do
  local kx = tonumber(ARGV[1 + 3 * r])
  local s, n = tonumber(ARGV[2 + 3 * r]), tonumber(ARGV[3 + 3 * r])
  local k = nil
  if kx > 0 then k = KEYS[kx] end
  local ps, pn = nil, nil
  if k then ps, pn = last_at_or_before(k, s + n - 1) end
  if not ps or ps + pn <= s then
    add(k, s, done + 1, done + n)
  else
    local read = {}
    local j = 0
    while j < n do
      local q = s + j
      local hs, hn, first, last = last_at_or_before(k, q)
      if hs and hs + hn > q then
        local got = read[first]
        if not got then
          got = redis.call('XRANGE', KEYS[1], first, last)
          read[first] = got
        end
        local e = nil
        if #got == hn then e = got[q - hs + 1] end
        if e then ids[done + j + 1] = e[1] else ids[done + j + 1] = first end
        j = j + 1
      else
        local stop = n - 1
        local nxt = redis.call('ZRANGEBYSCORE', k, string.format('(%d', q), '+inf', 'LIMIT', 0, 1)[1]
        if nxt then
          local ns = parse(nxt)
          if ns - s - 1 < stop then stop = ns - s - 1 end
        end
        add(k, q, done + j + 1, done + stop + 1)
        j = stop + 1
      end
    end
  end
  done = done + n
end
for k, _ in pairs(touched) do
  redis.call('PEXPIRE', k, ttl)
  local c = redis.call('ZCARD', k)
  if c > cap then redis.call('ZREMRANGEBYRANK', k, 0, c - cap - 1) end
end
if added > 0 then redis.call('HINCRBY', KEYS[2], 'bytes', added) end
return ids
"#,
        )
    })
}

/// The acks and replayed dead letters of a group reader's read, sent with `EVAL`
/// (the server caches it by hash; no NOSCRIPT to recover from) in one pipeline with
/// the plain, non-blocking `XREADGROUP ... >` of new entries: one round trip.
/// Acknowledge the previous batch, then hand out entries waiting in the group's
/// "ready" pseudo-consumer (XCLAIM, delivery count up by one). KEYS: stream. ARGV:
/// group, instance, max, ready consumer, then the ids to acknowledge. Returns
/// `{acked, ready entries}`.
///
/// NOTE: new entries are not read inside the script: converting thousands of
/// entries to Lua and back cost the server about 4 µs per entry (Redis 7.0).
pub(super) const ACK_AND_READY: &str = r#"
local acked = 0
local i = 5
while i <= #ARGV do
  local j = math.min(#ARGV, i + 999)
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, j))
  i = j + 1
end
local ready = {}
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[4])
for _, e in ipairs(p) do
  local r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, e[1])
  if r[1] then table.insert(ready, r[1]) end
end
return {acked, ready}
"#;

/// Renew (mode "renew": idle time restarts) or release (mode "release": idle time
/// set to `ARGV[3]` ms) the claims of ARGV[2] on ARGV[4..], only where ARGV[2] still
/// owns them. KEYS: stream. ARGV: group, instance, idle ms, ids... Returns the ids
/// that were owned.
pub(super) fn reclaim_own() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| {
        Script::new(
            r#"
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', tonumber(ARGV[3]), 'JUSTID')
    table.insert(out, id)
  end
end
return out
"#,
        )
    })
}

/// Move one pending entry to the dead-letter stream and acknowledge it, atomically.
/// KEYS: stream, dlq, meta. ARGV: group, id, reason, attempts, failed_us.
/// Returns the dead letter's number; errors NOTPENDING / GONE.
pub(super) fn dead_letter() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| {
        Script::new(
            r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if not p[1] then return redis.error_reply('NOTPENDING the entry is not pending for the group') end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if not e[1] then return redis.error_reply('GONE the entry is no longer in the stream') end
local dl = redis.call('HINCRBY', KEYS[3], 'dl_seq', 1)
local args = {'XADD', KEYS[2], dl .. '-1', 'g', ARGV[1], 'id', ARGV[2], 'why', ARGV[3],
  'n', ARGV[4], 'at', ARGV[5]}
for _, f in ipairs(e[1][2]) do table.insert(args, f) end
redis.call(unpack(args))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return dl
"#,
        )
    })
}

/// Store a dead letter of a record that is not in the stream (refused at publish).
/// KEYS: dlq, meta. ARGV: group, reason, attempts, failed_us, then the record's 10
/// fields as `append` takes them. Returns the dead letter's number.
pub(super) fn add_dead_letter() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| {
        Script::new(
            r#"
local dl = redis.call('HINCRBY', KEYS[2], 'dl_seq', 1)
redis.call('XADD', KEYS[1], dl .. '-1', 'g', ARGV[1], 'id', '0-0', 'why', ARGV[2],
  'n', ARGV[3], 'at', ARGV[4],
  'e', ARGV[5], 't', ARGV[6], 'p', ARGV[7], 'ts', ARGV[8], 'pb', ARGV[9], 'ps', ARGV[10],
  'c', ARGV[11], 'd', ARGV[12], 'm', ARGV[13], 'z', ARGV[14])
return dl
"#,
        )
    })
}

/// Hand dead letters back to their group. KEYS: stream, dlq, meta. ARGV: group, ready
/// consumer, dead-letter stream ids... An entry still in the stream becomes pending of
/// the ready pseudo-consumer with delivery count 0 (XCLAIM FORCE); one retention
/// removed is appended again as a copy marked `o` = group (other groups skip it).
/// Returns how many were replayed.
pub(super) fn replay() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| {
        Script::new(
            r#"
local function size(r)
  local a, b, c, d = string.byte(r, 20, 23)
  return a + 256 * b + 65536 * c + 16777216 * d
end
local n = 0
for i = 3, #ARGV do
  local d = redis.call('XRANGE', KEYS[2], ARGV[i], ARGV[i])
  if d[1] then
    local f = d[1][2]
    local grp, id = nil, nil
    local rec = {}
    for j = 1, #f, 2 do
      local k = f[j]
      if k == 'g' then grp = f[j + 1]
      elseif k == 'id' then id = f[j + 1]
      elseif k ~= 'why' and k ~= 'n' and k ~= 'at' and k ~= 'o' then
        table.insert(rec, k); table.insert(rec, f[j + 1])
      end
    end
    if grp == ARGV[1] then
      local e = redis.call('XRANGE', KEYS[1], id, id)
      if e[1] then
        redis.call('XCLAIM', KEYS[1], grp, ARGV[2], 0, id, 'IDLE', 0, 'RETRYCOUNT', 0, 'FORCE', 'JUSTID')
      else
        local args = {'XADD', KEYS[1], '*'}
        local z = 0
        for j = 1, #rec, 2 do
          table.insert(args, rec[j]); table.insert(args, rec[j + 1])
          if rec[j] == 'z' then z = tonumber(rec[j + 1])
          elseif rec[j] == 'r' then z = size(rec[j + 1]) end
        end
        table.insert(args, 'o'); table.insert(args, grp)
        redis.call(unpack(args))
        redis.call('HINCRBY', KEYS[3], 'bytes', z)
      end
      redis.call('XDEL', KEYS[2], ARGV[i])
      n = n + 1
    end
  end
end
return n
"#,
        )
    })
}

/// Delete every entry below ARGV[1] (XTRIM MINID, exact) and take their stored bytes
/// (`z` of a multi-field entry, the size in the header of a packed one) off the meta counter. KEYS: stream, meta. Returns how many were deleted.
pub(super) fn trim_below() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| {
        Script::new(
            r#"
local function size(r)
  local a, b, c, d = string.byte(r, 20, 23)
  return a + 256 * b + 65536 * c + 16777216 * d
end
local sum, n = 0, 0
local start = '-'
while true do
  local es = redis.call('XRANGE', KEYS[1], start, '(' .. ARGV[1], 'COUNT', 500)
  if #es == 0 then break end
  for _, e in ipairs(es) do
    local f = e[2]
    for j = 1, #f, 2 do
      if f[j] == 'z' then sum = sum + tonumber(f[j + 1])
      elseif f[j] == 'r' then sum = sum + size(f[j + 1]) end
    end
    n = n + 1
  end
  start = '(' .. es[#es][1]
end
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
if sum > 0 then redis.call('HINCRBY', KEYS[2], 'bytes', -sum) end
return n
"#,
        )
    })
}
