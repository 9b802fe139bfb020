-- A batch's contribution to trending: one decayed set and hourly windows, by event time.
-- apply_trending(B, req): B = P{trending}; req = {events:[{p,o,item,ts,w}]}
local function apply_trending(B, req)
  local HW, Z = B .. ':hw', B .. ':decay'
  local applied, hours = 0, {}
  for _, e in ipairs(req.events) do
    if first_time(HW, fmt(e.p), e.o) then
      zset_decay_add(Z, e.item, e.w, e.ts, cfg.trend_hl, HW, '_L')
      local H = B .. ':h:' .. fmt(math.floor(e.ts / 3600000))
      redis.call('ZINCRBY', H, e.w, e.item)
      hours[H] = true
      applied = applied + 1
    end
  end
  for H in pairs(hours) do redis.call('EXPIRE', H, cfg.window_ttl) end
  redis.call('ZREMRANGEBYRANK', Z, 0, -(cfg.trend_cap + 1))
  redis.call('EXPIRE', Z, cfg.trend_ttl)
  redis.call('EXPIRE', HW, cfg.trend_ttl)
  return applied
end
