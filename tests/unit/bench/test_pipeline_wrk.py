"""bench/pipeline.py's wrk phase against a stand-in for wrk that writes what bench/load.lua writes after a run:
the HTTP latency the bench reports is the one measured, not wrk 4.1.0's corrected one, and "accepted at the
rate" counts only requests sent on time."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
from pathlib import Path

from bench.pipeline import Bench, Phase
from bench.presign import Presigned

# A stand-in for wrk: writes the files load.lua's done() writes (SB_OUT, SB_IDS_OUT, and SB_HIST_OUT and
# SB_LAGS_OUT when asked), from a scenario file. Its JSON carries wrk's corrected figures both as the old
# script's "latency_ms" and as "latency_ms_wrk".
FAKE_WRK = """
import json, os, sys
sc = json.load(open(os.environ["FAKE_WRK_SCENARIO"]))
out = dict(sc["json"])
out["latency_ms"] = out["latency_ms_wrk"] = sc["wrk_figures"]
with open(os.environ["SB_IDS_OUT"], "w") as f:
    f.write("".join(i + "\\n" for i in sc["ok_ids"]))
out["ok_ids_file"] = os.environ["SB_IDS_OUT"]
if os.environ.get("SB_HIST_OUT"):
    with open(os.environ["SB_HIST_OUT"], "w") as f:
        f.write("".join(f"{v} {c}\\n" for v, c in sc["histogram"]))
    out["latency_hist_samples"] = sum(c for _, c in sc["histogram"])
    out["latency_hist_limit"] = 30_000_001
if os.environ.get("SB_LAGS_OUT"):
    with open(os.environ["SB_LAGS_OUT"], "w") as f:
        f.write("".join(f"0 {x}\\n" for x in sc["lags"]))
with open(os.environ["SB_OUT"], "w") as f:
    json.dump(out, f)
print(json.dumps(out))
"""


def wrk_correct(hist: dict[int, int], interval: int) -> dict[int, int]:
    """wrk 4.1.0's stats_correct (src/stats.c), written out apart from bench/wrkstats.py."""
    out = dict(hist)
    for n in sorted(hist):
        if n >= 2 * interval:
            m = n - interval
            while m > interval:
                out[m] = out.get(m, 0) + hist[n]
                m -= interval
    return out


def test_the_reported_http_latency_is_wrks_histogram_without_its_correction_and_pacing_counts_lateness(
    tmp_path: Path,
) -> None:
    # 1,000 requests planned at 100/s on 8 connections; wrk ran 10 s. 950 took 10 ms and 50 took 900 ms.
    # wrk corrects with 10 s / (1000 / 8) = 80 ms: every 900 ms answer adds copies at 820, 740, ..., 100 ms.
    measured = {10_000: 950, 900_000: 50}
    corrected = wrk_correct(measured, 80_000)
    assert sum(corrected.values()) == 1500
    ids = [f"evt_{i}" for i in range(1000)]
    lags = [0.4] * 900 + [50.0] * 100  # the last 100 requests left 50 ms late (every connection busy)
    scenario = {
        "json": {
            "requests": 1000, "duration_us": 10_000_000, "duration_s": 10.0, "bytes": 0,
            "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
            "threads": [{"sent": 1000, "answered": 1000, "ok": 1000, "planned": 1000}],
            "sent": 1000, "answered": 1000, "unanswered": 0, "status": {"200": 1000}, "ok": 1000,
            "send_rate": 99.0, "late": 100, "lag_ms": {"mean": 5.4, "max": 50.0},
            "first_send": 100.0, "last_send": 110.0, "last_answer": 110.5,
        },
        # what wrk's own percentile and mean give on the corrected histogram
        "wrk_figures": {"p50": 10.0, "p90": 740.0, "p99": 900.0, "max": 900.0, "mean": 230.0},
        "ok_ids": ids,
        "histogram": sorted(corrected.items()),
        "lags": lags,
    }  # fmt: skip
    (tmp_path / "scenario.json").write_text(json.dumps(scenario))
    wrk = tmp_path / "wrk"
    wrk.write_text(f"#!{sys.executable}\n{FAKE_WRK}")
    wrk.chmod(wrk.stat().st_mode | stat.S_IXUSR)
    requests = tmp_path / "requests.bin"
    requests.write_bytes(b"")
    os.environ["FAKE_WRK_SCENARIO"] = str(tmp_path / "scenario.json")
    try:
        bench = Bench.__new__(Bench)
        bench.root, bench.url, bench.wrk_proc = tmp_path, "https://127.0.0.1:1/webhook/shop", None
        bench.args = argparse.Namespace(wrk=str(wrk), wrk_threads=1, tail=3.0, on_time_ms=10.0)
        phase = Phase("steady", "open 100/s", "open", 100.0, 10.0, 8, 1000)
        phase.file = Presigned(requests, ids=list(ids), resend=[False] * 1000, nbytes=0)
        asyncio.run(bench.run_wrk(phase))
    finally:
        del os.environ["FAKE_WRK_SCENARIO"]

    assert phase.latency("p50") == 10.0
    assert phase.latency("p90") == 10.0  # wrk's own p90: 740 ms, all of it synthetic
    assert phase.latency("p99") == 900.0
    assert phase.latency("mean") == (950 * 10 + 50 * 900) / 1000
    assert phase.wrk["latency_ms"]["n"] == 1000
    assert phase.wrk["latency_ms_wrk"]["p90"] == 740.0  # kept, named for what it is

    d = bench.phase_json(phase)
    assert d["accepted_any_time_share"] == 1.0  # every request answered 200 before wrk stopped ...
    assert d["sent_on_time_share"] == 0.9  # ... but 100 left 50 ms late
    assert d["accepted_at_rate_share"] == 0.9
    assert d["send_lag_ms"]["max"] == 50.0
    assert "accepted_share" not in d  # the old name meant "answered at all"
    assert not any(p.exists() for p in (tmp_path / "wrk-steady.hist", tmp_path / "wrk-steady.lags"))


def test_the_latency_is_reported_unavailable_when_the_histogram_does_not_add_up(tmp_path: Path) -> None:
    from bench.pipeline import absorb_wrk

    out, ids, hist = tmp_path / "out.json", tmp_path / "ids", tmp_path / "hist"
    out.write_text(
        json.dumps(
            {
                "requests": 1000, "duration_us": 10_000_000, "errors": {"timeout": 0}, "answered": 1000,
                "threads": [{"sent": 1, "ok": 1}], "latency_hist_limit": 30_000_001,
            }
        )
    )  # fmt: skip
    ids.write_text("evt_0\n")
    hist.write_text("10000 950\n900000 50\n")  # wrk's correction is missing: 100..820 ms would hold copies
    phase = Phase("ingest", "closed 8 conn", "closed", 0, 10.0, 8, 1)
    phase.file = Presigned(tmp_path / "r.bin", ids=["evt_0"], resend=[False])
    absorb_wrk(phase, 1, out, ids, hist, tmp_path / "no-lags", 10.0)
    assert phase.latency("p99") is None
    assert "not the 1000 responses" in phase.wrk["latency_unavailable"]
