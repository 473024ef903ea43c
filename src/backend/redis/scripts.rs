//! The Lua scripts of [`super::RedisLog`]: every multi-step change that must be atomic
//! (publish with de-duplication, owner-checked renew/release, dead letter + ack, replay,
//! trim with byte accounting) runs as one script, so no other client interleaves.
//!
//! NOTE: every key a script touches is passed in KEYS and shares the bus's hash tag, so
//! the scripts run on a Redis Cluster too (all keys in one slot).

use std::sync::OnceLock;

use redis::Script;

/// Append records with idempotency. KEYS: stream, meta, then one de-dup key per record.
/// ARGV: ttl seconds, n, then 10 fields per record. Returns the ids; a record whose
/// de-dup key exists (a retried publish the server already applied) gets the id stored
/// there and is not added again.
pub(super) fn append() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| {
        Script::new(
            r#"
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local ids = {}
local added = 0
for i = 1, n do
  local b = 2 + (i - 1) * 10
  local dk = KEYS[2 + i]
  local prev = redis.call('GET', dk)
  if prev then
    ids[i] = prev
  else
    local id = redis.call('XADD', KEYS[1], '*',
      'e', ARGV[b + 1], 't', ARGV[b + 2], 'p', ARGV[b + 3], 'ts', ARGV[b + 4],
      'pb', ARGV[b + 5], 'ps', ARGV[b + 6], 'c', ARGV[b + 7], 'd', ARGV[b + 8],
      'm', ARGV[b + 9], 'z', ARGV[b + 10])
    redis.call('SET', dk, id, 'EX', ttl)
    added = added + tonumber(ARGV[b + 10])
    ids[i] = id
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[2], 'bytes', added) end
return ids
"#,
        )
    })
}

/// Hand out entries waiting in the group's "ready" pseudo-consumer (replayed dead
/// letters) to an instance. KEYS: stream. ARGV: group, instance, max, ready consumer.
/// Returns XCLAIM's entries (delivery count up by one).
pub(super) fn take_ready() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| {
        Script::new(
            r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[4])
local out = {}
for _, e in ipairs(p) do
  local r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, e[1])
  if r[1] then table.insert(out, r[1]) end
end
return out
"#,
        )
    })
}

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
          if rec[j] == 'z' then z = tonumber(rec[j + 1]) end
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
/// off the meta counter. KEYS: stream, meta. Returns how many were deleted.
pub(super) fn trim_below() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| {
        Script::new(
            r#"
local sum, n = 0, 0
local start = '-'
while true do
  local es = redis.call('XRANGE', KEYS[1], start, '(' .. ARGV[1], 'COUNT', 500)
  if #es == 0 then break end
  for _, e in ipairs(es) do
    local f = e[2]
    for j = 1, #f, 2 do
      if f[j] == 'z' then sum = sum + tonumber(f[j + 1]) end
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
