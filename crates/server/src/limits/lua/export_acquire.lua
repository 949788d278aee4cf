-- Admits an export: one unit of the hourly quota and one concurrency slot,
-- atomically, by Redis's clock (SPEC §3).
-- KEYS[1] window hash (w = window number, n = used)
-- KEYS[2] lease sorted set (member = lease id, score = lease expiry, ms)
-- ARGV[1] quota  ARGV[2] concurrency  ARGV[3] lease id  ARGV[4] lease ms
-- ARGV[5] window ms
-- Returns {granted 1|0, 'ok'|'quota'|'concurrency', remaining after this
-- request, reset ms, window number, now ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local quota, conc = tonumber(ARGV[1]), tonumber(ARGV[2])
local lease_ms, win_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local win = math.floor(now / win_ms)
local reset = (win + 1) * win_ms
local used = 0
local h = redis.call('HMGET', KEYS[1], 'w', 'n')
if tonumber(h[1]) == win then used = tonumber(h[2]) or 0 end
if used >= quota then
  return {0, 'quota', 0, reset, win, now}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= conc then
  return {0, 'concurrency', quota - used, reset, win, now}
end
redis.call('ZADD', KEYS[2], now + lease_ms, ARGV[3])
redis.call('PEXPIRE', KEYS[2], 2 * lease_ms)
redis.call('HSET', KEYS[1], 'w', win, 'n', used + 1)
redis.call('PEXPIREAT', KEYS[1], reset + win_ms)
return {1, 'ok', quota - used - 1, reset, win, now}
