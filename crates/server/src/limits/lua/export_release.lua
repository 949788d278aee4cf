-- Frees an export's concurrency slot and, for a request that failed on the
-- server's side, gives its unit of quota back (in the window it was taken
-- from only).
-- KEYS[1] window hash  KEYS[2] lease sorted set
-- ARGV[1] lease id  ARGV[2] refund 1|0  ARGV[3] window number of the acquire
-- Returns {slot freed 1|0, refunded 1|0}; a second release is harmless.
local held = redis.call('ZREM', KEYS[2], ARGV[1])
local refunded = 0
if ARGV[2] == '1' then
  local h = redis.call('HMGET', KEYS[1], 'w', 'n')
  if h[1] == ARGV[3] and tonumber(h[2] or 0) > 0 then
    redis.call('HINCRBY', KEYS[1], 'n', -1)
    refunded = 1
  end
end
return {held, refunded}
