-- POST one body with the given headers: wrk -s post.lua URL -- BODY_FILE HEADERS_FILE [unique]
-- HEADERS_FILE holds one "Name: value" a line. With "unique", each request's body has "bench-ID" replaced
-- by "bench-<thread>-<n>" (a number of its own), so that a source that deduplicates takes every request as new;
-- without it the request is formatted once and sent as is (wrk's fast path).

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local body, counter = nil, 0

function init(args)
  local f = assert(io.open(args[1], "rb"))
  body = f:read("*a")
  f:close()
  wrk.method = "POST"
  for line in io.lines(args[2]) do
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then
      wrk.headers[name] = value
    end
  end
  wrk.body = body
  if args[3] ~= "unique" then
    request = nil -- a static request: formatted once by wrk itself
  end
end

function request()
  counter = counter + 1
  local b = body:gsub("bench%-ID", "bench-" .. tostring(thread_id) .. "-" .. tostring(counter))
  return wrk.format(nil, nil, nil, b)
end
