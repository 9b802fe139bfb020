-- Shared helpers, prepended to every streamrec script.
-- Numbers travel as JSON (cjson); ids in keys are formatted with %.0f because
-- tostring() of a large Lua number uses exponent notation.
local function fmt(n) return string.format('%.0f', n) end

-- Forward decay: a value stored at landmark L means value(T) = v * 2^(-(T-L)/hl).
-- Adding weight w observed at event time t is v += w * 2^((t-L)/hl), whatever the
-- order of events. When the factor grows too large the landmark moves (rescale).
local function fwd(w, t, L, hl) return w * math.pow(2, (t - L) / hl) end
local RESCALE_HALF_LIVES = 40

-- Hash with decayed fields prefixed `prefix` and landmark field `_L`.
local function hash_decay_add(key, field, w, t, hl)
  local L = tonumber(redis.call('HGET', key, '_L'))
  if not L then
    L = t
    redis.call('HSET', key, '_L', fmt(L))
  elseif (t - L) / hl > RESCALE_HALF_LIVES then
    local all = redis.call('HGETALL', key)
    local f = math.pow(2, -(t - L) / hl)
    for i = 1, #all, 2 do
      local name = all[i]
      if string.sub(name, 1, 2) == 'd:' or string.sub(name, 1, 2) == 'a:' then
        redis.call('HSET', key, name, tostring(tonumber(all[i + 1]) * f))
      end
    end
    L = t
    redis.call('HSET', key, '_L', fmt(L))
  end
  return redis.call('HINCRBYFLOAT', key, field, fwd(w, t, L, hl)), L
end

-- Sorted set with forward-decayed scores; its landmark lives in hash `lkey` field `lfield`.
local function zset_decay_add(zkey, member, w, t, hl, lkey, lfield)
  local L = tonumber(redis.call('HGET', lkey, lfield))
  if not L then
    L = t
    redis.call('HSET', lkey, lfield, fmt(L))
  elseif (t - L) / hl > RESCALE_HALF_LIVES then
    local all = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
    local f = math.pow(2, -(t - L) / hl)
    for i = 1, #all, 2 do
      redis.call('ZADD', zkey, tonumber(all[i + 1]) * f, all[i])
    end
    L = t
    redis.call('HSET', lkey, lfield, fmt(L))
  end
  redis.call('ZINCRBY', zkey, fwd(w, t, L, hl), member)
end

-- Replay guard: events of one source partition arrive in offset order, so an
-- offset at or below the last one applied for (this slot, partition) was applied.
local function first_time(hwkey, field, offset)
  local hw = tonumber(redis.call('HGET', hwkey, field))
  if hw and offset <= hw then return false end
  redis.call('HSET', hwkey, field, fmt(offset))
  return true
end
