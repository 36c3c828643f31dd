-- gatewatch enforcement for nginx (lua-nginx-module, OpenResty or Debian's
-- libnginx-mod-http-lua): keeps gatewatch's active decisions in a lua_shared_dict, refreshed
-- by a timer that polls gatewatch's CrowdSec-compatible decisions stream, and answers the
-- requests they cover.
--
--   ban      (rule action block)       -> 403
--   throttle (rule action rate_limit)  -> 429 with Retry-After (the decision's remaining time)
--   captcha  (rule action challenge)   -> challenge_status (401 by default) and challenge_body
--
-- Keys are matched the way gatewatch keys them: the client address (after realip), address
-- ranges (IPv4), and client keys: `header:x-api-key=VALUE`, `jwt:sub=SUBJECT` (the bearer
-- token's claim, read without checking the signature, as gatewatch keys it),
-- `cookie:NAME=VALUE` for the cookies named in `cookies`, and `CLIENT@METHOD host/path`
-- for endpoint+client decisions on literal paths. Values longer than 128 bytes (which
-- gatewatch replaces by a hash) are not matched.
--
-- Fails open: when gatewatch cannot be reached, requests pass (counted in `fail_open`), the
-- decisions already held stay until their own end. Nothing on the request path does I/O:
-- one worker polls, every worker reads the shared dictionary.

local cjson = require("cjson.safe")

local M = {}

local cfg = {
    url = "http://127.0.0.1:8080",
    api_key = "",
    interval = 1,
    timeout_ms = 1000,
    challenge_status = 401,
    challenge_body = "challenge required\n",
    cookies = {},
    dict = "gatewatch_decisions",
}

local STRENGTH = { ban = 3, captcha = 2, throttle = 1 }

local function dict()
    return ngx.shared[cfg.dict]
end

-- Seconds in a Go duration ("1h2m3.5s", "250ms", "-4s").
local function seconds(d)
    if type(d) ~= "string" then
        return 0
    end
    local sign = 1
    if d:sub(1, 1) == "-" then
        sign = -1
        d = d:sub(2)
    end
    local total = 0
    local unit = { h = 3600, m = 60, s = 1, ms = 0.001, us = 0.000001, ["µs"] = 0.000001, ns = 1e-9 }
    for num, u in d:gmatch("([%d%.]+)(%a+)") do
        total = total + (tonumber(num) or 0) * (unit[u] or 0)
    end
    return sign * total
end

local function ipv4(s)
    local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    if not a then
        return nil
    end
    return ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
end

-- The dictionary key of a decision: ranges apart (they are scanned), the rest by value.
local function key_of(d)
    local scope = (d.scope or ""):lower()
    if scope == "ip" then
        return "ip:" .. d.value
    elseif scope == "range" then
        return "range:" .. d.value
    else
        return "c:" .. d.value
    end
end

-- A decision into the dictionary: "type|id|until" under its key, until it ends; a weaker
-- decision never replaces a stronger one that still runs.
local function put(d)
    local ttl = seconds(d.duration)
    if ttl <= 0 or not STRENGTH[d.type] then
        return
    end
    local k = key_of(d)
    local held = dict():get(k)
    if held then
        local t = held:match("^(%a+)|")
        if t and STRENGTH[t] and STRENGTH[t] > STRENGTH[d.type] then
            return
        end
    end
    dict():set(k, d.type .. "|" .. tostring(d.id) .. "|" .. tostring(ngx.now() + ttl), ttl)
    if k:sub(1, 6) == "range:" then
        dict():incr("meta:ranges_version", 1, 0)
    end
end

local function drop(d)
    local k = key_of(d)
    local held = dict():get(k)
    if held and held:match("^%a+|(%d+)|") == tostring(d.id) then
        dict():delete(k)
        if k:sub(1, 6) == "range:" then
            dict():incr("meta:ranges_version", 1, 0)
        end
    end
end

-- One HTTP/1.1 GET over a cosocket: status and body.
local function get(path)
    local host, port = cfg.url:match("^http://([^:/]+):?(%d*)")
    port = tonumber(port) or 80
    local sock = ngx.socket.tcp()
    sock:settimeouts(cfg.timeout_ms, cfg.timeout_ms, cfg.timeout_ms)
    local ok, err = sock:connect(host, port)
    if not ok then
        return nil, err
    end
    local req = "GET " .. path .. " HTTP/1.1\r\nHost: " .. host .. "\r\nX-Api-Key: " .. cfg.api_key
        .. "\r\nUser-Agent: gatewatch-nginx\r\nConnection: close\r\n\r\n"
    ok, err = sock:send(req)
    if not ok then
        sock:close()
        return nil, err
    end
    local raw, rerr = sock:receive("*a")
    sock:close()
    if not raw then
        return nil, rerr
    end
    local head, body = raw:match("^(.-)\r\n\r\n(.*)$")
    if not head then
        return nil, "no HTTP answer"
    end
    local status = tonumber(head:match("^HTTP/%d%.%d (%d+)"))
    if head:lower():find("transfer%-encoding: chunked") then
        local out, pos = {}, 1
        while true do
            local size_hex, after = body:match("^(%x+)[^\r\n]*\r\n()", pos)
            local size = size_hex and tonumber(size_hex, 16)
            if not size or size == 0 then
                break
            end
            out[#out + 1] = body:sub(after, after + size - 1)
            pos = after + size + 2
        end
        body = table.concat(out)
    end
    return status, body
end

local function poll(premature, startup)
    if premature then
        return
    end
    local state = dict()
    local status, body = get("/v1/decisions/stream?startup=" .. (startup and "true" or "false"))
    local next_startup = startup
    if status == 200 then
        local doc = cjson.decode(body)
        if type(doc) == "table" then
            for _, d in ipairs(type(doc.deleted) == "table" and doc.deleted or {}) do
                drop(d)
            end
            for _, d in ipairs(type(doc.new) == "table" and doc.new or {}) do
                put(d)
            end
            state:incr("meta:polls", 1, 0)
            state:set("meta:healthy", true)
            state:set("meta:last_poll", ngx.now())
            next_startup = false
        else
            state:incr("meta:poll_failures", 1, 0)
            state:set("meta:healthy", false)
        end
    else
        state:incr("meta:poll_failures", 1, 0)
        state:set("meta:healthy", false)
        ngx.log(ngx.WARN, "gatewatch: decisions poll failed: ", tostring(status or body))
        -- After an outage, everything again: decisions may have changed meanwhile.
        next_startup = true
    end
    local ok, err = ngx.timer.at(cfg.interval, poll, next_startup)
    if not ok then
        ngx.log(ngx.ERR, "gatewatch: cannot schedule the next poll: ", err)
    end
end

--- Call from init_worker_by_lua: the settings, and the poll timer (in worker 0).
function M.init(opts)
    for k, v in pairs(opts or {}) do
        cfg[k] = v
    end
    if not ngx.shared[cfg.dict] then
        ngx.log(ngx.ERR, "gatewatch: lua_shared_dict ", cfg.dict, " is not declared")
        return
    end
    if ngx.worker.id() == 0 then
        local ok, err = ngx.timer.at(0, poll, true)
        if not ok then
            ngx.log(ngx.ERR, "gatewatch: cannot start polling: ", err)
        end
    end
end

-- Ranges, parsed again by each worker when they changed.
local ranges, ranges_version = {}, -1

local function load_ranges()
    local v = dict():get("meta:ranges_version") or 0
    if v == ranges_version then
        return
    end
    ranges, ranges_version = {}, v
    for _, k in ipairs(dict():get_keys(0)) do
        local net, bits = k:match("^range:([%d%.]+)/(%d+)$")
        if net then
            local n, b = ipv4(net), tonumber(bits)
            if n and b and b >= 0 and b <= 32 then
                ranges[#ranges + 1] = { key = k, net = n, size = 2 ^ (32 - b) }
            end
        end
    end
end

local function b64url(s)
    s = s:gsub("-", "+"):gsub("_", "/")
    local pad = #s % 4
    if pad > 0 then
        s = s .. string.rep("=", 4 - pad)
    end
    return ngx.decode_base64(s)
end

-- The client keys gatewatch may have decided on, for this request.
local function clients()
    local out = {}
    local addr = ngx.var.remote_addr or ""
    out[#out + 1] = "ip:" .. addr
    local key = ngx.var.http_x_api_key
    if key and key ~= "" and #key <= 128 then
        out[#out + 1] = "header:x-api-key=" .. key
    end
    local auth = ngx.var.http_authorization
    local token = auth and auth:match("^[Bb]earer%s+(%S+)")
    local payload = token and token:match("^[^%.]+%.([^%.]+)%.")
    local claims = payload and cjson.decode(b64url(payload) or "")
    if type(claims) == "table" and type(claims.sub) == "string" and #claims.sub <= 128 then
        out[#out + 1] = "jwt:sub=" .. claims.sub
    end
    for _, name in ipairs(cfg.cookies) do
        local v = ngx.var["cookie_" .. name]
        if v and v ~= "" and #v <= 128 then
            out[#out + 1] = "cookie:" .. name .. "=" .. v
        end
    end
    return out, addr
end

--- Call from access_by_lua: answers the request when a decision covers it.
function M.access()
    local d = dict()
    if not d then
        return
    end
    if d:get("meta:healthy") ~= true then
        d:incr("meta:fail_open", 1, 0)
    end
    local best, best_until
    local function consider(held)
        if not held then
            return
        end
        local t, _, untl = held:match("^(%a+)|(%d+)|([%d%.]+)$")
        if t and (not best or STRENGTH[t] > STRENGTH[best]) then
            best, best_until = t, tonumber(untl)
        end
    end
    local list, addr = clients()
    consider(d:get("ip:" .. addr))
    local endpoint = " " .. ngx.req.get_method() .. " " .. (ngx.var.host or "") .. (ngx.var.uri or "")
    for _, c in ipairs(list) do
        consider(d:get("c:" .. c))
        consider(d:get("c:" .. c .. "@" .. endpoint:sub(2)))
    end
    local n = ipv4(addr)
    if n then
        load_ranges()
        for _, r in ipairs(ranges) do
            if n >= r.net and n < r.net + r.size then
                consider(d:get(r.key))
            end
        end
    end
    if not best then
        return
    end
    d:incr("meta:answered_" .. best, 1, 0)
    -- Every answer of the module says so (an API's own 403 or 429 does not).
    if best == "ban" then
        ngx.header["X-Gatewatch"] = "block"
        return ngx.exit(ngx.HTTP_FORBIDDEN)
    elseif best == "throttle" then
        ngx.header["X-Gatewatch"] = "rate-limit"
        ngx.header["Retry-After"] = tostring(math.max(1, math.ceil((best_until or 0) - ngx.now())))
        return ngx.exit(429)
    else
        ngx.status = cfg.challenge_status
        ngx.header["Content-Type"] = "text/plain"
        ngx.header["X-Gatewatch"] = "challenge"
        ngx.print(cfg.challenge_body)
        return ngx.exit(cfg.challenge_status)
    end
end

--- Call from content_by_lua in a status location: the module's counters as JSON.
function M.status()
    local d = dict()
    local out = { decisions = 0 }
    for _, k in ipairs(d:get_keys(0)) do
        local m = k:match("^meta:(.+)$")
        if m then
            out[m] = d:get(k)
        else
            out.decisions = out.decisions + 1
        end
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(out))
end

--- Call from header_filter_by_lua: the request's latency up to its response headers, in
--- milliseconds, for the access-log line gatewatch reads ($gatewatch_latency_ms).
function M.log_fields()
    ngx.update_time()
    ngx.var.gatewatch_latency_ms = string.format("%.3f", (ngx.now() - ngx.req.start_time()) * 1000)
end

return M
