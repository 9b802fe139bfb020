-- A batch's contribution to trending: one decayed set and hourly windows, by event time.
-- apply_trending(B, req): B = P{trending}; req = {events:[{p,o,item,ts,w}]}
-- Guards and the landmark are read and written once per call, and each item's weights are summed
-- first: one ZINCRBY per item and set, however many of the batch's events name it.
local function apply_trending(B, req)
  local Z = B .. ':decay'
  local guards = {'_L'}
  for _, e in ipairs(req.events) do guards[#guards + 1] = fmt(e.p) end
  local HW = load_hash(B .. ':hw', guards)
  local applied, decay, hours = 0, new_sums(), {}
  for _, e in ipairs(req.events) do
    if first_time(HW, fmt(e.p), e.o) then
      zset_decay_add_loaded(Z, e.item, e.w, e.ts, cfg.trend_hl, HW, '_L', decay)
      local H = B .. ':h:' .. fmt(math.floor(e.ts / 3600000))
      hours[H] = hours[H] or new_sums()
      add_sum(hours[H], e.item, e.w)
      applied = applied + 1
    end
  end
  flush_sums(Z, decay)
  for H, sums in pairs(hours) do
    flush_sums(H, sums)
    redis.call('EXPIRE', H, cfg.window_ttl)
  end
  redis.call('ZREMRANGEBYRANK', Z, 0, -(cfg.trend_cap + 1))
  redis.call('EXPIRE', Z, cfg.trend_ttl)
  flush_hash(HW)
  redis.call('EXPIRE', HW.key, cfg.trend_ttl)
  return applied
end
