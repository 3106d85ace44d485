"""bench/load.lua on the system's LuaJIT (the library wrk links; loaded here through ctypes, no wrk): done() reads
wrk's latency histogram through the FFI as wrk 4.1.0 lays it out (``stats **`` in the userdata, src/script.c;
count, limit, min, max, then one uint64 per µs, src/stats.h), and writes it, the send lateness and the JSON that
bench/pipeline.py reads back. Skipped where libluajit is not installed."""

from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import wrkstats
from bench.pipeline import LUA, Phase, absorb_wrk
from bench.presign import Presigned

LUA_GLOBALSINDEX = -10002  # Lua 5.1 / LuaJIT


def _luajit() -> Any:
    try:
        lib = ctypes.CDLL("libluajit-5.1.so.2")
    except OSError:
        pytest.skip("libluajit-5.1 is not installed")
    lib.luaL_newstate.restype = ctypes.c_void_p
    lib.luaL_openlibs.argtypes = [ctypes.c_void_p]
    lib.luaL_loadstring.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.lua_pcall.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.lua_tolstring.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.lua_tolstring.restype = ctypes.c_char_p
    lib.lua_newuserdata.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.lua_newuserdata.restype = ctypes.c_void_p
    lib.lua_setfield.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    lib.lua_pushnumber.argtypes = [ctypes.c_void_p, ctypes.c_double]
    lib.lua_settop.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.lua_close.argtypes = [ctypes.c_void_p]
    return lib


class Lua:
    def __init__(self) -> None:
        self.lib = _luajit()
        self.state = self.lib.luaL_newstate()
        self.lib.luaL_openlibs(self.state)
        self.keep: list[Any] = []

    def run(self, code: str) -> str | None:
        lib, state = self.lib, self.state
        if lib.luaL_loadstring(state, code.encode()) or lib.lua_pcall(state, 0, 1, 0):
            raise RuntimeError(lib.lua_tolstring(state, -1, None).decode())
        raw = lib.lua_tolstring(state, -1, None)
        lib.lua_settop(state, 0)
        return None if raw is None else raw.decode()

    def number(self, name: str, value: float) -> None:
        self.lib.lua_pushnumber(self.state, value)
        self.lib.lua_setfield(self.state, LUA_GLOBALSINDEX, name.encode())

    def stats(self, name: str, hist: dict[int, int], limit: int, lo: int, hi: int) -> None:
        """A global userdata holding a pointer to a wrk ``stats`` struct with ``hist`` in it: count as wrk keeps
        it (every sample, the correction's too), limit, and the min and max wrk recorded (the measured ones)."""
        buf = (ctypes.c_uint64 * (4 + max(hist, default=0) + 1))()
        buf[0], buf[1], buf[2], buf[3] = sum(hist.values()), limit, lo, hi
        self.keep.append(buf)
        for v, c in hist.items():
            buf[4 + v] = c
        ud = self.lib.lua_newuserdata(self.state, ctypes.sizeof(ctypes.c_void_p))
        ctypes.c_void_p.from_address(ud).value = ctypes.addressof(buf)
        self.lib.lua_setfield(self.state, LUA_GLOBALSINDEX, name.encode())

    def close(self) -> None:
        self.lib.lua_close(self.state)


@pytest.fixture
def lua() -> Iterator[Lua]:
    state = Lua()
    yield state
    state.close()


def load_script(lua: Lua) -> None:
    lua.run(LUA.read_text())


def one_thread(
    lua: Lua, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> tuple[list[str], dict[str, Path]]:
    """The script loaded as one wrk thread of an open loop at 100/s whose schedule began 1 s ago (every request
    leaves ~1 s late), with ``count`` requests to send; the event ids and the files ``done()`` writes."""
    req = b"POST /webhook/shop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    ids = [f"evt_{i}" for i in range(count)]
    (tmp_path / "req.bin").write_bytes(
        b"SBREQ1 %d\n" % count + b"".join(b"%s 0 %d\n%s" % (i.encode(), len(req), req) for i in ids)
    )
    paths = {k: tmp_path / k for k in ("out.json", "ids", "hist", "lags")}
    for key, value in {
        "SB_REQUESTS": str(tmp_path / "req.bin"), "SB_THREADS": "1", "SB_RATE": "100", "SB_COUNT": str(count),
        "SB_START": f"{time.monotonic() - 1.0:.6f}", "SB_LATE_MS": "10", "SB_OUT": str(paths["out.json"]),
        "SB_IDS_OUT": str(paths["ids"]), "SB_HIST_OUT": str(paths["hist"]), "SB_LAGS_OUT": str(paths["lags"]),
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    load_script(lua)
    # one wrk thread in the same state: its globals are the thread's
    lua.run("setup({ set = function() end, get = function(self, k) return _G[k] end }) init({})")
    return ids, paths


def test_latency_histogram_reads_wrks_stats_struct_with_copies_below_the_minimum(lua: Lua) -> None:
    load_script(lua)
    measured = {150: 4, 320: 1, 1_000: 2}
    corrected = wrkstats.stats_correct(measured, 100)  # adds 220 and 120 (below min) for 320, 900..200 for 1000
    lua.stats("LAT", corrected, 30_000_001, 150, 1_000)
    popcount = sum(1 for v in corrected if v >= 150)
    for name, value in (("MIN", 150), ("MAX", 1_000), ("POP", popcount)):
        lua.number(name, value)
    got = lua.run(
        """local v, c, total, limit = latency_histogram(LAT, MIN, MAX, POP)
        if v == nil then return "error: " .. c end
        local parts = {}
        for i = 1, #v do parts[#parts + 1] = v[i] .. ":" .. c[i] end
        return table.concat(parts, " ") .. "|" .. total .. "|" .. limit"""
    )
    assert got is not None
    pairs, total, limit = got.split("|")
    read = {int(a): int(b) for a, b in (p.split(":") for p in pairs.split())}
    assert read == corrected and min(read) == 120  # below wrk's min: the API's scans never show it
    assert int(total) == sum(corrected.values()) and int(limit) == 30_000_001
    assert wrkstats.uncorrect(read, 100) == measured
    # what the API says disagrees with what was read: no histogram, and why
    lua.number("POP", popcount + 1)
    assert (lua.run("local v, why = latency_histogram(LAT, MIN, MAX, POP) return why") or "").startswith("read ")
    lua.number("MAX", 999)
    assert "the API says" in (lua.run("local v, why = latency_histogram(LAT, MIN, MAX, POP) return why") or "")


def test_done_writes_the_histogram_the_lateness_and_the_json_the_bench_reads(
    lua: Lua, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, paths = one_thread(lua, tmp_path, monkeypatch, 4)
    lua.run(
        """request()  -- wrk's probe on thread 0: not counted
        for k = 1, 4 do
          delay()
          request()
          response(200, {}, '{"status":"success","event_id":"evt_' .. (k - 1) .. '"}')
        end"""
    )
    measured = {10_000: 3, 900_000: 1}
    interval = wrkstats.wrk_interval(2_000_000, 4, 2)
    assert interval == 1_000_000  # 900 ms is below twice that: wrk adds nothing here
    lua.stats("LAT", measured, 30_000_001, 10_000, 900_000)
    lua.run(
        """local ffi = require("ffi")
        local function raw() return ffi.cast("uint64_t **", ffi.cast("void *", LAT))[0] end
        -- wrk's Lua API on the struct (src/script.c, src/stats.c)
        debug.setmetatable(LAT, {
          __len = function() local s, n = raw(), 0
            for v = tonumber(s[2]), tonumber(s[3]) do if s[4 + v] ~= 0 then n = n + 1 end end
            return n end,
          __index = function(_, k) local s = raw()
            if k == "min" then return tonumber(s[2]) elseif k == "max" then return tonumber(s[3])
            elseif k == "mean" then return 0 elseif k == "percentile" then return function() return 0 end end
          end,
        })
        done({ duration = 2000000, requests = 4, bytes = 0,
               errors = { connect = 0, read = 0, write = 0, status = 0, timeout = 0 } }, LAT, nil)"""
    )
    out = json.loads(paths["out.json"].read_text())
    assert out["requests"] == 4 and out["duration_us"] == 2_000_000
    assert out["latency_hist_samples"] == 4 and out["latency_hist_limit"] == 30_000_001
    assert wrkstats.read_histogram(paths["hist"]) == measured
    lags = wrkstats.read_lags(paths["lags"], 1)[0]
    assert len(lags) == 4 and all(950 < x < 1100 for x in lags)  # due at 0, 10, 20, 30 ms after T0
    assert lags[0] > lags[1] > lags[2] > lags[3]  # sent back to back, each due 10 ms after the one before
    assert out["late"] == 4 and out["late_ms"] == 10
    assert paths["ids"].read_text().split() == ids

    phase = Phase("steady", "open 100/s", "open", 100.0, 0.04, 2, 4)
    phase.file = Presigned(tmp_path / "req.bin", ids=list(ids), resend=[False] * 4)
    absorb_wrk(phase, 1, paths["out.json"], paths["ids"], paths["hist"], paths["lags"], 10.0)
    assert phase.latency("p50") == 10.0 and phase.latency("max") == 900.0
    assert phase.pacing["sent"] == 4 and phase.pacing["accepted"] == 4 and phase.pacing["accepted_on_time"] == 0


def test_connections_waiting_on_their_timers_at_once_each_send_once_in_slot_order(
    lua: Lua, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread's connections ask delay() one after another and send when their timers fire, so a request()
    is not the one after its own delay(). A due time kept per thread (tried in review) gave one connection's
    due time to another and took a second slot for it: a run sent 57% of its plan. Three connections, three
    slots, three sends, each measured against the k-th due time."""
    _, paths = one_thread(lua, tmp_path, monkeypatch, 3)
    waits = lua.run(
        """request()  -- wrk's probe
        local a, b, c = delay(), delay(), delay()  -- three connections take their slots
        request() request() request()  -- and send as their timers fire
        return a .. " " .. b .. " " .. c .. " " .. delay()"""
    )
    assert waits is not None and waits.split()[-1] == "86400000"  # three slots for three sends: none left
    lua.stats("LAT", {10_000: 3}, 30_000_001, 10_000, 10_000)
    lua.run(
        """debug.setmetatable(LAT, { __len = function() return 1 end, __index = function(_, k)
            if k == "min" or k == "max" then return 10000 end
            if k == "mean" then return 0 end
            if k == "percentile" then return function() return 0 end end end })
        done({ duration = 100000, requests = 3, bytes = 0,
               errors = { connect = 0, read = 0, write = 0, status = 0, timeout = 0 } }, LAT, nil)"""
    )
    lags = wrkstats.read_lags(paths["lags"], 1)[0]
    assert len(lags) == 3 and all(950 < x < 1100 for x in lags)  # due at 0, 10, 20 ms after T0, ~1 s ago
    assert lags[0] >= 999  # the first send against the first due time (T0, over a second ago), not the third's
    assert lags[0] > lags[1] > lags[2]
