/**
 * Presence in Redis, per chat (all keys share the `{chat}` hash tag, so one slot in a Cluster):
 *   ms:presence:{chat}          ZSET user → latest expiry of any of the user's connections
 *   ms:presence:{chat}:u:<user> ZSET connection → expiry
 * Every check-and-update is one script, so exactly one instance sees each online/offline
 * transition. Expired entries are left for `sweep`, which reports the users it took offline.
 */

/**
 * Writes presence entries of one chat — a join (one entry) or an instance's periodic refresh of
 * its entries of the chat, in one call (an EVALSHA per entry cost a round trip and ~9 counted
 * commands each, every PRESENCE_TTL_MS / 3).
 * KEYS: chat zset. ARGV: now, expiresAt, keyTtlMs, user-key prefix, then user, conn pairs.
 * Returns the 0-based indexes of the pairs whose user came online: a join of a user with no live
 * connection, or a refresh that re-created an entry that was swept (others were told offline) or
 * lost (FLUSHALL, eviction), so the caller announces online (again). `existed` is read before
 * expired entries are dropped: an entry that expired but is still there was never swept, so
 * nobody was told offline and its refresh is no transition.
 */
export const WRITE_ENTRIES = `
local now, expiresAt, keyTtl, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local restored = {}
for i = 5, #ARGV - 1, 2 do
  local user, conn = ARGV[i], ARGV[i + 1]
  local ukey = prefix .. user
  local existed = redis.call('ZSCORE', ukey, conn)
  redis.call('ZREMRANGEBYSCORE', ukey, '-inf', now)
  if not existed and redis.call('ZCARD', ukey) == 0 then table.insert(restored, math.floor((i - 5) / 2)) end
  redis.call('ZADD', ukey, expiresAt, conn)
  redis.call('ZADD', KEYS[1], 'GT', expiresAt, user)
  redis.call('PEXPIRE', ukey, keyTtl)
end
redis.call('PEXPIRE', KEYS[1], keyTtl)
return restored
`;

/**
 * KEYS: chat zset, user zset, chat's leaving zset. ARGV: now, conn, user, held, announce-by,
 * keyTtl. Returns 1 if that was the user's last live connection. `held` = 1 when the caller still
 * held the entry: if Redis has no entry then, it was lost (FLUSHALL, eviction), not left twice,
 * and the user may still need its offline. A user gone offline is kept in the leaving zset until
 * its `offline` went out (the caller removes it then): if the caller dies first (its offline
 * waiting in a presence window), a sweep past `announce-by` announces it instead.
 */
export const LEAVE = `
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 and ARGV[4] ~= '1' then return 0 end
if redis.call('ZCOUNT', KEYS[2], ARGV[1], '+inf') > 0 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return 1
`;

/**
 * KEYS: chat zset, the chat's stream hash, the chat's leaving zset. ARGV: now, user-key prefix.
 * Removes expired connections; returns the chat stream's seq and epoch (0 and '' when it has
 * none), then the users left with no connection (their instance died without a leave), and those
 * who left whose `offline` was not confirmed sent in time (their instance died holding it) and
 * who are not online again. The position lets an
 * instance notice broadcasts its subscription lost without the connection dropping (see
 * Resync.check); read here, it costs no extra call.
 */
export const SWEEP = `
local head = redis.call('HMGET', KEYS[2], 'seq', 'epoch')
local gone = {tonumber(head[1] or '0'), head[2] or ''}
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, user in ipairs(stale) do
  local ukey = ARGV[2] .. user
  redis.call('ZREMRANGEBYSCORE', ukey, '-inf', ARGV[1])
  local top = redis.call('ZRANGE', ukey, -1, -1, 'WITHSCORES')
  if #top == 0 then
    redis.call('ZREM', KEYS[1], user)
    redis.call('DEL', ukey)
    table.insert(gone, user)
  else
    redis.call('ZADD', KEYS[1], top[2], user)
  end
end
local told = {}
for i = 3, #gone do told[gone[i]] = true end
for _, user in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])) do
  redis.call('ZREM', KEYS[3], user)
  if not told[user] and not redis.call('ZSCORE', KEYS[1], user) then table.insert(gone, user) end
end
return gone
`;

/**
 * KEYS: the chat's leaving zset. ARGV: user, deadline pairs. Removes each user's record if it is
 * still the one written with that deadline (see LEAVE): their `offline` went out.
 */
export const ANNOUNCED = `
for i = 1, #ARGV - 1, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == tonumber(ARGV[i + 1]) then redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return 0
`;
