"""What wrk measured, from what ``bench/load.lua`` dumps after a run: the latencies without wrk's correction,
and how each request kept to the open loop's schedule.

**Latency.** wrk 4.1.0 (the Debian package; ``src/wrk.c``, ``src/stats.c``) runs, after the load and before the
script's ``done()``::

    if (complete / cfg.connections > 0) {
        int64_t interval = runtime_us / (complete / cfg.connections);
        stats_correct(statistics.latency, interval);
    }

and ``stats_correct`` adds, for every recorded latency ``n >= 2 * interval`` (µs, one histogram slot per µs),
``data[n]`` synthetic samples at ``n - interval``, ``n - 2 * interval``, ... while above ``interval`` (its
correction for coordinated omission, with one interval averaged over the whole run and every connection). So
the percentiles, mean and count the script sees in ``done()`` are not the latencies measured: at 800/s on 128
connections for 65 s the interval is ~170 ms, and every answer slower than ~340 ms adds samples. The correction
only adds to slots below the one it reads, so the slots it reads keep their measured counts; walking the values
from the largest down and taking each one's copies out again restores the measured histogram exactly
(:func:`uncorrect`). ``summary.duration`` is ``runtime_us`` and ``summary.requests`` is ``complete`` (every
response, ``response_complete``); a response slower than ``--timeout`` is not recorded (``stats_record`` refuses
it and counts ``errors.timeout``, the only place 4.1.0 counts that error), so the measured histogram holds
``requests - errors.timeout`` samples. When it does not (another wrk, a histogram read wrongly), the latency is
reported unavailable rather than wrong (:func:`raw_latency`).

**Pacing.** In the open loop, request ``k`` of a wrk thread is due at ``T0 + (k * threads + thread) / rate``;
``load.lua`` records, for every request it hands out, how late that was (ms). wrk does not say which request an
answer belongs to, but a 200 carries its event id: :func:`pacing` gives each 200 the lateness of the earliest
unmatched send of that id on the same thread (re-sends share an id: when an earlier send of it was not answered
200, the pairing may swap the lateness of two sends of one id).
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

Histogram = dict[int, int]  # µs -> samples
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


def wrk_interval(duration_us: int, requests: int, connections: int) -> int | None:
    """The interval wrk 4.1.0 corrects with (integer arithmetic, as in ``src/wrk.c``), None when it does not
    correct (fewer answers than connections)."""
    if connections <= 0:
        raise ValueError("connections must be positive")
    per_connection = requests // connections
    return duration_us // per_connection if per_connection > 0 else None


def stats_correct(hist: Mapping[int, int], interval: int) -> Histogram:
    """wrk 4.1.0's ``stats_correct`` on a histogram (what ``done()`` sees when wrk measured ``hist``)."""
    if interval <= 0:
        raise ValueError("wrk never corrects with an interval below 1 µs")
    out = dict(hist)
    for n in sorted(v for v in hist if v >= 2 * interval):
        count, m = hist[n], n - interval  # data[n] as measured: the copies only go to smaller slots
        while count and m > interval:
            out[m] = out.get(m, 0) + count
            m -= interval
    return out


def uncorrect(hist: Mapping[int, int], interval: int | None) -> Histogram:
    """The histogram wrk measured, from the one its correction left (``interval``: :func:`wrk_interval`; None:
    no correction). From the largest value down each slot holds its measured count once the copies of every
    larger value are taken out, so its own copies can be taken out in turn. A slot below zero (or left at a
    value no measured sample explains) means ``hist`` is not what the correction leaves: the caller checks."""
    data = {v: c for v, c in hist.items() if c}
    if interval is None:
        return data
    if interval <= 0:
        raise ValueError("wrk never corrects with an interval below 1 µs")
    for n in sorted(data, reverse=True):
        if n < 2 * interval:
            break
        count, m = data[n], n - interval
        while count > 0 and m > interval:
            data[m] = data.get(m, 0) - count
            m -= interval
    return {v: c for v, c in data.items() if c}


def percentile(hist: Mapping[int, int], p: float) -> int | None:
    """wrk's ``stats_percentile``: the smallest value whose cumulative count reaches ``round(p% * count + 0.5)``
    (C's round: half away from zero)."""
    count = sum(hist.values())
    if count <= 0:
        return None
    rank = math.floor(p / 100.0 * count + 0.5 + 0.5)
    total = 0
    for v in sorted(hist):
        total += hist[v]
        if total >= rank:
            return v
    return max(hist)


def summarize(hist: Mapping[int, int]) -> dict[str, float | int | None]:
    """p50/p90/p99/p99.9 (wrk's definition), mean, min and max in ms, and the number of samples."""
    n = sum(hist.values())
    out: dict[str, float | int | None] = {}
    for key, p in PERCENTILES:
        v = percentile(hist, p)
        out[key] = None if v is None else v / 1000
    out["mean"] = sum(v * c for v, c in hist.items()) / n / 1000 if n else None
    out["min"] = min(hist) / 1000 if n else None
    out["max"] = max(hist) / 1000 if n else None
    out["n"] = n
    return out


def raw_latency(
    hist: Mapping[int, int], *, duration_us: int, requests: int, timeouts: int, connections: int
) -> tuple[dict[str, float | int | None] | None, str | None]:
    """(:func:`summarize` of the measured histogram, None), or (None, why) when the reconstruction does not check
    out: a slot below zero, or a sample count other than ``requests - timeouts``."""
    interval = wrk_interval(duration_us, requests, connections)
    raw = uncorrect(hist, interval)
    negative = sum(1 for c in raw.values() if c < 0)
    total = sum(raw.values())
    expected = requests - timeouts
    if negative or total != expected:
        return None, (
            f"the histogram without wrk's correction (interval {interval} µs) holds {total} samples"
            f"{f' ({negative} values below zero)' if negative else ''}, not the {expected} responses wrk recorded"
            f" ({requests} answers - {timeouts} over --timeout)"
        )
    return summarize(raw), None


def read_histogram(path: Path) -> Histogram:
    """``<µs> <count>`` per line (``load.lua``'s SB_HIST_OUT)."""
    out: Histogram = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                v, c = line.split()
                out[int(v)] = out.get(int(v), 0) + int(c)
    return out


def read_lags(path: Path, threads: int) -> list[list[float]]:
    """``<thread> <ms>`` per line (``load.lua``'s SB_LAGS_OUT): each thread's lateness per request, in send order."""
    out: list[list[float]] = [[] for _ in range(threads)]
    with open(path) as f:
        for line in f:
            if line.strip():
                t, ms = line.split()
                out[int(t)].append(float(ms))
    return out


def _pct(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def split(ids: Sequence[str], counts: Iterable[int]) -> list[list[str]]:
    """``ids`` cut into consecutive runs of ``counts`` (the 200s of each wrk thread, as ``done()`` lists them)."""
    out, at = [], 0
    for n in counts:
        out.append(list(ids[at : at + n]))
        at += n
    return out


def pacing(
    sent: Sequence[Sequence[str]],
    lags: Sequence[Sequence[float]],
    ok: Sequence[Sequence[str]],
    planned: int,
    on_time_ms: float,
) -> dict[str, Any]:
    """Per wrk thread, the ids of the requests in send order (``sent``), their lateness in ms (``lags``) and the
    ids the 200 answers carried in answer order (``ok``): how many requests left on time (at most ``on_time_ms``
    after they were due) and how many 200s answered a request that left on time, of the ``planned`` ones
    (requests never sent count as neither); lateness percentiles over the requests sent (early ones as 0)."""
    if len(sent) != len(lags) or any(len(s) != len(x) for s, x in zip(sent, lags, strict=True)):
        raise ValueError("one lateness per request sent, thread by thread")
    everything = [max(0.0, x) for thread in lags for x in thread]
    on_time = sum(1 for x in everything if x <= on_time_ms)
    accepted = accepted_on_time = unmatched = 0
    for t, answers in enumerate(ok):
        pending: defaultdict[str, deque[float]] = defaultdict(deque)
        if t < len(sent):
            for eid, lag in zip(sent[t], lags[t], strict=True):
                pending[eid].append(lag)
        for eid in answers:
            accepted += 1
            queue = pending.get(eid)
            if not queue:
                unmatched += 1
                continue
            if queue.popleft() <= on_time_ms:
                accepted_on_time += 1

    def share(n: int) -> float | None:
        return n / planned if planned else None

    return {
        "on_time_ms": on_time_ms,
        "planned": planned,
        "sent": len(everything),
        "sent_on_time": on_time,
        "sent_on_time_share": share(on_time),
        "lag_ms": {
            "p50": _pct(everything, 0.5),
            "p90": _pct(everything, 0.9),
            "p99": _pct(everything, 0.99),
            "max": max(everything, default=None),
        },
        "accepted": accepted,
        "accepted_share": share(accepted),
        "accepted_on_time": accepted_on_time,
        "accepted_on_time_share": share(accepted_on_time),
        "unmatched_200s": unmatched,
    }
