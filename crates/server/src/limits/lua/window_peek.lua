-- What a fixed window has used, without using any of it.
-- KEYS[1] window hash  ARGV[1] window ms
-- Returns {used, reset ms, window number, now ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win_ms = tonumber(ARGV[1])
local win = math.floor(now / win_ms)
local used = 0
local h = redis.call('HMGET', KEYS[1], 'w', 'n')
if tonumber(h[1]) == win then used = tonumber(h[2]) or 0 end
return {used, (win + 1) * win_ms, win, now}
