-- Shared helpers, prepended to every streamrec script.
-- Numbers travel as JSON (cjson); ids in keys are formatted with %.0f because
-- tostring() of a large Lua number uses exponent notation.
local function fmt(n) return string.format('%.0f', n) end

-- Forward decay: a value stored at landmark L means value(T) = v * 2^(-(T-L)/hl).
-- Adding weight w observed at event time t is v += w * 2^((t-L)/hl), whatever the
-- order of events. When the factor grows too large the landmark moves (rescale).
local function fwd(w, t, L, hl) return w * math.pow(2, (t - L) / hl) end
local RESCALE_HALF_LIVES = 40

-- A command whose arguments end in a long flat list (field/value or score/member pairs), in as few
-- calls as the Lua stack allows: `prefix` = {'ZADD', key, 'GT'}, `flat` = {score, member, ...}.
local function call_chunked(prefix, flat)
  for start = 1, #flat, 2000 do
    local args = {unpack(prefix)}
    for i = start, math.min(start + 1999, #flat) do args[#args + 1] = flat[i] end
    redis.call(unpack(args))
  end
end

-- A hash read once per call and written back once (one HSET of the fields set): a script touches each
-- key a fixed number of times however many events it applies. Only the `fields` named are read
-- (HMGET); reading another is an error, not a silent nil. Writes go out at the end of the script;
-- a script is atomic, so no client sees the difference.
local function load_hash(key, fields)
  local h = {key = key, v = {}, dirty = {}, order = {}, asked = {}}
  local names = {}
  for _, f in ipairs(fields) do
    if not h.asked[f] then h.asked[f] = true; names[#names + 1] = f end
  end
  local values = redis.call('HMGET', key, unpack(names))
  for i, f in ipairs(names) do
    if values[i] then h.v[f] = values[i] end
  end
  setmetatable(h.v, {__index = function(_, f)
    if h.asked[f] or h.all then return nil end
    error('streamrec script bug: field ' .. tostring(f) .. ' of ' .. key .. ' read but not loaded')
  end})
  return h
end

-- Every field of a loaded hash (a decayed hash's rescale touches them all); fields set stay as set.
local function load_all(h)
  local flat = redis.call('HGETALL', h.key)
  for i = 1, #flat, 2 do
    if not h.dirty[flat[i]] then rawset(h.v, flat[i], flat[i + 1]) end
  end
  h.all = true
end

local function set_field(h, field, value)
  if h.dirty[field] == nil then h.order[#h.order + 1] = field end
  h.v[field], h.dirty[field] = value, true
end

local function flush_hash(h)
  local flat = {}
  for _, f in ipairs(h.order) do flat[#flat + 1] = f; flat[#flat + 1] = h.v[f] end
  call_chunked({'HSET', h.key}, flat)
  h.dirty, h.order = {}, {}
end

-- A counter field of a loaded hash, plus one.
local function counted(h, field)
  set_field(h, field, fmt((tonumber(h.v[field]) or 0) + 1))
end

-- Floats written by the scripts keep a double's 17 significant digits (as HINCRBYFLOAT did).
local function num(x) return string.format('%.17g', x) end

-- Forward-decayed fields (prefix `d:` or `a:`) of a loaded hash, landmark in field `_L`: add w at t.
local function decay_add_loaded(h, field, w, t, hl)
  local L = tonumber(h.v._L)
  if not L then
    L = t
    set_field(h, '_L', fmt(L))
  elseif (t - L) / hl > RESCALE_HALF_LIVES then
    load_all(h)
    local f = math.pow(2, -(t - L) / hl)
    for name, value in pairs(h.v) do
      local pre = string.sub(name, 1, 2)
      if pre == 'd:' or pre == 'a:' then set_field(h, name, tostring(tonumber(value) * f)) end
    end
    L = t
    set_field(h, '_L', fmt(L))
  end
  set_field(h, field, num((tonumber(h.v[field]) or 0) + fwd(w, t, L, hl)))
  return L
end

-- ZINCRBYs of one call summed per member first: one call per member, however many events add to it.
local function new_sums() return {order = {}, w = {}} end

local function add_sum(sums, member, w)
  if not sums.w[member] then
    sums.order[#sums.order + 1] = member
    sums.w[member] = 0
  end
  sums.w[member] = sums.w[member] + w
end

local function flush_sums(zkey, sums)
  for _, m in ipairs(sums.order) do redis.call('ZINCRBY', zkey, sums.w[m], m) end
  sums.order, sums.w = {}, {}
end

-- A forward-decayed sorted set whose landmark lives in a loaded hash `lh`, field `lfield`: adds are
-- summed in `sums` (flushed by the caller), so a member costs one ZINCRBY per call.
local function zset_decay_add_loaded(zkey, member, w, t, hl, lh, lfield, sums)
  local L = tonumber(lh.v[lfield])
  if not L then
    L = t
    set_field(lh, lfield, fmt(L))
  elseif (t - L) / hl > RESCALE_HALF_LIVES then
    flush_sums(zkey, sums)  -- they were summed at the old landmark
    local all = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
    local f = math.pow(2, -(t - L) / hl)
    for i = 1, #all, 2 do
      redis.call('ZADD', zkey, tonumber(all[i + 1]) * f, all[i])
    end
    L = t
    set_field(lh, lfield, fmt(L))
  end
  add_sum(sums, member, fwd(w, t, L, hl))
end

-- Replay guard: events of one source partition arrive in offset order, so an
-- offset at or below the last one applied for (this slot, partition) was applied.
-- `hw` is the slot's guard hash, loaded (`load_hash`) and flushed by the caller.
local function first_time(hw, field, offset)
  local last = tonumber(hw.v[field])
  if last and offset <= last then return false end
  set_field(hw, field, fmt(offset))
  return true
end

