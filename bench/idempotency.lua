-- wrk script for bench/idempotency.sh: every request is an SMS send (POST, JSON body);
-- with BENCH_KEYED=1 each carries its own Idempotency-Key, unique per run (BENCH_RUN),
-- thread and request, so every request is a first one (a claim, a send, a kept
-- answer), never a replay. The JSON line at the end is bench/report.lua's `done`.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
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
