-- Extends an export's concurrency lease by Redis's clock.
-- KEYS[1] lease sorted set  ARGV[1] lease id  ARGV[2] lease ms
-- Returns 1 while the lease is held, 0 once it is gone (expired and given
-- to another request, or Redis lost it). A member that expired but was
-- not purged yet is revived: a slot is only ever given away by an
-- acquire, and an acquire purges expired members first.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
