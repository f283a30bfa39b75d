/**
 * The chat stream in Redis, per chat (both keys share the `{chat}` hash tag, so one Cluster slot,
 * the same as the chat's channel):
 *   ms:stream:{chat}   HASH  epoch, seq — lost together, so a lost stream always gets a new epoch;
 *                            run: the copy of the data that started the epoch (below)
 *   ms:history:{chat}  STREAM entry id 0-<seq>, fields t (ms), f (the numbered frame), then for
 *                      broadcasts of a message, edit or delete k (its message id; see CONTAINS),
 *                      and o (the operation's token, which makes a retried append idempotent)
 * Numbering, storing and publishing are one script, so seq order is the channel's order.
 */

/**
 * Shared head: the chat's epoch, created (with an empty history) when the stream is missing —
 * or when it was written on another copy of the data. A restart from a snapshot or an
 * `everysec` AOF, a failover to a replica that was behind, or a fail-back to a node that had to
 * resynchronise from one, brings back an older copy: the same epoch with a lower seq, whose
 * numbers would be given again to other broadcasts, and positions clients hold would "recover"
 * across the difference. Redis cannot tell such a copy from a complete one, but it names the
 * copy it serves: a process's run_id (new at every start) and its replication id (new at every
 * promotion and start, taken over from the master at a full resynchronisation). A stream written
 * under another `run_id:replid` starts a new epoch, so every old position is refused (clients
 * fetch the gap from the main API) and never silently resumed. The cost: after any restart or
 * failover, even a lossless one, each chat's next use starts a new epoch.
 *
 * `ARGV[runArg]` is the identity the caller believes it is talking to (read on its connection
 * when it became ready and after each probe; '' when unknown, as in a Cluster, where one
 * command may land on several nodes). When it matches the stream's, that is the answer;
 * otherwise INFO, which costs Redis a quarter of the whole append (bench:redis-cost), says
 * what the copy really is.
 */
const epochHead = (runArg: number) => `
local head = redis.call('HMGET', KEYS[1], 'epoch', 'run')
local epoch = head[1]
if not epoch or head[2] ~= ARGV[${runArg}] or ARGV[${runArg}] == '' then
  -- pcall: a user whose ACL denies INFO still appends, only without this protection (':').
  local function info(section, field)
    local text = redis.pcall('INFO', section)
    return type(text) == 'string' and string.match(text, field .. ':(%x+)') or ''
  end
  local run = info('server', 'run_id') .. ':' .. info('replication', 'master_replid')
  if not epoch or head[2] ~= run then
    epoch = ARGV[1]
    redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'run', run)
    redis.call('DEL', KEYS[2])
  end
end
`;

/** Entries per read of the history in a script: RECOVER, CONTAINS and the retry's look-up in APPEND. */
const PAGE = 16;

/**
 * The most of the history's frames CONTAINS — and a retry's look-up in APPEND — reads (2 MiB): half of the default
 * MAX_BUFFERED_BYTES, the budget of a replay at the default settings. A broadcast further back
 * than that is answered as not in the history.
 */
export const CONTAINS_MAX_BYTES = 2 * 1024 * 1024;

/**
 * KEYS: stream hash, history. ARGV: newEpoch, frame (a JSON object without seq/epoch), publish
 * prefix (bytes put before the frame in the pub/sub message), channel, publish command
 * (PUBLISH or SPUBLISH), now ms, history size, history ttl ms, stream ttl ms, key ('' for none),
 * operation token ('' for none), retry ('1': first look for an entry with that token), the
 * operation's first attempt ms (a retry's look-up stops at entries a minute older than it), the
 * caller's identity of Redis ('' if unknown: see epochHead).
 * Returns {seq, epoch, 0}, or {seq, epoch, 1, frame} for a retry whose operation an earlier
 * attempt appended: nothing is appended or published again, and the numbered frame as stored
 * is returned (the sender of a late broadcast never got it).
 *
 * The retry's look-up runs only after an attempt failed: when Redis stalls past the command
 * timeout, the timed-out attempts are still queued and run once it wakes, so without it each one
 * would broadcast the operation again. It reads the history newest first, 16 entries at a time,
 * and stops at the token, at an entry appended a minute before the operation's first attempt
 * (clocks of instances may differ a little), after HISTORY_SIZE entries, or past
 * CONTAINS_MAX_BYTES of frames (what the 409 look-up reads at most): so it costs a few entries,
 * not a copy of the whole history, however long that is. The server API's publishes with an id
 * always look (see docs/server-api.md), which makes the byte bound matter.
 */
export const APPEND = `${epochHead(14)}
local history = tonumber(ARGV[7]) > 0
local key = ARGV[10] or ''
local token = ARGV[11] or ''
if ARGV[12] == '1' and history and token ~= '' then
  local oldest = tonumber(ARGV[13] or '0') - 60000
  local left = tonumber(ARGV[7])
  local bytes = 0
  local from = '+'
  while left > 0 do
    local page = redis.call('XREVRANGE', KEYS[2], from, '-', 'COUNT', ${PAGE})
    local older = false
    for _, entry in ipairs(page) do
      local fields = entry[2]
      for i = 5, #fields, 2 do
        if fields[i] == 'o' and fields[i + 1] == token then
          return {tonumber(string.sub(entry[1], 3)), epoch, 1, fields[4]}
        end
      end
      if tonumber(fields[2]) < oldest then older = true end
      bytes = bytes + #fields[4]
      if bytes > ${CONTAINS_MAX_BYTES} then older = true end
    end
    if older or #page < ${PAGE} then break end
    left = left - #page
    from = '(' .. page[#page][1]
  end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[9])
local frame = '{"seq":' .. seq .. ',"epoch":"' .. epoch .. '",' .. string.sub(ARGV[2], 2)
if history then
  -- Spelled out rather than built in a table: this is every message's path.
  if key == '' then
    if token == '' then redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[7], '0-' .. seq, 't', ARGV[6], 'f', frame)
    else redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[7], '0-' .. seq, 't', ARGV[6], 'f', frame, 'o', token) end
  elseif token == '' then redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[7], '0-' .. seq, 't', ARGV[6], 'f', frame, 'k', key)
  else redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[7], '0-' .. seq, 't', ARGV[6], 'f', frame, 'k', key, 'o', token) end
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
redis.call(ARGV[5], ARGV[4], ARGV[3] .. frame)
return {seq, epoch, 0}
`;

/**
 * KEYS: stream hash, history. ARGV: newEpoch, since seq (-1: position only), since epoch,
 * oldest replayable ms, max bytes, history size, stream ttl ms, the caller's identity of Redis.
 * Returns {seq, epoch, outcome, frames...}; outcome is position, ok, epoch_changed,
 * too_far_behind or no_history.
 *
 * The replay is every entry after `since` (ids 0-(since+1) … 0-seq, all of them), each younger
 * than the oldest replayable time, together at most max bytes; anything less is too_far_behind.
 * It is decided before the frames are copied, and they are read in pages that stop at the first
 * entry that fails: a first version read the whole rest of the history into Lua and only then
 * counted — 100 entries of 60 KB cost Redis ~10 ms per register with `since`, answered
 * too_far_behind every time, and a few clients re-registering within their rate limit took Redis
 * to 91 %. Now XLEN (no entry read) answers a history too short for the gap; the first needed
 * entry alone (COUNT 1) answers one trimmed or too old; then pages of at most PAGE entries, each no
 * longer than the budget left can hold at the largest frame seen so far, so at most about one
 * frame is read past the budget.
 *
 * Every id in the history is one seq of the current hash (APPEND writes 0-<seq> right after
 * HINCRBY; XADD refuses an id below the last; epochHead empties the history whenever it resets
 * seq), so they are distinct and at most seq: the entries after `since` are all there exactly
 * when they are 0-(since+1), 0-(since+2) … in a row, which is what the pages check. The outcome
 * and frames are those of the full read for every history.
 */
export const RECOVER = `${epochHead(8)}
redis.call('PEXPIRE', KEYS[1], ARGV[7])
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local since = tonumber(ARGV[2])
if since < 0 then return {seq, epoch, 'position'} end
if epoch ~= ARGV[3] or since > seq then return {seq, epoch, 'epoch_changed'} end
if since == seq then return {seq, epoch, 'ok'} end
if tonumber(ARGV[6]) == 0 then return {seq, epoch, 'no_history'} end
local behind = {seq, epoch, 'too_far_behind'}
if redis.call('XLEN', KEYS[2]) < seq - since then return behind end
local oldest = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local out = {seq, epoch, 'ok'}
local want = since + 1
local from = '0-' .. want
local count = 1
local largest = 1
while true do
  local page = redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', count)
  for _, entry in ipairs(page) do
    if entry[1] ~= '0-' .. want then return behind end
    local fields = entry[2]
    if tonumber(fields[2]) < oldest then return behind end
    local size = #fields[4]
    budget = budget - size
    if budget < 0 then return behind end
    if size > largest then largest = size end
    out[#out + 1] = fields[4]
    want = want + 1
  end
  if want > seq then return out end
  if #page < count then return behind end
  from = '(' .. page[#page][1]
  count = math.min(${PAGE}, seq - want + 1, math.floor(budget / largest) + 1)
end
`;


/**
 * KEYS: history. ARGV: key, history size, max bytes (CONTAINS_MAX_BYTES). Returns 1 when an entry
 * of the history was appended with that key, among the newest entries — at most history size of
 * them — whose frames together fit in max bytes; else 0. Run only for a resend the main API
 * answered 409 (a 0 broadcasts the resend, as for one whose broadcast the history lost).
 *
 * Like the retry's look-up in APPEND it reads newest first, in pages of at most PAGE entries
 * (each no longer than the bytes left can hold at the largest frame seen so far), and stops at the
 * key: a first version copied the whole history into Lua for every look-up.
 */
export const CONTAINS = `
local left = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local largest = 1
local from = '+'
while left > 0 do
  local count = math.min(${PAGE}, left, math.floor(budget / largest) + 1)
  local page = redis.call('XREVRANGE', KEYS[1], from, '-', 'COUNT', count)
  for _, entry in ipairs(page) do
    local fields = entry[2]
    local size = #fields[4]
    budget = budget - size
    if budget < 0 then return 0 end
    if fields[5] == 'k' and fields[6] == ARGV[1] then return 1 end
    if size > largest then largest = size end
  end
  if #page < count then return 0 end
  left = left - #page
  from = '(' .. page[#page][1]
end
return 0
`;
