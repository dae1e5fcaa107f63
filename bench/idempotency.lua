-- wrk script for bench/idempotency.sh: every request is an SMS send (POST, JSON body);
-- with BENCH_KEYED=1 each carries its own Idempotency-Key, unique per run (BENCH_RUN),
-- thread and request, so every request is a first one (a claim, a send, a kept
-- answer), never a replay. Prints one JSON line, as bench/report.lua does.
local keyed = os.getenv("BENCH_KEYED") == "1"
local run = os.getenv("BENCH_RUN") or "0"
local body = '{"from":"+15550001111","to":"+15550002222","text":"bench"}'
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0
function request()
  counter = counter + 1
  local headers = { ["Content-Type"] = "application/json" }
  if keyed then
    headers["Idempotency-Key"] = string.format("bench-%s-%d-%d", run, tid or 0, counter)
  end
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
