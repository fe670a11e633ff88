-- wrk script: post.lua's signed, distinct deliveries, spread over several threads and ports,
-- and every acknowledged seq written out, so the caller can check each one is in the log.
-- WRK_PORTS=P1[,P2...] WRK_THREADS=T WRK_ACKS=OUT wrk -tT -cC -dDs -s post_spread.lua URL -- FILE PAUSE_MS
-- Thread i posts to port number ((i - 1) mod #ports) + 1 (URL's own port if WRK_PORTS is
-- unset) and sends lines i, i + T, i + 2T, ... of FILE, so no two threads send one body.

local threads = {}

function setup(thread)
  local ports = {}
  for port in (os.getenv("WRK_PORTS") or ""):gmatch("%d+") do
    ports[#ports + 1] = port
  end
  local id = #threads + 1
  thread:set("id", id)
  if #ports > 0 then
    thread.addr = wrk.lookup("127.0.0.1", ports[(id - 1) % #ports + 1])[1]
  end
  threads[id] = thread
end

local requests, count, pause = {}, 0, 0
-- Globals, read by done() through thread:get: bodies sent, whether FILE ran out, acked seqs.
sent, wrapped, acked = 0, false, {}

function init(args)
  local line_number = 0
  local of = tonumber(os.getenv("WRK_THREADS") or "1")
  for line in io.lines(args[1]) do
    line_number = line_number + 1
    if (line_number - 1) % of == id - 1 then
      local signature, body = line:match("^([^\t]+)\t(.*)$")
      count = count + 1
      requests[count] = wrk.format("POST", "/webhooks/refold", {
        ["x-cobalt-signature"] = signature,
        ["Content-Type"] = "application/json",
      }, body)
    end
  end
  pause = tonumber(args[2] or "0")
end

function request()
  sent = sent + 1
  if sent > count then
    sent, wrapped = 1, true
  end
  return requests[sent]
end

function delay()
  return math.random(0, 2 * pause)
end

function response(status, headers, body)
  if status == 200 then
    acked[#acked + 1] = body:match('"seq":%s*(%d+)')
  end
end

function done(summary, latency, requests_)
  local out = assert(io.open(os.getenv("WRK_ACKS"), "w"))
  local sent_by_thread, wrapped = {}, false
  for id, thread in ipairs(threads) do
    sent_by_thread[id] = tostring(thread:get("sent"))
    wrapped = wrapped or thread:get("wrapped")
    for _, seq in ipairs(thread:get("acked")) do
      out:write(seq, "\n")
    end
  end
  out:close()
  local seconds = summary.duration / 1e6
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"rate":%.1f,"non_2xx":%d,"socket_errors":%d,' ..
    '"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"wrapped":%s,"sent":[%s]}\n',
    summary.requests, seconds, summary.requests / seconds, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
    tostring(wrapped), table.concat(sent_by_thread, ",")))
end
