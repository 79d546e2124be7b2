-- wrk script of the benchmark: the request comes from the environment
-- (BENCH_METHOD, BENCH_BODY, BENCH_CONTENT_TYPE, BENCH_ACCEPT) and the result is printed as one JSON line,
-- "BENCHJSON {...}", with latencies in microseconds.
wrk.method = os.getenv("BENCH_METHOD") or "POST"
if wrk.method ~= "GET" then
  wrk.body = os.getenv("BENCH_BODY") or "[[1.0, 2.0, 3.0]]"
  wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
end
local accept = os.getenv("BENCH_ACCEPT")
if accept and accept ~= "" then
  wrk.headers["Accept"] = accept
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50": %d, "p90": %d, "p99": %d, "max": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
