-- Gives back units taken from a fixed window by a request that then failed
-- on the server's side, if that window is still the current one.
-- KEYS[1] window hash  ARGV[1] units  ARGV[2] window number of the take
-- Returns the units given back.
local h = redis.call('HMGET', KEYS[1], 'w', 'n')
if h[1] ~= ARGV[2] then return 0 end
local used = tonumber(h[2] or 0)
local back = math.min(used, tonumber(ARGV[1]))
if back > 0 then redis.call('HINCRBY', KEYS[1], 'n', -back) end
return back
