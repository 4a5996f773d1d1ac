//! The Lua scripts that make leases atomic.
//!
//! Each script reads the time from Redis (`TIME`), never from a worker, and
//! does all its checks before any write, so a lease is acquired all or none
//! (no hold-and-wait deadlock) and a semaphore never over-admits.
//!
//! A semaphore is a sorted set whose members are `session#k` (one per unit
//! of weight) scored by their expiry in milliseconds; expired members are
//! trimmed before counting. A lease record (`Keys::lease`) lists the
//! semaphores it holds, so whoever reaps it can give every slot back.

/// Lua: `extend(leases, lease, session, held, now, ttl)` extends every slot
/// a session holds (`held`: its lease record's semaphores) if each one is
/// still live, and returns the new expiry; `nil` when one has expired, for
/// then the lease is lost. Shared by [`ACQUIRE`] (a claim whose reply was
/// lost gets its own lease back) and [`RENEW`].
macro_rules! lua_extend {
    () => {
        r#"
local function extend(leases, lease, session, held, now, ttl)
  local current = redis.call('ZSCORE', leases, session)
  if (not current) or tonumber(current) <= now then return nil end
  local semaphores = {}
  for line in string.gmatch(held or '', '[^\n]+') do
    local key, weight = string.match(line, '^(.*)\t(%d+)$')
    for k = 1, tonumber(weight) do
      local score = redis.call('ZSCORE', key, session .. '#' .. k)
      if (not score) or tonumber(score) <= now then return nil end
    end
    semaphores[#semaphores + 1] = {key, tonumber(weight)}
  end
  local expiry = now + ttl
  for _, s in ipairs(semaphores) do
    for k = 1, s[2] do
      redis.call('ZADD', s[1], 'XX', expiry, session .. '#' .. k)
    end
  end
  redis.call('HSET', lease, 'expiry', expiry)
  redis.call('ZADD', leases, 'XX', expiry, session)
  return expiry
end
"#
    };
}

/// Acquires every semaphore of a session, all or none.
///
/// KEYS: leases zset, lease hash, fence counter, batch record, the session's
/// tombstone, the epoch marker, the quiet marker, the batch's unit records,
/// the batch budget's ledger, then each semaphore key. ARGV: session id, ttl
/// ms, owner, unit id, claim id (one per delivery the worker handles), the
/// batch budget's cap and this session's reservation in micro-dollars (cap
/// `0`: no batch budget), then per semaphore capacity and weight.
///
/// The reservation is taken with the leases, all or none, when the
/// ledger's reservations, its settled spend and this reservation fit under
/// the cap; the lease record names the ledger and the amount, so that
/// [`RELEASE`] settles it and [`REAP`] keeps it as spent (contract 9,
/// docs/contracts.md).
///
/// Returns `{1, fence, expiry_ms}` on success, also when this very claim
/// (same owner and claim id) already holds the lease: a retry after a reply
/// that timed out then gets its own lease back, extended, instead of losing
/// the unit. Otherwise `{0, key}` naming the first semaphore that is full,
/// `{-1, reason}` if the session already holds a lease or already ran (a
/// duplicated order), `{-2, reason}` if the batch was cancelled, `{-3,
/// reason}` if no batch of that id was ever stored (an order from
/// elsewhere), `{-5, reason}` when the reservation does not fit the batch
/// budget (the reason says `batch budget: $X reserved + $Y spent of $Z`),
/// or `{-4, reason}` if the session is not the unit's current
/// queued session in the coordinator's stored unit record (a stale or
/// replayed order: refused for good, not only while its tombstone lives).
/// While Redis has lost its data (no epoch marker) or is quiet after that,
/// it answers `{0, why}` like a full semaphore: the unit is handed back and
/// published again.
pub const ACQUIRE: &str = concat!(
    lua_extend!(),
    r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local session = ARGV[1]
local ttl = tonumber(ARGV[2])
local n = #KEYS - 9
if redis.call('EXISTS', KEYS[2]) == 1 then
  local lease = redis.call('HMGET', KEYS[2], 'owner', 'claim', 'fence', 'semaphores')
  if lease[1] ~= ARGV[3] or lease[2] ~= ARGV[5] then
    return {-1, 'session already holds a lease'}
  end
  -- This claim's own lease: its reply was lost. Give it back, extended,
  -- if every slot of it is still live.
  local expiry = extend(KEYS[1], KEYS[2], session, lease[4], now, ttl)
  if not expiry then
    return {-1, 'session lease expired before its claim was confirmed'}
  end
  return {1, tonumber(lease[3]), expiry}
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return {-1, 'session already ran'}
end
-- A Redis that lost its data forgot every lease: grant none until the
-- coordinator has noticed and a lease TTL has passed, so that the holders
-- it forgot notice and stop first.
if redis.call('EXISTS', KEYS[6]) == 0 then
  redis.call('SET', KEYS[5], 'deferred', 'PX', 86400000)
  return {0, 'redis lost its data: no lease until the coordinator restores it'}
end
if redis.call('EXISTS', KEYS[7]) == 1 then
  redis.call('SET', KEYS[5], 'deferred', 'PX', 86400000)
  return {0, 'redis restarted empty: no new lease for one lease TTL'}
end
-- A stored batch holds its manifest whole, or in pieces when it is large.
if redis.call('HEXISTS', KEYS[4], 'manifest') == 0
  and redis.call('HEXISTS', KEYS[4], 'manifest_pieces') == 0 then
  return {-3, 'unknown batch'}
end
if redis.call('HGET', KEYS[4], 'state') == 'cancelled' then
  return {-2, 'batch cancelled'}
end
-- Only the session the coordinator stored as the unit's current, queued
-- one may run: tombstones last a day, an order forever.
local stored = redis.call('HGET', KEYS[8], ARGV[4])
if not stored then
  return {-4, 'the unit has no stored record'}
end
local ok, unit = pcall(cjson.decode, stored)
if (not ok) or type(unit) ~= 'table' or type(unit.history) ~= 'table' then
  return {-4, 'the unit record is unreadable'}
end
local latest = unit.history[#unit.history]
local latest_session = type(latest) == 'table' and latest.session_id or nil
if unit.state ~= 'queued' or latest_session ~= session then
  return {-4, 'the unit is ' .. tostring(unit.state) .. ' and its current session is '
    .. tostring(latest_session)}
end
for i = 1, n do
  local key = KEYS[9 + i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local capacity = tonumber(ARGV[6 + 2 * i])
  local weight = tonumber(ARGV[7 + 2 * i])
  if redis.call('ZCARD', key) + weight > capacity then
    -- The session is handed back and will never run: the coordinator
    -- re-publishes the unit as a new session, so a copy of this order
    -- (a redelivery, a re-publish after a restart) must be refused.
    redis.call('SET', KEYS[5], 'deferred', 'PX', 86400000)
    return {0, key}
  end
end
-- The batch budget: reserved + spent + this reservation must fit the cap.
local cap = tonumber(ARGV[6]) or 0
local reserve = tonumber(ARGV[7]) or 0
if cap > 0 then
  local ledger = redis.call('HMGET', KEYS[9], 'reserved', 'spent')
  local reserved = tonumber(ledger[1]) or 0
  local spent = tonumber(ledger[2]) or 0
  if reserved + spent + reserve > cap then
    redis.call('SET', KEYS[5], 'deferred', 'PX', 86400000)
    return {-5, string.format('batch budget: $%.2f reserved + $%.2f spent of $%.2f',
      reserved / 1e6, spent / 1e6, cap / 1e6)}
  end
  redis.call('HINCRBY', KEYS[9], 'reserved', reserve)
  redis.call('HSET', KEYS[9], 'cap', cap)
end
local expiry = now + ttl
local held = {}
for i = 1, n do
  local key = KEYS[9 + i]
  local weight = tonumber(ARGV[7 + 2 * i])
  for k = 1, weight do
    redis.call('ZADD', key, expiry, session .. '#' .. k)
  end
  held[#held + 1] = key .. '\t' .. weight
end
local fence = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], 'owner', ARGV[3], 'claim', ARGV[5], 'fence', fence,
  'expiry', expiry, 'semaphores', table.concat(held, '\n'))
if cap > 0 then
  redis.call('HSET', KEYS[2], 'budget', KEYS[9], 'reserve', reserve)
end
redis.call('ZADD', KEYS[1], expiry, session)
return {1, fence, expiry}
"#
);

/// Extends every semaphore of a session, if it still holds all of them.
///
/// KEYS: leases zset, lease hash, batch record, the session's tombstone.
/// ARGV: session id, ttl ms, fence.
/// Returns the new expiry in ms; 0 when the lease is lost (expired, reaped,
/// or taken over): the holder must kill its session at once; -1 when the
/// batch was cancelled: the lease is extended so that it holds while the
/// holder stops its session; or -2 when the session's leases were released
/// (the coordinator holds its result): nothing to renew.
pub const RENEW: &str = concat!(
    lua_extend!(),
    r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local session = ARGV[1]
local fence = redis.call('HGET', KEYS[2], 'fence')
if (not fence) and redis.call('GET', KEYS[4]) == '1' then return -2 end
if (not fence) or fence ~= ARGV[3] then return 0 end
local held = redis.call('HGET', KEYS[2], 'semaphores')
local expiry = extend(KEYS[1], KEYS[2], session, held, now, tonumber(ARGV[2]))
if not expiry then return 0 end
-- A cancelled batch's session keeps its lease while it dies, but is told.
if redis.call('HGET', KEYS[3], 'state') == 'cancelled' then return -1 end
return expiry
"#
);

/// Notices that Redis lost its data: when the epoch marker is missing, sets
/// the quiet marker for one lease TTL, then the epoch marker, atomically.
///
/// KEYS: epoch marker, quiet marker. ARGV: lease TTL in ms.
/// Returns 1 when Redis had lost its data, 0 otherwise.
pub const NOTICE_LOSS: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', tonumber(ARGV[1]))
redis.call('SET', KEYS[1], '1')
return 1
"#;

/// Gives back every slot of a session at once.
///
/// KEYS: leases zset, lease hash, the session's tombstone. ARGV: session id,
/// optionally the fencing number the releaser knows: a lease of that
/// session under another fencing number (a re-run after Redis lost its data)
/// is not the releaser's, and is left alone (returns -1); and optionally the
/// session's actual cost in micro-dollars.
/// The tombstone (kept a day) makes a duplicated order of a finished session
/// refuse to run again. Returns 1 when a lease was released, 0 when there
/// was none.
///
/// A lease that reserved against a batch budget settles with it, in the
/// same step: its reservation leaves the ledger and the actual cost joins
/// the spend; with no actual cost given, the reservation is spent whole
/// (contract 9, docs/contracts.md). Only the release that finds the lease
/// settles, so the worker's and the coordinator's releases settle once.
pub const RELEASE: &str = r#"
local session = ARGV[1]
if ARGV[2] and ARGV[2] ~= '' then
  local fence = redis.call('HGET', KEYS[2], 'fence')
  if fence and fence ~= ARGV[2] then return -1 end
end
redis.call('SET', KEYS[3], '1', 'PX', 86400000)
local held = redis.call('HGET', KEYS[2], 'semaphores')
redis.call('ZREM', KEYS[1], session)
if not held then return 0 end
local ledger = redis.call('HMGET', KEYS[2], 'budget', 'reserve')
if ledger[1] and ledger[2] then
  local reserve = tonumber(ledger[2]) or 0
  local actual = tonumber(ARGV[3] or '') or reserve
  redis.call('HINCRBY', ledger[1], 'reserved', -reserve)
  redis.call('HINCRBY', ledger[1], 'spent', actual)
end
for line in string.gmatch(held, '[^\n]+') do
  local key, weight = string.match(line, '^(.*)\t(%d+)$')
  for k = 1, tonumber(weight) do
    redis.call('ZREM', key, session .. '#' .. k)
  end
end
redis.call('DEL', KEYS[2])
return 1
"#;

/// Reaps leases whose holder stopped renewing them, and gives their slots
/// back. A reaped lease's batch budget reservation is kept as spent: the
/// dead session's actual cost is unknown, and may have reached it
/// (contract 9, docs/contracts.md).
///
/// KEYS: leases zset. ARGV: the lease hash key prefix (`{ns}:lease:`), max
/// count, the tombstone key prefix (`{ns}:done:`).
/// Returns a flat list `session, owner JSON, session, owner JSON, ...` of the
/// reaped leases, so the coordinator can re-run their units.
pub const REAP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, session in ipairs(expired) do
  local lease = ARGV[1] .. session
  local owner = redis.call('HGET', lease, 'owner') or ''
  local held = redis.call('HGET', lease, 'semaphores') or ''
  for line in string.gmatch(held, '[^\n]+') do
    local key, weight = string.match(line, '^(.*)\t(%d+)$')
    for k = 1, tonumber(weight) do
      redis.call('ZREM', key, session .. '#' .. k)
    end
  end
  local ledger = redis.call('HMGET', lease, 'budget', 'reserve')
  if ledger[1] and ledger[2] then
    local reserve = tonumber(ledger[2]) or 0
    redis.call('HINCRBY', ledger[1], 'reserved', -reserve)
    redis.call('HINCRBY', ledger[1], 'spent', reserve)
  end
  redis.call('DEL', lease)
  redis.call('ZREM', KEYS[1], session)
  redis.call('SET', ARGV[3] .. session, 'reaped', 'PX', 86400000)
  out[#out + 1] = session
  out[#out + 1] = owner
end
return out
"#;

/// Takes the coordinator lock of a namespace for a new tenure: free, or held
/// under this instance's name (a restart in place). The tenure key records
/// which tenure holds it, and outlives the lock, so that a write of an older
/// tenure (a stalled request, a paused process of the same name) can be
/// told apart from the holder's own (see [`FENCED_WRITE`]).
///
/// KEYS: the lock, the tenure key. ARGV: this instance's id, this tenure's
/// id, TTL in ms. Returns `{1, id, ttl}` when taken, or `{0, holder,
/// remaining ms}` when another instance holds it.
pub const TAKE_COORDINATOR: &str = r#"
local holder = redis.call('GET', KEYS[1])
if (not holder) or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[3]))
  redis.call('SET', KEYS[2], ARGV[2])
  return {1, ARGV[1], tonumber(ARGV[3])}
end
return {0, holder, redis.call('PTTL', KEYS[1])}
"#;

/// Renews the coordinator lock, only for the tenure that took it. A missing
/// tenure key means Redis lost its data (nobody else took the lock since,
/// or it would name their tenure): the lock is taken back.
///
/// KEYS: the lock, the tenure key. ARGV: instance id, tenure id, TTL in ms.
/// Returns `{1, id, ttl}` when renewed, or `{0, holder, remaining ms}`
/// when another instance, or another tenure of this one, holds it.
pub const RENEW_COORDINATOR: &str = r#"
local tenure = redis.call('GET', KEYS[2])
local holder = redis.call('GET', KEYS[1])
if ((not tenure) or tenure == ARGV[2]) and ((not holder) or holder == ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[3]))
  redis.call('SET', KEYS[2], ARGV[2])
  return {1, ARGV[1], tonumber(ARGV[3])}
end
if holder == ARGV[1] then holder = holder .. ' (another tenure: ' .. tostring(tenure) .. ')' end
return {0, holder or '(nobody)', redis.call('PTTL', KEYS[1])}
"#;

/// Lets the coordinator lock go, if this tenure holds it.
///
/// KEYS: the lock, the tenure key. ARGV: instance id, tenure id.
/// Returns 1 when it was let go.
pub const LET_GO_TENURE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// The coordinator's store writes, fenced in Redis itself: applied only if
/// the tenure key still names the writer's tenure, so a request that was
/// stalled on the network and lands after another coordinator took over is
/// refused, whatever the writer believed when it sent it.
///
/// KEYS: the lock, the tenure key, then each operation's keys in order.
/// ARGV: instance id, tenure id (empty: not fenced, for tools and tests),
/// lock TTL in ms, then each operation as `name, argument count,
/// arguments...`:
///
/// - `hset` (1 key; field, value, ...), `zadd` (1 key; score, member),
///   `zrem` (1 key; member), `del` (1 key);
/// - `release` (the 3 keys of [`RELEASE`]; session, fence), the same
///   script, run as a function;
/// - `publish` (no key; channel, message).
///
/// Every key's type is checked before anything is written, so a script
/// is applied whole or refused whole (an error reply naming the key).
/// Returns `{1, '', ''}` when applied, `{0, holder, tenure}` when another
/// tenure holds the lock (nothing written). With no tenure recorded and the
/// lock free or this instance's (Redis lost its data), the writer takes the
/// lock back and writes.
pub static FENCED_WRITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("{FENCE_AND_CHECK}local function release(KEYS, ARGV)\n{RELEASE}\nend\n{APPLY}")
});

/// [`FENCED_WRITE`], first part: the fence, then every key's type.
const FENCE_AND_CHECK: &str = r#"
if ARGV[2] ~= '' then
  local tenure = redis.call('GET', KEYS[2])
  if tenure ~= ARGV[2] then
    local holder = redis.call('GET', KEYS[1])
    if tenure or (holder and holder ~= ARGV[1]) then
      return {0, holder or '', tenure or ''}
    end
    redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[3]))
    redis.call('SET', KEYS[2], ARGV[2])
  end
end
local types = {hset = {'hash'}, zadd = {'zset'}, zrem = {'zset'}, del = {'any'},
  release = {'zset', 'hash', 'any'}, publish = {}}
local ops = {}
local k, a = 3, 4
while a <= #ARGV do
  local name = ARGV[a]
  local want = types[name]
  if not want then return redis.error_reply('ERR unknown store operation ' .. tostring(name)) end
  local n = tonumber(ARGV[a + 1])
  local op = {name = name, keys = {}, args = {}}
  for i = 1, #want do
    local key = KEYS[k]
    k = k + 1
    local held = redis.call('TYPE', key)['ok']
    if want[i] ~= 'any' and held ~= 'none' and held ~= want[i] then
      return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. held .. ', not a ' .. want[i])
    end
    op.keys[i] = key
  end
  for i = 1, n do op.args[i] = ARGV[a + 1 + i] end
  a = a + 2 + n
  ops[#ops + 1] = op
end
"#;

/// [`FENCED_WRITE`], last part: every operation, in order.
const APPLY: &str = r#"
for _, op in ipairs(ops) do
  if op.name == 'hset' then
    redis.call('HSET', op.keys[1], unpack(op.args))
  elseif op.name == 'zadd' then
    redis.call('ZADD', op.keys[1], op.args[1], op.args[2])
  elseif op.name == 'zrem' then
    redis.call('ZREM', op.keys[1], op.args[1])
  elseif op.name == 'del' then
    redis.call('DEL', op.keys[1])
  elseif op.name == 'release' then
    release(op.keys, op.args)
  elseif op.name == 'publish' then
    redis.call('PUBLISH', op.args[1], op.args[2])
  end
end
return {1, '', ''}
"#;
