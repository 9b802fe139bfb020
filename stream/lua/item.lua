-- One item's share of a batch: stats and co-visitation, guarded against replays.
-- apply_item(B, req): B = P{i:ITEM}; req = {stats:[{p,o,type,ts}], covis:[{p,o,next,ts,w}]}
-- The guard hash and the stats hash are read once and written once per call.
local function apply_item(B, req)
  local CV = B .. ':covis'
  local guards, stats_fields = {'_L'}, {'_L', 'last_ts', 'd:click', 'd:view', 'd:impression'}
  for _, e in ipairs(req.stats) do
    guards[#guards + 1] = 's:' .. fmt(e.p)
    stats_fields[#stats_fields + 1] = 'n:' .. e.type
    stats_fields[#stats_fields + 1] = 'd:' .. e.type
  end
  for _, e in ipairs(req.covis) do guards[#guards + 1] = 'c:' .. fmt(e.p) end
  local HW = load_hash(B .. ':hw', guards)
  local applied = 0
  if #req.stats > 0 then
    local ST = load_hash(B .. ':stats', stats_fields)
    for _, e in ipairs(req.stats) do
      if first_time(HW, 's:' .. fmt(e.p), e.o) then
        counted(ST, 'n:' .. e.type)
        local L = decay_add_loaded(ST, 'd:' .. e.type, 1, e.ts, cfg.item_hl)
        local last = tonumber(ST.v.last_ts)
        if not last or e.ts > last then set_field(ST, 'last_ts', fmt(e.ts)) end
        -- Smoothed CTR at the item's newest event time (decayed counts share one landmark).
        local now = math.max(last or e.ts, e.ts)
        local f = math.pow(2, -(now - L) / cfg.item_hl)
        local clicks = (tonumber(ST.v['d:click']) or 0) * f
        local exposures = ((tonumber(ST.v['d:view']) or 0) + (tonumber(ST.v['d:impression']) or 0)) * f
        set_field(ST, 'ctr', tostring((clicks + cfg.ctr_a) / (exposures + cfg.ctr_a + cfg.ctr_b)))
        applied = applied + 1
      end
    end
    flush_hash(ST)
    redis.call('EXPIRE', ST.key, cfg.item_ttl)
  end
  local sums = new_sums()
  for _, e in ipairs(req.covis) do
    if first_time(HW, 'c:' .. fmt(e.p), e.o) then
      zset_decay_add_loaded(CV, e.next, e.w, e.ts, cfg.covis_hl, HW, '_L', sums)
      applied = applied + 1
    end
  end
  if #req.covis > 0 then
    flush_sums(CV, sums)
    redis.call('ZREMRANGEBYRANK', CV, 0, -(cfg.covis_cap + 1))
    redis.call('EXPIRE', CV, cfg.item_ttl)
  end
  flush_hash(HW)
  redis.call('EXPIRE', HW.key, cfg.item_ttl)
  return applied
end
