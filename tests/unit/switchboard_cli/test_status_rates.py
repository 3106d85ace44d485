"""``switchboard status``: rates over its window from two reads of every process's metrics, process by process
(``increase``), with the p99 of the window from the same deltas."""

from __future__ import annotations

from switchboard_cli.status import Samples, increase, quantile


def read(**processes: str) -> Samples:
    samples = Samples()
    for process, text in processes.items():
        samples.add(text, process)
    return samples


def processed(value: float, outcome: str = "processed") -> str:
    return (
        "# TYPE switchboard_processor_events counter\n"
        f'switchboard_processor_events_total{{outcome="{outcome}"}} {value}\n'
    )


def test_a_process_missing_one_read_or_restarted_does_not_skew_the_rate() -> None:
    """Totals were summed over processes first: processor A, at 1,000,000, missing the first read made
    "96,613,158/s" of B's 20 more; missing the second made 0/s; a restart showed a negative rate as 0 (found in
    review). Only processes read both times count, each from its own first read, and a lower second read (a
    restart) counts from zero."""
    first = read(b=processed(100))  # a missed the first read
    second = read(a=processed(1_000_000), b=processed(120))
    assert increase(first, second, {"b"}, "switchboard_processor_events_total", "outcome") == {"processed": 20.0}
    first = read(a=processed(1_000_000), b=processed(100))
    second = read(b=processed(120))  # a missed the second read
    assert increase(first, second, {"b"}, "switchboard_processor_events_total", "outcome") == {"processed": 20.0}
    first = read(a=processed(1_000_000), b=processed(100))
    second = read(a=processed(7), b=processed(120))  # a restarted in between
    assert increase(first, second, {"a", "b"}, "switchboard_processor_events_total", "outcome") == {"processed": 27.0}


def test_a_series_new_in_the_window_counts_whole_and_the_window_p99_uses_the_same_deltas() -> None:
    first = read(a=processed(5))
    second = read(a=processed(8) + 'switchboard_processor_events_total{outcome="duplicate"} 2\n')
    grown = increase(first, second, {"a"}, "switchboard_processor_events_total", "outcome")
    assert grown == {"processed": 3.0, "duplicate": 2.0}

    def histogram(fast: float, slow: float) -> str:
        return (
            "# TYPE switchboard_processor_e2e_latency_seconds histogram\n"
            f'switchboard_processor_e2e_latency_seconds_bucket{{le="0.1"}} {fast}\n'
            f'switchboard_processor_e2e_latency_seconds_bucket{{le="1.0"}} {fast + slow}\n'
            f'switchboard_processor_e2e_latency_seconds_bucket{{le="+Inf"}} {fast + slow}\n'
            f"switchboard_processor_e2e_latency_seconds_count {fast + slow}\n"
            f"switchboard_processor_e2e_latency_seconds_sum 0\n"
        )

    # Since start everything was fast; in the window, every event took between 0.1 and 1 s.
    first, second = read(a=histogram(1000, 0)), read(a=histogram(1000, 50))
    delta = {
        float(le): v
        for le, v in increase(first, second, {"a"}, "switchboard_processor_e2e_latency_seconds_bucket", "le").items()
    }
    window_p99 = quantile(0.99, delta)
    assert window_p99 is not None and 0.1 < window_p99 <= 1.0
