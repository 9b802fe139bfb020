-- One user's events of a batch, in offset order: dedup, lateness, session, user features.
-- apply_user(B, events): B = P{u:USER}; events = [{id,type,ts,item,sid,cat,w,src}, ...].
-- Session sequence members are ITEM 0x1F TYPE 0x1F FV (the user's feature version after the event:
-- unique per user, and a few bytes where the event id took 32). Markers are 0x1F-separated too.
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

local function find_session(B, SK, t)
  -- Sessions whose last event is within the gap before t, or later (out-of-order events).
  local cands = redis.call('ZRANGEBYSCORE', SK, t - cfg.gap, '+inf')
  local best, best_first = nil, nil
  for _, sid in ipairs(cands) do
    local first = tonumber(redis.call('HGET', B .. ':s:' .. sid, 'first_ts'))
    if first and first - cfg.gap <= t and (not best_first or first > best_first) then
      best, best_first = sid, first
    end
  end
  return best or ('s' .. fmt(t))
end

-- Event-id markers: one hash per user and window of MARKER_TTL seconds of server time, field = event
-- id. An id is looked up in the current and the previous window, so it is remembered for at least
-- MARKER_TTL (as a key's TTL would) and at most twice that, at the cost of a hash field instead of a
-- key per event. The window key expires when it stops being the previous one.
local function marker_windows(B)
  local w = math.floor(tonumber(redis.call('TIME')[1]) / cfg.marker_ttl)
  return B .. ':ev:' .. fmt(w), B .. ':ev:' .. fmt(w - 1), (w + 2) * cfg.marker_ttl
end

local function apply_user(B, events)
  local out, touched = {}, {}
  local UK, SK = B .. ':user', B .. ':sessions'
  local MK, MK_BEFORE, MK_EXPIRES = marker_windows(B)
  local forgotten = tonumber(redis.call('GET', B .. ':forgotten') or '0')
  for i, e in ipairs(events) do
    local prev = redis.call('HGET', MK, e.id) or redis.call('HGET', MK_BEFORE, e.id)
    if prev then
      local p = split(prev, '\031')  -- status, src, sid, neighbours, fv
      if p[2] == e.src then
        local nb = split(p[4] or '', '\030')
        out[i] = {s = 'replay', first = p[1], sid = p[3], nb = nb, fv = tonumber(p[5]) or 0}
      else
        out[i] = {s = 'dup'}
      end
    else
      local t = e.ts
      local status = 'applied'
      if t <= forgotten then
        status = 'forgotten'
      else
        local maxts = tonumber(redis.call('HGET', UK, 'max_ts'))
        if maxts and t < maxts - cfg.lateness then status = 'too_late' end
      end
      if status ~= 'applied' then
        redis.call('HSET', MK, e.id, status .. '\031' .. e.src .. '\031\031\0310')
        out[i] = {s = status}
      else
        local sid = e.sid
        if sid == nil or sid == '' or sid == cjson.null then sid = find_session(B, SK, t) end
        local S = B .. ':s:' .. sid
        local SEQ = S .. ':seq'
        -- Neighbours: the session's previous distinct items (event time <= t), newest first.
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
        -- Session.
        redis.call('HINCRBY', S, 'n:' .. e.type, 1)
        local fl = redis.call('HMGET', S, 'first_ts', 'last_ts')
        local first, last = tonumber(fl[1]), tonumber(fl[2])
        if not first or t < first then redis.call('HSET', S, 'first_ts', fmt(t)) end
        if not last or t > last then
          redis.call('HSET', S, 'last_ts', fmt(t))
          redis.call('ZADD', SK, t, sid)
          -- Sessions silent for longer than their TTL have no keys left: forget them, or the
          -- index grows by one entry per session for as long as the user stays active.
          redis.call('ZREMRANGEBYSCORE', SK, '-inf', '(' .. fmt(t - cfg.session_ttl * 1000))
        end
        local fv = redis.call('HINCRBY', UK, 'fv', 1)
        if e.item ~= '' then
          redis.call('ZADD', SEQ, t, e.item .. '\031' .. e.type .. '\031' .. fv)
          redis.call('ZREMRANGEBYRANK', SEQ, 0, -(cfg.seq_cap + 1))
        end
        touched[S] = true
        -- User.
        redis.call('HINCRBY', UK, 'n:' .. e.type, 1)
        local fm = redis.call('HMGET', UK, 'first_ts', 'max_ts')
        local ufirst, umax = tonumber(fm[1]), tonumber(fm[2])
        if not ufirst or t < ufirst then redis.call('HSET', UK, 'first_ts', fmt(t)) end
        if not umax or t >= umax then
          redis.call('HSET', UK, 'max_ts', fmt(t), 'last_ts', fmt(t), 'cur', sid)
        end
        if e.type == 'purchase' and e.item ~= '' then
          redis.call('ZADD', B .. ':bought', 'GT', t, e.item)
          redis.call('ZREMRANGEBYRANK', B .. ':bought', 0, -(cfg.recent_cap + 1))
        end
        if e.w > 0 and e.item ~= '' then
          redis.call('ZADD', B .. ':recent', 'GT', t, e.item)
          redis.call('ZREMRANGEBYRANK', B .. ':recent', 0, -(cfg.recent_cap + 1))
          if e.cat ~= '' then
            hash_decay_add(B .. ':aff', 'a:' .. e.cat, e.w, t, cfg.aff_hl)
          end
        end
        redis.call('HSET', MK, e.id, 'applied\031' .. e.src .. '\031' .. sid .. '\031' .. table.concat(nb, '\030') .. '\031' .. fv)
        out[i] = {s = 'applied', sid = sid, nb = nb, fv = fv}
      end
    end
  end
  -- TTLs once per call, not per event.
  redis.call('EXPIREAT', MK, MK_EXPIRES)
  for S in pairs(touched) do
    redis.call('EXPIRE', S, cfg.session_ttl)
    redis.call('EXPIRE', S .. ':seq', cfg.session_ttl)
  end
  if next(touched) then
    for _, k in ipairs({SK, UK, B .. ':recent', B .. ':aff', B .. ':bought'}) do redis.call('EXPIRE', k, cfg.user_ttl) end
  end
  return out
end
