-- Takes `cost` units of a fixed window (the Import API's per-minute
-- limits: events, or requests), all or nothing, by Redis's clock.
-- KEYS[1] window hash  ARGV[1] limit  ARGV[2] cost  ARGV[3] window ms
-- Returns {granted 1|0, remaining, reset ms, window number, now ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, cost, win_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local win = math.floor(now / win_ms)
local reset = (win + 1) * win_ms
local used = 0
local h = redis.call('HMGET', KEYS[1], 'w', 'n')
if tonumber(h[1]) == win then used = tonumber(h[2]) or 0 end
if used + cost > limit then
  local left = limit - used
  if left < 0 then left = 0 end
  return {0, left, reset, win, now}
end
redis.call('HSET', KEYS[1], 'w', win, 'n', used + cost)
redis.call('PEXPIREAT', KEYS[1], reset + win_ms)
return {1, limit - used - cost, reset, win, now}
