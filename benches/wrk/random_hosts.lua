-- Each request goes to a random host h<i>.<BENCH_DOMAIN>, i in [0, BENCH_HOSTS).
local n = tonumber(os.getenv("BENCH_HOSTS") or "1")
local domain = os.getenv("BENCH_DOMAIN") or "routes.test"
local path

function init(args)
  path = wrk.path
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  return wrk.format("GET", path, { Host = "h" .. math.random(0, n - 1) .. "." .. domain })
end

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "stats.lua")
