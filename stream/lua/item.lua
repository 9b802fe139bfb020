-- One item's share of a batch: stats and co-visitation, guarded against replays.
-- apply_item(B, req): B = P{i:ITEM}; req = {stats:[{p,o,type,ts}], covis:[{p,o,next,ts,w}]}
local function apply_item(B, req)
  local ST, HW, CV = B .. ':stats', B .. ':hw', B .. ':covis'
  local applied = 0
  for _, e in ipairs(req.stats) do
    if first_time(HW, 's:' .. fmt(e.p), e.o) then
      redis.call('HINCRBY', ST, 'n:' .. e.type, 1)
      local _, L = hash_decay_add(ST, 'd:' .. e.type, 1, e.ts, cfg.item_hl)
      local v = redis.call('HMGET', ST, 'last_ts', 'd:click', 'd:view', 'd:impression')
      local last = tonumber(v[1])
      if not last or e.ts > last then redis.call('HSET', ST, 'last_ts', fmt(e.ts)) end
      -- Smoothed CTR at the item's newest event time (decayed counts share one landmark).
      local now = math.max(last or e.ts, e.ts)
      local f = math.pow(2, -(now - L) / cfg.item_hl)
      local clicks = (tonumber(v[2]) or 0) * f
      local exposures = ((tonumber(v[3]) or 0) + (tonumber(v[4]) or 0)) * f
      redis.call('HSET', ST, 'ctr', tostring((clicks + cfg.ctr_a) / (exposures + cfg.ctr_a + cfg.ctr_b)))
      applied = applied + 1
    end
  end
  for _, e in ipairs(req.covis) do
    if first_time(HW, 'c:' .. fmt(e.p), e.o) then
      zset_decay_add(CV, e.next, e.w, e.ts, cfg.covis_hl, HW, '_L')
      applied = applied + 1
    end
  end
  if #req.covis > 0 then
    redis.call('ZREMRANGEBYRANK', CV, 0, -(cfg.covis_cap + 1))
    redis.call('EXPIRE', CV, cfg.item_ttl)
  end
  redis.call('EXPIRE', ST, cfg.item_ttl)
  redis.call('EXPIRE', HW, cfg.item_ttl)
  return applied
end
