-- wrk script: GET the banner query for accounts in turn; report figures as one JSON line.
-- wrk -t1 -c64 -d5s -s get.lua URL -- TOKEN ACCOUNTS [ETAG_FILE]
-- With ETAG_FILE (`path<TAB>etag` lines) each request sends If-None-Match: a 304 workload.

local requests, count, next_index = {}, 0, 0

function init(args)
  local token, accounts, etags = args[1], tonumber(args[2]), args[3]
  local headers = { ["Authorization"] = "Bearer " .. token }
  if etags then
    for line in io.lines(etags) do
      local path, etag = line:match("^([^\t]+)\t(.*)$")
      count = count + 1
      requests[count] = wrk.format("GET", path, {
        ["Authorization"] = headers["Authorization"], ["If-None-Match"] = etag,
      })
    end
    return
  end
  for account = 0, accounts - 1 do
    count = count + 1
    local path = string.format("/v1/accounts/acct_%d/connections?environment=live", account)
    requests[count] = wrk.format("GET", path, headers)
  end
end

function request()
  next_index = next_index % count + 1
  return requests[next_index]
end

function done(summary, latency, requests_)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"rate":%.1f,"non_2xx":%d,"socket_errors":%d,' ..
    '"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, seconds, summary.requests / seconds, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
