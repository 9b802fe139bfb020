-- One user's events of a batch, in offset order: dedup, lateness, session, user features.
-- apply_user(B, events): B = P{u:USER}; events = [{id,k,type,ts,item,sid,cat,w,src}, ...], where k is
-- the event id's marker field (a 72-bit digest, `keys.marker_field`).
-- Session sequence members are ITEM 0x1F TYPE 0x1F FV (the user's feature version after the event:
-- unique per user, and a few bytes where the event id took 32). Markers are 0x1F-separated too.
-- The user hash and each session hash are read once and written once per call; markers, recent and
-- bought items are written once per call; caps and TTLs are applied once per call.
-- Returns a list, one entry per event: {s=status, sid, nb=[neighbour items], fv}
-- status: applied | replay (same source seen before; `first` = its first decision)
--         dup (same event id from another offset) | too_late | forgotten
local function split(s, sep)
  local t, start = {}, 1
  if s == '' then return t end
  while true do
    local i = string.find(s, sep, start, true)
    if not i then t[#t + 1] = string.sub(s, start); return t end
    t[#t + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end

-- A marker's first field: the decision, one letter (markers written before the letters hold the word).
local STATUS_CODE = {applied = 'a', too_late = 'l', forgotten = 'f'}
local STATUS_NAME = {a = 'applied', l = 'too_late', f = 'forgotten'}

-- `sessions` = {by_id = {sid -> loaded hash}, fields = the fields to load}
local function session_of(B, sessions, sid)
  local S = sessions.by_id[sid]
  if not S then
    S = load_hash(B .. ':s:' .. sid, sessions.fields)
    sessions.by_id[sid] = S
  end
  return S
end

local function find_session(B, SK, t, sessions)
  -- Sessions whose last event is within the gap before t, or later (out-of-order events).
  local cands = redis.call('ZRANGEBYSCORE', SK, t - cfg.gap, '+inf')
  local best, best_first = nil, nil
  for _, sid in ipairs(cands) do
    local first = tonumber(session_of(B, sessions, sid).v.first_ts)
    if first and first - cfg.gap <= t and (not best_first or first > best_first) then
      best, best_first = sid, first
    end
  end
  return best or ('s' .. fmt(t))
end

-- Event-id markers: one hash per user and window of MARKER_TTL seconds of server time, field = the
-- event id's digest. An id is looked up in the current and the previous window, so it is remembered
-- for at least MARKER_TTL (as a key's TTL would) and at most twice that, at the cost of a hash field
-- instead of a key per event. The window key expires when it stops being the previous one.
local function marker_windows(B)
  local w = math.floor(tonumber(redis.call('TIME')[1]) / cfg.marker_ttl)
  return B .. ':ev:' .. fmt(w), B .. ':ev:' .. fmt(w - 1), (w + 2) * cfg.marker_ttl
end

-- The marker of an event id: written earlier in this call, or in either window. Markers written
-- before digests were keyed by the id itself; they are read too until their windows expire.
local function find_marker(MK, MK_BEFORE, written, e)
  if written[e.k] then return written[e.k] end
  local now = redis.call('HMGET', MK, e.k, e.id)
  if now[1] or now[2] then return now[1] or now[2] end
  local before = redis.call('HMGET', MK_BEFORE, e.k, e.id)
  return before[1] or before[2]
end

-- Neighbours: the session's previous distinct items (event time <= t), newest first.
local function neighbours(SEQ, e, t)
  local nb = {}
  if e.w > 0 and e.item ~= '' then
    local seen = {[e.item] = true}
    local prior = redis.call('ZREVRANGEBYSCORE', SEQ, t, '-inf', 'LIMIT', 0, 3 * cfg.nb)
    for _, m in ipairs(prior) do
      local item, typ = string.match(m, '^(.-)\031([^\031]+)\031')
      if item and not seen[item] and (cfg.weights[typ] or 0) > 0 then
        seen[item] = true
        nb[#nb + 1] = item
        if #nb >= cfg.nb then break end
      end
    end
  end
  return nb
end

-- The session's part of an applied event: counts, first and last time, the sessions index.
local function update_session(SK, S, sid, e, t)
  counted(S, 'n:' .. e.type)
  local first, last = tonumber(S.v.first_ts), tonumber(S.v.last_ts)
  if not first or t < first then set_field(S, 'first_ts', fmt(t)) end
  if not last or t > last then
    set_field(S, 'last_ts', fmt(t))
    redis.call('ZADD', SK, t, sid)  -- at once: a later event of this call may look its session up
  end
end

-- The user's part: counts, first and newest time, the latest session.
local function update_user(U, sid, e, t)
  counted(U, 'n:' .. e.type)
  local ufirst, umax = tonumber(U.v.first_ts), tonumber(U.v.max_ts)
  if not ufirst or t < ufirst then set_field(U, 'first_ts', fmt(t)) end
  if not umax or t >= umax then
    set_field(U, 'max_ts', fmt(t))
    set_field(U, 'last_ts', fmt(t))
    set_field(U, 'cur', sid)
  end
end

-- What is written once per call: markers, the user and session hashes, recent and bought items, the
-- caps and the TTLs. `newest` is the latest event time applied (nil: nothing applied).
local function finish_user(B, SK, U, aff, sessions, marks, recent, bought, newest, MK, MK_EXPIRES)
  if #marks > 0 then
    call_chunked({'HSET', MK}, marks)
    redis.call('EXPIREAT', MK, MK_EXPIRES)
  end
  if not newest then return end
  for _, S in pairs(sessions.by_id) do
    if S.touched then  -- sessions only looked at by find_session are left as they were
      flush_hash(S)
      redis.call('ZREMRANGEBYRANK', S.key .. ':seq', 0, -(cfg.seq_cap + 1))
      redis.call('EXPIRE', S.key, cfg.session_ttl)
      redis.call('EXPIRE', S.key .. ':seq', cfg.session_ttl)
    end
  end
  -- Sessions silent for longer than their TTL have no keys left: forget them, or the
  -- index grows by one entry per session for as long as the user stays active.
  redis.call('ZREMRANGEBYSCORE', SK, '-inf', '(' .. fmt(newest - cfg.session_ttl * 1000))
  flush_hash(U)
  if aff then flush_hash(aff) end
  for key, added in pairs({[B .. ':recent'] = recent, [B .. ':bought'] = bought}) do
    if #added > 0 then
      call_chunked({'ZADD', key, 'GT'}, added)
      redis.call('ZREMRANGEBYRANK', key, 0, -(cfg.recent_cap + 1))
    end
  end
  for _, k in ipairs({SK, U.key, B .. ':recent', B .. ':aff', B .. ':bought'}) do
    redis.call('EXPIRE', k, cfg.user_ttl)
  end
end

local function apply_user(B, events)
  local out, written, marks = {}, {}, {}
  local recent, bought, newest = {}, {}, nil
  local SK = B .. ':sessions'
  local fields = {'first_ts', 'last_ts', 'max_ts', 'fv'}  -- the user's and the sessions' (`n:TYPE` added)
  for _, e in ipairs(events) do fields[#fields + 1] = 'n:' .. e.type end
  local sessions = {by_id = {}, fields = fields}
  local aff, aff_fields = nil, {'_L'}  -- category affinities: loaded when an event first needs them
  for _, e in ipairs(events) do
    if e.cat ~= '' then aff_fields[#aff_fields + 1] = 'a:' .. e.cat end
  end
  local U = load_hash(B .. ':user', fields)
  local MK, MK_BEFORE, MK_EXPIRES = marker_windows(B)
  local forgotten = tonumber(redis.call('GET', B .. ':forgotten') or '0')
  for i, e in ipairs(events) do
    local prev = find_marker(MK, MK_BEFORE, written, e)
    if prev then
      local p = split(prev, '\031')  -- status, src, sid, neighbours, fv
      if p[2] == e.src then
        local nb = split(p[4] or '', '\030')
        out[i] = {s = 'replay', first = STATUS_NAME[p[1]] or p[1], sid = p[3], nb = nb, fv = tonumber(p[5]) or 0}
      else
        out[i] = {s = 'dup'}
      end
    else
      local t = e.ts
      local status = 'applied'
      if t <= forgotten then
        status = 'forgotten'
      else
        local maxts = tonumber(U.v.max_ts)
        if maxts and t < maxts - cfg.lateness then status = 'too_late' end
      end
      local marker
      if status ~= 'applied' then
        marker = STATUS_CODE[status] .. '\031' .. e.src .. '\031\031\0310'
        out[i] = {s = status}
      else
        local sid = e.sid
        if sid == nil or sid == '' or sid == cjson.null then sid = find_session(B, SK, t, sessions) end
        local S = session_of(B, sessions, sid)
        local SEQ = S.key .. ':seq'
        local nb = neighbours(SEQ, e, t)
        update_session(SK, S, sid, e, t)
        local fv = (tonumber(U.v.fv) or 0) + 1
        set_field(U, 'fv', fmt(fv))
        if e.item ~= '' then
          redis.call('ZADD', SEQ, t, e.item .. '\031' .. e.type .. '\031' .. fv)  -- at once: read as neighbours
        end
        S.touched = true
        if not newest or t > newest then newest = t end
        update_user(U, sid, e, t)
        if e.type == 'purchase' and e.item ~= '' then
          bought[#bought + 1] = t; bought[#bought + 1] = e.item
        end
        if e.w > 0 and e.item ~= '' then
          recent[#recent + 1] = t; recent[#recent + 1] = e.item
          if e.cat ~= '' then
            aff = aff or load_hash(B .. ':aff', aff_fields)
            decay_add_loaded(aff, 'a:' .. e.cat, e.w, t, cfg.aff_hl)
          end
        end
        marker = 'a\031' .. e.src .. '\031' .. sid .. '\031' .. table.concat(nb, '\030') .. '\031' .. fv
        out[i] = {s = 'applied', sid = sid, nb = nb, fv = fv}
      end
      written[e.k] = marker
      marks[#marks + 1] = e.k; marks[#marks + 1] = marker
    end
  end
  finish_user(B, SK, U, aff, sessions, marks, recent, bought, newest, MK, MK_EXPIRES)
  return out
end
