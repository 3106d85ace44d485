-- wrk (4.x, LuaJIT) script for bench/pipeline.py: replays pre-signed requests written by bench/presign.py.
--
--   SB_REQUESTS=/tmp/req.bin SB_THREADS=1 SB_RATE=800 SB_COUNT=48000 SB_OUT=/tmp/out.json \
--     wrk -t1 -c128 -d65s --timeout 30s --latency -s bench/load.lua https://127.0.0.1:8443/webhook/shop
--
-- Environment:
--   SB_REQUESTS  the file (format SBREQ1, see bench/presign.py); thread i of SB_THREADS takes the requests
--                i, i + SB_THREADS, i + 2*SB_THREADS, ... of it (each wrk thread has its own Lua state).
--   SB_THREADS   the -t given to wrk (needed before wrk has called setup() for every thread).
--   SB_RATE      target rate in requests/s over all threads and connections, open loop: request k of the run
--                is due at T0 + k / SB_RATE, whenever the previous answer on its connection came. Only when
--                every connection is busy does a request leave late (the lag is reported). 0: closed loop,
--                each connection sends its next request as soon as the previous one is answered.
--   SB_COUNT     open loop: how many requests to send in all (then the connections stay idle until wrk's
--                -d runs out). Default: every request of the file.
--   SB_START     open loop: T0 as CLOCK_MONOTONIC seconds (Python's time.monotonic()), shared by all threads.
--                Default: the first delay() call of each thread. Set it with more than one thread: wrk starts
--                thread 0 before thread 1 has loaded its slice, so per-thread T0s drift apart (seen: 500/s
--                asked, 463/s sent with 2 threads). With it, against a trivial local server: 1,000, 2,000 and
--                4,000/s asked, 999-1,000.5, 1,999-2,000.3, 3,999-4,000.5/s sent, 1 or 2 threads.
--   SB_OUT       where done() writes its JSON result (it is printed on stdout as one line as well).
--   SB_IDS_OUT   where done() writes the event id of every 200 answer, one per line (else they are inlined
--                in the JSON as "ok_ids").
--   SB_LAGS_OUT  open loop: where done() writes, for every request sent, "<thread> <ms>": how late it was sent
--                against its schedule (T0 + k / SB_RATE for the k-th request), thread by thread in send order
--                (the order bench/pipeline.py knows the ids in). Negative: a little early (the timer's ms).
--   SB_HIST_OUT  where done() writes wrk's latency histogram, "<µs> <count>" per non-empty value, read from
--                wrk's own memory (below); bench/wrkstats.py takes wrk's correction out of it.
--
-- wrk 4.1 calls request() once on thread 0 before the run (to count pipelined requests); that call is not
-- counted as sent and hands out the request the first real call sends again.
--
-- Latency. wrk 4.1.0 (src/wrk.c) calls stats_correct(latency, runtime_us / (requests / connections)) before
-- done(): for every recorded latency n of at least twice that interval it adds synthetic samples at
-- n - interval, n - 2 interval, ... while above the interval (its correction for coordinated omission, with
-- one interval averaged over the whole run). So latency:percentile() and latency.mean in done() are not the
-- latencies measured. done() dumps the histogram as it stands (SB_HIST_OUT) and the script's JSON gives wrk's
-- figures only as "latency_ms_wrk"; bench/wrkstats.py rebuilds the measured histogram exactly. The Lua API
-- (latency(i): the i-th non-empty value and its count) rescans the histogram from its smallest value on each
-- call, far too slow for tens of thousands of values, so done() reads wrk's stats struct (src/stats.h: count,
-- limit, min, max, then one uint64 per µs) through the FFI, and checks what it read against the API's min,
-- max and #latency (the count of non-empty values): "latency_hist_error" says why when they disagree.
--
-- wrk does not tell response() which request it answers, so the ids come from the answers: a 200 carries
-- {"status":"success","event_id":"..."}. The requests handed out but not answered 200 (refused, failed or
-- still in flight when wrk stopped) are the handed-out ids (the first "sent" of the thread's slice) minus
-- these; bench/pipeline.py computes them.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } sb_timespec_t;
int clock_gettime(int clk_id, sb_timespec_t *tp);
]]
local CLOCK_MONOTONIC = 1
local tspec = ffi.new("sb_timespec_t")
local function mono()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, tspec)
  return tonumber(tspec.tv_sec) + tonumber(tspec.tv_nsec) * 1e-9
end

-- ---------------------------------------------------------------------------------------------------------
-- setup / done: the main Lua state
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

-- ---------------------------------------------------------------------------------------------------------
-- per thread
tid = tid or 0
local nthreads, rate, planned, t0
local late_s = tonumber(os.getenv("SB_LATE_MS") or "10") / 1000 -- read here: done() runs where init() did not
local reqs, ids = {}, {}
local nreq, nxt, slot = 0, 1, 0
local probe = false
st = { sent = 0, wrapped = 0, answered = 0, late = 0, lag_sum = 0.0, lag_max = 0.0,
       first_send = -1, last_send = -1, last_answer = -1, load_s = 0, file_requests = 0 }
lags = {} -- open loop: ms each request was sent after it was due, in send order
statuses = {}
ok_ids = {}
samples = {} -- a few bodies of non-200 answers, per status

local function load(path, me, every)
  local f = assert(io.open(path, "rb"))
  local magic, count = f:read("*l"):match("^(SBREQ1) (%d+)$")
  assert(magic, "not an SBREQ1 file: " .. path)
  count = tonumber(count)
  for i = 0, count - 1 do
    local line = f:read("*l")
    local id, _, len = line:match("^(%S+) (%d) (%d+)$")
    len = tonumber(len)
    if i % every == me then
      nreq = nreq + 1
      ids[nreq] = id
      reqs[nreq] = f:read(len)
    else
      f:seek("cur", len)
    end
  end
  f:close()
  return count
end

function init(args)
  nthreads = tonumber(os.getenv("SB_THREADS") or "1")
  rate = tonumber(os.getenv("SB_RATE") or "0")
  local started = mono()
  local total = load(assert(os.getenv("SB_REQUESTS"), "SB_REQUESTS is not set"), tid, nthreads)
  st.load_s = mono() - started
  st.file_requests = total
  local count = tonumber(os.getenv("SB_COUNT") or tostring(total))
  -- slots tid, tid + nthreads, ... below count belong to this thread
  planned = math.max(0, math.ceil((count - tid) / nthreads))
  st.planned = planned
  t0 = tonumber(os.getenv("SB_START") or "")
  if rate <= 0 then
    delay = nil -- closed loop: wrk sends without asking for a delay
  end
  assert(nreq > 0, "thread " .. tid .. " has no request to send")
  probe = (tid == 0)
end

function delay()
  local now = mono()
  if t0 == nil then t0 = now end
  local k = slot
  if k >= planned then
    return 86400000 -- all sent: stay idle until wrk's -d runs out
  end
  slot = k + 1
  local wait = t0 + (k * nthreads + tid) / rate - now
  if wait <= 0 then
    return 0
  end
  return math.floor(wait * 1000 + 0.5)
end

function request()
  if probe then
    -- wrk calls request() once on thread 0's state before the run (script_verify_request, to count the
    -- requests of a pipeline): hand out the first request without counting it as sent
    probe = false
    return reqs[1]
  end
  local now = mono()
  if st.first_send < 0 then st.first_send = now end
  st.last_send = now
  if rate > 0 and t0 ~= nil then
    -- the k-th request sent is due at T0 + k / rate (wrk starts its latency clock right after this call).
    -- Counted by sends, not by the slot delay() handed out: a thread's connections wait on their timers at
    -- once, so the slot a delay() took is not the next request()'s (one "due" per thread, tried on
    -- 2026-12-07, gave one connection's due time to another and spent the slots twice: a run sent 57% of
    -- its plan). After a reconnect (an error, or an answer with "Connection: close") wrk sends without a
    -- delay(): that send shifts the later ones' due times by 1/rate, so each such reconnect understates the
    -- lateness of what follows by one interval (Envoy keeps the bench's connections open).
    local lag = now - (t0 + (st.sent * nthreads + tid) / rate)
    lags[#lags + 1] = lag * 1000
    if lag > 0 then
      st.lag_sum = st.lag_sum + lag
      if lag > st.lag_max then st.lag_max = lag end
    end
    if lag > late_s then st.late = st.late + 1 end
  end
  if nxt > nreq then
    nxt = 1
    st.wrapped = st.wrapped + 1
  end
  local r = reqs[nxt]
  nxt = nxt + 1
  st.sent = st.sent + 1
  return r
end

function response(status, headers, body)
  st.answered = st.answered + 1
  st.last_answer = mono()
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    local id = body and body:match('"event_id"%s*:%s*"([^"]+)"')
    if id then
      ok_ids[#ok_ids + 1] = id
    else
      st.ok_without_id = (st.ok_without_id or 0) + 1
    end
  else
    local s = samples[status]
    if s == nil then
      s = {}
      samples[status] = s
    end
    if #s < 3 then s[#s + 1] = body and body:sub(1, 300) or "" end
  end
end

-- ---------------------------------------------------------------------------------------------------------
-- JSON (enough for numbers, strings, booleans, arrays and string-keyed tables)
local function esc(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function json(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if v == math.floor(v) and math.abs(v) < 1e15 then return string.format("%d", v) end
    return string.format("%.15g", v)
  elseif t == "string" then
    return esc(v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    if #v > 0 or next(v) == nil then
      local parts = {}
      for i = 1, #v do parts[i] = json(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local parts = {}
    for k, x in pairs(v) do parts[#parts + 1] = esc(tostring(k)) .. ":" .. json(x) end
    table.sort(parts)
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return "null"
end

-- wrk's latency histogram as it stands in done() (wrk's correction included): the non-empty values (µs) in
-- increasing order, their counts, the sum of the counts and the histogram's size (--timeout in µs + 1); or
-- nil and why when what was read through the
-- FFI disagrees with what the Lua API says (api_min, api_max: latency.min and .max; api_values: #latency).
-- Every value from 0 on is read: the correction may add samples below the smallest measured one, which the
-- API's scans (from min) never show but its count includes.
function latency_histogram(latency, api_min, api_max, api_values)
  local s = ffi.cast("uint64_t **", ffi.cast("void *", latency))[0]
  local count, limit, lo, hi = s[0], s[1], s[2], s[3]
  if tonumber(lo) ~= api_min or tonumber(hi) ~= api_max or hi >= limit then
    return nil, string.format("stats struct read as min %s max %s limit %s; the API says min %s max %s",
                              tostring(lo), tostring(hi), tostring(limit), tostring(api_min), tostring(api_max))
  end
  local data = s + 4
  local values, counts, total, from_min = {}, {}, 0, 0
  local first, last = tonumber(lo), tonumber(hi)
  for v = 0, last do
    local c = data[v]
    if c ~= 0 then
      local n = tonumber(c)
      values[#values + 1] = v
      counts[#counts + 1] = n
      total = total + n
      if v >= first then from_min = from_min + 1 end
    end
  end
  if from_min ~= api_values or total ~= tonumber(count) then
    return nil, string.format("read %d non-empty values from min (the API: %d) holding %d samples (wrk: %s)",
                              from_min, api_values, total, tostring(count))
  end
  return values, counts, total, tonumber(limit)
end

function done(summary, latency, requests)
  local out = {
    requests = summary.requests,
    duration_s = summary.duration / 1e6,
    duration_us = summary.duration,
    bytes = summary.bytes,
    errors = summary.errors,
    -- wrk's own figures, its correction for coordinated omission included: not the latencies measured
    latency_ms_wrk = {
      p50 = latency:percentile(50) / 1000,
      p90 = latency:percentile(90) / 1000,
      p99 = latency:percentile(99) / 1000,
      max = latency.max / 1000,
      mean = latency.mean / 1000,
    },
    rate = tonumber(os.getenv("SB_RATE") or "0"),
    threads = {},
  }
  local hist_out = os.getenv("SB_HIST_OUT")
  if hist_out and hist_out ~= "" then
    local ok, values, counts, total, limit = pcall(latency_histogram, latency, latency.min, latency.max, #latency)
    if not ok then
      out.latency_hist_error = tostring(values)
    elseif values == nil then
      out.latency_hist_error = counts
    else
      local f = assert(io.open(hist_out, "wb"))
      local chunk = {}
      for i = 1, #values do
        chunk[#chunk + 1] = string.format("%d %d\n", values[i], counts[i])
        if #chunk == 4096 then
          f:write(table.concat(chunk))
          chunk = {}
        end
      end
      f:write(table.concat(chunk))
      f:close()
      out.latency_hist_file = hist_out
      out.latency_hist_samples = total
      out.latency_hist_limit = limit
    end
  end
  local status_total, all_ok, bodies = {}, {}, {}
  local sent, wrapped, answered, late, lag_sum, lag_max = 0, 0, 0, 0, 0, 0
  local first, last_send, last_answer = math.huge, -1, -1
  local lags_out = os.getenv("SB_LAGS_OUT")
  local lags_file = nil
  if lags_out and lags_out ~= "" then lags_file = assert(io.open(lags_out, "wb")) end
  for i, thread in ipairs(threads) do
    local s = thread:get("st")
    if lags_file then
      local chunk = {}
      for _, lag in ipairs(thread:get("lags")) do
        chunk[#chunk + 1] = string.format("%d %.3f\n", i - 1, lag)
        if #chunk == 4096 then
          lags_file:write(table.concat(chunk))
          chunk = {}
        end
      end
      lags_file:write(table.concat(chunk))
    end
    local sc = thread:get("statuses")
    local ok = thread:get("ok_ids")
    local smp = thread:get("samples")
    sent = sent + s.sent
    wrapped = wrapped + s.wrapped
    answered = answered + s.answered
    late = late + s.late
    lag_sum = lag_sum + s.lag_sum
    if s.lag_max > lag_max then lag_max = s.lag_max end
    if s.first_send >= 0 and s.first_send < first then first = s.first_send end
    if s.last_send > last_send then last_send = s.last_send end
    if s.last_answer > last_answer then last_answer = s.last_answer end
    for code, n in pairs(sc) do
      status_total[tostring(code)] = (status_total[tostring(code)] or 0) + n
    end
    for _, id in ipairs(ok) do all_ok[#all_ok + 1] = id end
    for code, list in pairs(smp) do bodies[tostring(code)] = list end
    out.threads[i] = { sent = s.sent, answered = s.answered, ok = #ok, load_s = s.load_s, planned = s.planned,
                       wrapped = s.wrapped, first_send = s.first_send, last_send = s.last_send }
  end
  out.sent = sent
  out.answered = answered
  out.unanswered = sent - answered
  out.wrapped = wrapped
  out.status = status_total
  out.ok = #all_ok
  out.error_bodies = bodies
  out.first_send = first ~= math.huge and first or nil
  out.last_send = last_send
  out.last_answer = last_answer
  if sent > 1 and last_send > first then
    out.send_rate = (sent - 1) / (last_send - first)
  end
  if lags_file then
    lags_file:close()
    out.lags_file = lags_out
  end
  -- open loop: requests sent more than SB_LATE_MS (10) after they were due (every connection busy), and the
  -- lateness of the requests sent late or on time (early ones count as 0)
  out.late = late
  out.late_ms = late_s * 1000
  out.lag_ms = { mean = sent > 0 and lag_sum / sent * 1000 or 0, max = lag_max * 1000 }
  local ids_out = os.getenv("SB_IDS_OUT")
  if ids_out and ids_out ~= "" then
    local f = assert(io.open(ids_out, "wb"))
    f:write(table.concat(all_ok, "\n"), #all_ok > 0 and "\n" or "")
    f:close()
    out.ok_ids_file = ids_out
  else
    out.ok_ids = all_ok
  end
  local line = json(out)
  local path = os.getenv("SB_OUT")
  if path and path ~= "" then
    local f = assert(io.open(path, "wb"))
    f:write(line, "\n")
    f:close()
  end
  io.write(line, "\n")
end
