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
-- ranges (IPv4 and IPv6), and client keys: `header:x-api-key=VALUE`, `jwt:sub=SUBJECT` (the
-- bearer token's claim, read without checking the signature, as gatewatch keys it),
-- `cookie:NAME=VALUE` for the cookies named in `cookies`, and `CLIENT@METHOD host/path` for
-- endpoint+client decisions, literal or templated (`/v1/orders/{id}`: a placeholder matches
-- one path segment, `{rest}` the rest of the path). Values longer than 128 bytes (which
-- gatewatch replaces by a hash) are not matched.
--
-- Worker 0 polls gatewatch and writes each change to the shared dictionary (the decisions,
-- and a journal of the changes); every worker keeps its own copy of the decisions in Lua
-- tables, brought up to date from the journal by a timer every `sync_interval` seconds. A
-- request reads only that copy: no lock and no I/O on the request path. Counters are kept
-- per worker and added to the dictionary by the same timer.
--
-- Fails open: when gatewatch cannot be reached, requests pass (counted in `fail_open`), the
-- decisions already held stay until their own end.

local cjson = require("cjson.safe")

local ngx = ngx
local ngx_var = ngx.var
local ngx_now = ngx.now
local str_find = string.find
local str_sub = string.sub
local str_byte = string.byte
local str_char = string.char
local floor = math.floor

local M = {}

local cfg = {
    url = "http://127.0.0.1:8080",
    api_key = "",
    interval = 1,
    sync_interval = 0.1,
    timeout_ms = 1000,
    challenge_status = 401,
    challenge_body = "challenge required\n",
    cookies = {},
    dict = "gatewatch_decisions",
}

local STRENGTH = { ban = 3, captcha = 2, throttle = 1 }

-- A poll with more changes than this makes every worker copy the whole dictionary instead
-- of reading a journal entry per change.
local JOURNAL_MAX_BATCH = 512
-- Journal entries are kept this long (seconds): a worker that fell further behind copies
-- the whole dictionary.
local JOURNAL_TTL = 600

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
    a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
    if a > 255 or b > 255 or c > 255 or d > 255 then
        return nil
    end
    return ((a * 256 + b) * 256 + c) * 256 + d
end

-- The 16 bytes of an IPv6 address ("2001:db8::1", "::ffff:192.0.2.1"), or nil.
local function ipv6(s)
    if not str_find(s, ":", 1, true) then
        return nil
    end
    s = s:gsub("%%.*$", "")
    local function groups(part, out)
        if part == "" then
            return true
        end
        local list = {}
        for g in (part .. ":"):gmatch("([^:]*):") do
            list[#list + 1] = g
        end
        for i, g in ipairs(list) do
            if i == #list and str_find(g, ".", 1, true) then
                local v = ipv4(g)
                if not v then
                    return false
                end
                out[#out + 1] = floor(v / 65536)
                out[#out + 1] = v % 65536
            elseif g:match("^%x%x?%x?%x?$") then
                out[#out + 1] = tonumber(g, 16)
            else
                return false
            end
        end
        return true
    end
    local words = {}
    local gap = str_find(s, "::", 1, true)
    if gap then
        local tail = {}
        if not groups(s:sub(1, gap - 1), words) or not groups(s:sub(gap + 2), tail) then
            return nil
        end
        if #words + #tail > 7 then
            return nil
        end
        for _ = 1, 8 - #words - #tail do
            words[#words + 1] = 0
        end
        for _, w in ipairs(tail) do
            words[#words + 1] = w
        end
    elseif not groups(s, words) or #words ~= 8 then
        return nil
    end
    local bytes = {}
    for i, w in ipairs(words) do
        bytes[2 * i - 1] = str_char(floor(w / 256))
        bytes[2 * i] = str_char(w % 256)
    end
    return table.concat(bytes)
end

-- The first `bits` bits of a 16-byte address, the rest zero, as a table key.
local function prefix6(bytes, bits)
    local whole = floor(bits / 8)
    local rest = bits - whole * 8
    local head = str_sub(bytes, 1, whole)
    if rest == 0 then
        return head
    end
    local b = str_byte(bytes, whole + 1)
    return head .. str_char(b - b % 2 ^ (8 - rest))
end

-- The dictionary key of a decision: by scope, then value.
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

-- ---------------------------------------------------------------------------------------
-- Worker 0: the poll, writing the shared dictionary and its journal.

local journal_batch, journal_overflow = {}, false

local function journal(rec)
    if journal_overflow then
        return
    end
    journal_batch[#journal_batch + 1] = rec
    if #journal_batch > JOURNAL_MAX_BATCH then
        journal_overflow = true
    end
end

-- Ends a poll's batch: its changes into the journal, or one full copy for every worker.
local function journal_commit()
    local d = dict()
    if journal_overflow then
        d:incr("meta:epoch", 1, 0)
    elseif #journal_batch > 0 then
        local seq = d:get("meta:seq") or 0
        for _, rec in ipairs(journal_batch) do
            seq = seq + 1
            local ok = d:safe_set("j:" .. seq, rec, JOURNAL_TTL)
            if not ok then
                d:incr("meta:epoch", 1, 0)
                break
            end
        end
        d:set("meta:seq", seq)
    end
    journal_batch, journal_overflow = {}, false
end

-- A decision into the dictionary: "type|id|until" under its key, until it ends; a weaker
-- decision never replaces a stronger one that still runs.
local function put(d)
    local ttl = seconds(d.duration)
    if ttl <= 0 or not STRENGTH[d.type] or type(d.value) ~= "string" then
        return
    end
    local k = key_of(d)
    local state = dict()
    local held = state:get(k)
    if held then
        local t = held:match("^(%a+)|")
        if t and STRENGTH[t] and STRENGTH[t] > STRENGTH[d.type] then
            return
        end
    end
    local v = d.type .. "|" .. tostring(d.id) .. "|" .. tostring(ngx_now() + ttl)
    state:set(k, v, ttl)
    journal("P" .. k .. "\n" .. v)
end

local function drop(d)
    if type(d.value) ~= "string" then
        return
    end
    local k = key_of(d)
    local state = dict()
    local held = state:get(k)
    if held and held:match("^%a+|(%d+)|") == tostring(d.id) then
        state:delete(k)
        journal("D" .. k)
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
    local doc = status == 200 and cjson.decode(body)
    if type(doc) == "table" then
        for _, d in ipairs(type(doc.deleted) == "table" and doc.deleted or {}) do
            if type(d) == "table" then
                drop(d)
            end
        end
        for _, d in ipairs(type(doc.new) == "table" and doc.new or {}) do
            if type(d) == "table" then
                put(d)
            end
        end
        journal_commit()
        state:incr("meta:polls", 1, 0)
        state:set("meta:healthy", true)
        state:set("meta:last_poll", ngx_now())
        next_startup = false
    else
        state:incr("meta:poll_failures", 1, 0)
        state:set("meta:healthy", false)
        if status ~= 200 then
            ngx.log(ngx.WARN, "gatewatch: decisions poll failed: ", tostring(status or body))
            -- After an outage, everything again: decisions may have changed meanwhile.
            next_startup = true
        end
    end
    local ok, err = ngx.timer.at(cfg.interval, poll, next_startup)
    if not ok then
        ngx.log(ngx.ERR, "gatewatch: cannot schedule the next poll: ", err)
    end
end

-- ---------------------------------------------------------------------------------------
-- Every worker: its own copy of the decisions.

-- Held decisions: { t = type, s = strength, u = until (epoch seconds) }; an endpoint
-- decision also has m (the endpoint, or a pattern) and lit (m is literal).
local ips = {}        -- address (IPv4 text, IPv6 16 bytes) -> decision
local clients = {}    -- client key -> decision
local endpoints = {}  -- client key -> { [dictionary key] = endpoint decision }
local ranges4 = {}    -- prefix length -> { [network as number] = decision }
local ranges6 = {}    -- prefix length -> { [prefix bytes] = decision }
-- Derived after each change, for the request path: prefix lengths present (longest first),
-- and whether any client or endpoint decision is held.
local lens4, lens6 = {}, {}
local any_client, any_endpoint = false, false
local seq, epoch = -1, -1
local healthy = false
local last_sweep = 0

local counts = { fail_open = 0, answered_ban = 0, answered_throttle = 0, answered_captcha = 0 }

local function escape(s)
    return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- "CLIENT@METHOD host/path" apart: the client, and the endpoint's m and lit (a templated
-- path as a Lua pattern).
local function endpoint_entry(value)
    local client, ep = value:match("^(.*)@(%u+ [^/ ]*/.*)$")
    if not client then
        return nil
    end
    if not str_find(ep, "{", 1, true) then
        return client, ep, true
    end
    local out, pos = { "^" }, 1
    while true do
        local a, b, name = str_find(ep, "{([%w_]*)}", pos)
        if not a then
            out[#out + 1] = escape(str_sub(ep, pos))
            break
        end
        out[#out + 1] = escape(str_sub(ep, pos, a - 1))
        out[#out + 1] = name == "rest" and ".+" or "[^/]+"
        pos = b + 1
    end
    out[#out + 1] = "$"
    return client, table.concat(out), false
end

local function derive()
    any_client = next(clients) ~= nil
    any_endpoint = next(endpoints) ~= nil
    lens4, lens6 = {}, {}
    for b, t in pairs(ranges4) do
        if next(t) then
            lens4[#lens4 + 1] = b
        end
    end
    for b, t in pairs(ranges6) do
        if next(t) then
            lens6[#lens6 + 1] = b
        end
    end
    table.sort(lens4, function(x, y) return x > y end)
    table.sort(lens6, function(x, y) return x > y end)
end

-- The copy's slot of a dictionary key: its table and index (nil for keys of no decision),
-- and for an endpoint decision its m and lit.
local function slot(k)
    local kind, v = k:match("^(%a+):(.*)$")
    if kind == "ip" then
        return ips, ipv6(v) or v
    elseif kind == "range" then
        local net, bits = v:match("^(.+)/(%d+)$")
        bits = tonumber(bits)
        if not net then
            return nil
        end
        local n = ipv4(net)
        if n and bits <= 32 then
            ranges4[bits] = ranges4[bits] or {}
            local size = 2 ^ (32 - bits)
            return ranges4[bits], n - n % size
        end
        local b6 = ipv6(net)
        if b6 and bits <= 128 then
            ranges6[bits] = ranges6[bits] or {}
            return ranges6[bits], prefix6(b6, bits)
        end
        return nil
    elseif kind == "c" then
        if str_find(v, "@", 1, true) then
            local client, m, lit = endpoint_entry(v)
            if client then
                endpoints[client] = endpoints[client] or {}
                return endpoints[client], k, m, lit, client
            end
        end
        return clients, v
    end
    return nil
end

-- One change into the copy: "P<key>\n<type>|<id>|<until>" or "D<key>".
local function apply(rec)
    local op = str_sub(rec, 1, 1)
    local k, v
    if op == "P" then
        k, v = rec:match("^P(.-)\n(.*)$")
    else
        k = str_sub(rec, 2)
    end
    if not k then
        return
    end
    local t, i, m, lit, client = slot(k)
    if not t then
        return
    end
    if op == "D" then
        t[i] = nil
        if client and not next(t) then
            endpoints[client] = nil
        end
        return
    end
    local typ, untl = v:match("^(%a+)|%d+|([%d%.]+)$")
    if not typ or not STRENGTH[typ] then
        return
    end
    t[i] = { t = typ, s = STRENGTH[typ], u = tonumber(untl), m = m, lit = lit }
end

-- The whole dictionary into a fresh copy.
local function copy_all(state)
    ips, clients, endpoints, ranges4, ranges6 = {}, {}, {}, {}, {}
    for _, k in ipairs(state:get_keys(0)) do
        local first = str_byte(k, 1)
        -- "ip:", "range:", "c:": decisions; "meta:" and "j:" are not.
        if first == 105 or first == 114 or (first == 99 and str_byte(k, 2) == 58) then
            local v = state:get(k)
            if type(v) == "string" then
                apply("P" .. k .. "\n" .. v)
            end
        end
    end
end

-- Calls f(t, parent, key) for each table of decisions in the copy (`parent[key]` is `t` for
-- the nested ones: ranges by prefix length, endpoints by client).
local function each_table(f)
    f(ips)
    f(clients)
    for _, nested in ipairs({ ranges4, ranges6, endpoints }) do
        for key, t in pairs(nested) do
            f(t, nested, key)
        end
    end
end

-- Ended decisions out of the copy (each is also checked at lookup).
local function sweep(now)
    each_table(function(t, parent, key)
        for k, d in pairs(t) do
            if d.u <= now then
                t[k] = nil
            end
        end
        if parent and not next(t) then
            parent[key] = nil
        end
    end)
end

local function flush_counts(state)
    for name, n in pairs(counts) do
        if n > 0 then
            state:incr("meta:" .. name, n, 0)
            counts[name] = 0
        end
    end
end

local function sync(premature)
    local state = dict()
    flush_counts(state)
    if premature then
        return
    end
    healthy = state:get("meta:healthy") == true
    local now = ngx_now()
    local changed = false
    local e = state:get("meta:epoch") or 0
    local s = state:get("meta:seq") or 0
    if e ~= epoch or s < seq then
        epoch, seq = e, s
        copy_all(state)
        changed = true
    elseif s > seq then
        for n = seq + 1, s do
            local rec = state:get("j:" .. n)
            if not rec then
                copy_all(state)
                break
            end
            apply(rec)
        end
        seq = s
        changed = true
    end
    if now - last_sweep >= 10 then
        sweep(now)
        last_sweep = now
        changed = true
    end
    if changed then
        derive()
    end
end

--- Call from init_worker_by_lua: the settings, the copy's timer (every worker) and the
--- poll timer (worker 0).
function M.init(opts)
    for k, v in pairs(opts or {}) do
        cfg[k] = v
    end
    if not ngx.shared[cfg.dict] then
        ngx.log(ngx.ERR, "gatewatch: lua_shared_dict ", cfg.dict, " is not declared")
        return
    end
    local ok, err = ngx.timer.every(cfg.sync_interval, sync)
    if not ok then
        ngx.log(ngx.ERR, "gatewatch: cannot start the decisions copy: ", err)
    end
    ngx.timer.at(0, sync)
    if ngx.worker.id() == 0 then
        ok, err = ngx.timer.at(0, poll, true)
        if not ok then
            ngx.log(ngx.ERR, "gatewatch: cannot start polling: ", err)
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
local function client_keys(addr)
    local out = { "ip:" .. addr }
    local key = ngx_var.http_x_api_key
    if key and key ~= "" and #key <= 128 then
        out[#out + 1] = "header:x-api-key=" .. key
    end
    local auth = ngx_var.http_authorization
    local token = auth and auth:match("^[Bb]earer%s+(%S+)")
    local payload = token and token:match("^[^%.]+%.([^%.]+)%.")
    local claims = payload and cjson.decode(b64url(payload) or "")
    if type(claims) == "table" and type(claims.sub) == "string" and #claims.sub <= 128 then
        out[#out + 1] = "jwt:sub=" .. claims.sub
    end
    for _, name in ipairs(cfg.cookies) do
        local v = ngx_var["cookie_" .. name]
        if v and v ~= "" and #v <= 128 then
            out[#out + 1] = "cookie:" .. name .. "=" .. v
        end
    end
    return out
end

-- The stronger of `best` and `c`, when `c` still runs at `now`.
local function stronger(best, c, now)
    if c and c.u > now and (not best or c.s > best.s) then
        return c
    end
    return best
end

--- Call from access_by_lua: answers the request when a decision covers it.
function M.access()
    if not healthy then
        counts.fail_open = counts.fail_open + 1
    end
    local addr = ngx_var.remote_addr or ""
    local d = ips[addr]
    local v6
    if not d and str_find(addr, ":", 1, true) then
        -- An IPv4-mapped address is the IPv4 one, as gatewatch reads it.
        local mapped = addr:match("^::[fF][fF][fF][fF]:(%d+%.%d+%.%d+%.%d+)$")
        if mapped then
            addr = mapped
            d = ips[addr]
        else
            v6 = ipv6(addr)
            d = v6 and ips[v6]
        end
    end
    local any_range = lens4[1] or lens6[1]
    if not d and not any_range and not any_client and not any_endpoint then
        return
    end
    local now = ngx_now()
    local best = stronger(nil, d, now)
    if any_range and not (best and best.s == 3) then
        local n = ipv4(addr)
        if n then
            for _, bits in ipairs(lens4) do
                best = stronger(best, ranges4[bits][n - n % 2 ^ (32 - bits)], now)
            end
        else
            v6 = v6 or ipv6(addr)
            if v6 then
                for _, bits in ipairs(lens6) do
                    best = stronger(best, ranges6[bits][prefix6(v6, bits)], now)
                end
            end
        end
    end
    if (any_client or any_endpoint) and not (best and best.s == 3) then
        local endpoint
        for _, c in ipairs(client_keys(addr)) do
            best = stronger(best, clients[c], now)
            local eps = endpoints[c]
            if eps then
                endpoint = endpoint or (ngx.req.get_method() .. " " .. (ngx_var.host or "") .. (ngx_var.uri or ""))
                for _, e in pairs(eps) do
                    if (e.lit and e.m == endpoint) or (not e.lit and str_find(endpoint, e.m)) then
                        best = stronger(best, e, now)
                    end
                end
            end
        end
    end
    if not best then
        return
    end
    local t = best.t
    counts["answered_" .. t] = counts["answered_" .. t] + 1
    -- Every answer of the module says so (an API's own 403 or 429 does not).
    if t == "ban" then
        ngx.header["X-Gatewatch"] = "block"
        return ngx.exit(ngx.HTTP_FORBIDDEN)
    elseif t == "throttle" then
        ngx.header["X-Gatewatch"] = "rate-limit"
        ngx.header["Retry-After"] = tostring(math.max(1, math.ceil(best.u - now)))
        return ngx.exit(429)
    else
        ngx.status = cfg.challenge_status
        ngx.header["Content-Type"] = "text/plain"
        ngx.header["X-Gatewatch"] = "challenge"
        ngx.print(cfg.challenge_body)
        return ngx.exit(cfg.challenge_status)
    end
end

--- Call from content_by_lua in a status location: the module's counters as JSON (this
--- worker's counts are added first; other workers add theirs every `sync_interval`).
function M.status()
    local d = dict()
    flush_counts(d)
    local out = { decisions = 0 }
    for _, k in ipairs(d:get_keys(0)) do
        local m = k:match("^meta:(.+)$")
        if m then
            if m ~= "seq" and m ~= "epoch" then
                out[m] = d:get(k)
            end
        elseif str_sub(k, 1, 2) ~= "j:" then
            out.decisions = out.decisions + 1
        end
    end
    local held = 0
    each_table(function(t)
        for _ in pairs(t) do
            held = held + 1
        end
    end)
    out.worker_decisions = held
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
