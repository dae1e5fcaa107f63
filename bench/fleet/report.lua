-- wrk script for bench/fleet.sh: one JSON line with latency percentiles, socket
-- errors and, when FLEET_COUNT_STATUS=1, the count of every response status.
--
-- Counting statuses needs wrk's response() hook, which hands every response to Lua
-- and costs wrk CPU; the fleet cells need it (200 vs 401 vs the rest), the latency
-- cells do not (both targets answer 200; wrk's own non-2xx count is reported), so
-- that they load the proxy as bench/report.lua does.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

if os.getenv("FLEET_COUNT_STATUS") == "1" then
  statuses = {}
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local counted = thread:get("statuses")
    if counted then
      for status, count in pairs(counted) do
        total[status] = (total[status] or 0) + count
      end
    end
  end
  local parts = {}
  for status, count in pairs(total) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")))
end
