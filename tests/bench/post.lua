-- wrk script: POST pre-signed, distinct deliveries; report figures as one JSON line.
-- wrk -t1 -c64 -d5s -s post.lua URL -- FILE [DELAY_MS]
-- FILE holds `signature<TAB>body` lines; every request takes the next line, so no body
-- is sent twice unless the file runs out (reported as "wrapped").

local requests, count, next_index, wrapped, pause = {}, 0, 0, false, 0

function init(args)
  for line in io.lines(args[1]) do
    local signature, body = line:match("^([^\t]+)\t(.*)$")
    count = count + 1
    requests[count] = wrk.format("POST", nil, {
      ["x-cobalt-signature"] = signature,
      ["Content-Type"] = "application/json",
    }, body)
  end
  pause = tonumber(args[2] or "0")
end

function request()
  next_index = next_index + 1
  if next_index > count then
    next_index, wrapped = 1, true
  end
  return requests[next_index]
end

-- A pause after each answer turns the closed loop into a steady, lower rate. Random (its
-- mean is the given pause), so the connections do not fall into step and arrive in waves.
function delay()
  return math.random(0, 2 * pause)
end

function done(summary, latency, requests_)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"rate":%.1f,"non_2xx":%d,"socket_errors":%d,' ..
    '"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"wrapped":%s}\n',
    summary.requests, seconds, summary.requests / seconds, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
    tostring(wrapped)))
end
