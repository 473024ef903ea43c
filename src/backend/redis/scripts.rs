//! The Lua scripts of [`super::RedisLog`]: every multi-step change that must be atomic
//! (publish with de-duplication, a reader's acks + ready entries, owner-checked renew/release,
//! dead letter + ack, replay, trim with byte accounting) runs as one script, so no other client interleaves.
//!
//! NOTE: every key a script touches is passed in KEYS and shares the bus's hash tag, so
//! the scripts run on a Redis Cluster too (all keys in one slot).

use std::sync::OnceLock;

use redis::Script;

/// Append records with idempotency. KEYS: stream, meta, then the two de-dup buckets
/// `{prefix}:eids:<ttl>:0` and `:1`. ARGV: ttl seconds, n, then per record its event
/// id and its packed record (`packed.rs`). Returns the ids; a record whose event id is
/// in a live bucket (a retried publish the server already applied, or the same id
/// earlier in this batch) gets the id stored there and is not added again.
///
/// NOTE: the buckets: Redis TIME / ttl is the epoch; bucket `epoch % 2` takes this
/// epoch's ids, the other one holds the previous epoch's. Each bucket records its
/// epoch in the field with the empty name (no event id is empty); a bucket found holding an older epoch is stale (two or more
/// epochs old) and started over (DEL), and expires by itself two epochs on. An id is
/// thus remembered for at least `ttl` and at most `2 * ttl` seconds, with two HMGETs
/// and one HSET per batch (O(batch), two keys) instead of a GET and a SET EX per event.
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
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local epoch = math.floor(tonumber(redis.call('TIME')[1]) / ttl)
local cur = epoch % 2
local ck, ok = KEYS[3 + cur], KEYS[4 - cur]
local function lookup(k)
  local out = {}
  local i = 1
  while i <= n do
    local j = math.min(n, i + 999)
    local args = {}
    for x = i, j do args[#args + 1] = ARGV[1 + 2 * x] end
    local r = redis.call('HMGET', k, unpack(args))
    for x = 1, #r do out[i + x - 1] = r[x] end
    i = j + 1
  end
  return out
end
local fresh = redis.call('HGET', ck, '') == tostring(epoch)
local c = {}
if fresh then
  c = lookup(ck)
else
  redis.call('DEL', ck)
  redis.call('HSET', ck, '', tostring(epoch))
  redis.call('EXPIREAT', ck, (epoch + 2) * ttl + 1)
end
local o = {}
if redis.call('HGET', ok, '') == tostring(epoch - 1) then o = lookup(ok) end
local ids, new, seen = {}, {}, {}
local added = 0
for i = 1, n do
  local eid = ARGV[1 + 2 * i]
  local prev = seen[eid] or c[i] or o[i]
  if prev then
    ids[i] = prev
  else
    local rec = ARGV[2 + 2 * i]
    local id = redis.call('XADD', KEYS[1], '*', 'r', rec)
    seen[eid] = id
    new[#new + 1] = eid
    new[#new + 1] = id
    if #new >= 2000 then
      redis.call('HSET', ck, unpack(new))
      new = {}
    end
    added = added + size(rec)
    ids[i] = id
  end
end
if #new > 0 then redis.call('HSET', ck, unpack(new)) end
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
