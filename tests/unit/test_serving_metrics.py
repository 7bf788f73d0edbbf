"""The endpoint's Prometheus metrics: valid text format 0.0.4, exact counts, cheap to record.

``samples`` reads the exposition back with a small strict parser of its own, and
prometheus_client's parser must accept the same text.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from tidal.serving.metrics import (
    BATCH_BUCKETS,
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    Registry,
    ServingMetrics,
)

SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})? (\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')
UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: bytes) -> Samples:
    """Every sample line as {(name, labels): value}; fails on any line that is not valid."""
    found: Samples = {}
    for line in text.decode("utf-8").split("\n")[:-1]:  # the text ends with a newline
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = SAMPLE.fullmatch(line)
        assert match, f"not a valid sample line: {line!r}"
        name, raw, value = match.groups()
        labels = frozenset(
            (k, re.sub(r"\\[\\\"n]", lambda m: UNESCAPE[m.group()], v))
            for k, v in LABEL.findall(raw or "")
        )
        found[name, labels] = float(value.replace("+Inf", "inf"))
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[name, frozenset(labels.items())]


VARIANT = {"model": "iris", "version": "3", "variant": "blue"}


@pytest.fixture
def metrics() -> ServingMetrics:
    return ServingMetrics()


def test_every_serving_metric_renders_and_prometheus_client_parses_it(
    metrics: ServingMetrics,
) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    metrics.request("iris", "3", "blue", "/predict", 200, 0.002)
    metrics.request("", "", "", "/predict", 429, 0.00001)
    metrics.rejected("max_concurrency")
    metrics.cold_start("iris", "3", "blue", 1.7)
    metrics.workers("iris", "3", "blue", 2)
    metrics.worker_restart("iris", "3", "blue", "memory")
    metrics.batch("iris", "3", "blue", 17)
    metrics.in_flight(4)
    metrics.captured("iris", "3", "blue", 10)
    metrics.capture_dropped("iris", "3", "blue", 2, "buffer_full")
    text = metrics.render().decode()

    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    # prometheus_client names a counter family without its _total suffix
    assert {name: f.type for name, f in families.items()} == {
        "tidal_requests": "counter",
        "tidal_request_duration_seconds": "histogram",
        "tidal_errors": "counter",
        "tidal_rejected": "counter",
        "tidal_cold_starts": "counter",
        "tidal_cold_start_seconds": "histogram",
        "tidal_workers": "gauge",
        "tidal_worker_restarts": "counter",
        "tidal_batch_size": "histogram",
        "tidal_in_flight_requests": "gauge",
        "tidal_capture_records": "counter",
        "tidal_capture_dropped": "counter",
    }
    parsed = {
        (s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples
    }
    assert parsed == samples(metrics.render())  # our parser reads what prometheus_client reads
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_requests_count_by_code_and_errors_count_only_5xx(metrics: ServingMetrics) -> None:
    for status in (200, 200, 422, 500, 503, 503):
        metrics.request("iris", "3", "blue", "/invocations", status, 0.01)
    metrics.request("", "", "", "/invocations", 401, 0.0001)  # refused before a variant
    found = samples(metrics.render())

    def requests(code: str, **labels: str) -> float:
        labels = labels or VARIANT
        return value(found, "tidal_requests_total", **labels, route="/invocations", code=code)

    assert [requests(c) for c in ("200", "422", "500", "503")] == [2, 1, 1, 2]
    assert requests("401", model="", version="", variant="") == 1
    assert value(found, "tidal_errors_total", **VARIANT, code="500") == 1
    assert value(found, "tidal_errors_total", **VARIANT, code="503") == 2
    assert not [k for k in found if k[0] == "tidal_errors_total" and ("code", "422") in k[1]]
    assert value(found, "tidal_request_duration_seconds_count", **VARIANT) == 6


def test_histogram_buckets_are_cumulative_with_inclusive_bounds(metrics: ServingMetrics) -> None:
    observed = [0.00005, 0.0001, 0.0003, 0.001, 0.02, 0.02, 3.0, 10.0, 42.0]
    for seconds in observed:
        metrics.request("iris", "3", "blue", "/predict", 200, seconds)
    found = samples(metrics.render())
    name = "tidal_request_duration_seconds"
    for bound in LATENCY_BUCKETS:
        expected = sum(1 for s in observed if s <= bound)  # le is "less than or equal"
        assert value(found, f"{name}_bucket", **VARIANT, le=repr(float(bound))) == expected
    assert value(found, f"{name}_bucket", **VARIANT, le="+Inf") == len(observed)
    assert value(found, f"{name}_count", **VARIANT) == len(observed)
    assert value(found, f"{name}_sum", **VARIANT) == pytest.approx(sum(observed))
    assert LATENCY_BUCKETS[0] == 0.0001 and LATENCY_BUCKETS[-1] == 10.0


def test_batch_sizes_use_power_of_two_buckets(metrics: ServingMetrics) -> None:
    assert BATCH_BUCKETS == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    for size in (1, 3, 4, 200, 300):
        metrics.batch("iris", "3", "blue", size)
    found = samples(metrics.render())
    bucket = "tidal_batch_size_bucket"
    assert value(found, bucket, **VARIANT, le="1.0") == 1
    assert value(found, bucket, **VARIANT, le="4.0") == 3
    assert value(found, bucket, **VARIANT, le="256.0") == 4
    assert value(found, bucket, **VARIANT, le="+Inf") == 5
    assert value(found, "tidal_batch_size_sum", **VARIANT) == 508


def test_workers_restarts_cold_starts_capture_and_in_flight(metrics: ServingMetrics) -> None:
    metrics.workers("iris", "3", "blue", 3)
    metrics.workers("iris", "3", "blue", 1)  # a gauge holds the last value
    metrics.worker_restart("iris", "3", "blue", "crash")
    metrics.worker_restart("iris", "3", "blue", "crash")
    metrics.worker_restart("iris", "3", "blue", "memory")
    metrics.cold_start("iris", "3", "blue", 2.0)
    metrics.cold_start("iris", "3", "blue", 40.0)
    metrics.in_flight(7)
    metrics.in_flight(5)
    metrics.rejected("max_concurrency")
    metrics.rejected("max_concurrency")
    metrics.captured("iris", "3", "blue", 100)
    metrics.captured("iris", "3", "blue", 20)
    metrics.capture_dropped("iris", "3", "blue", 4, "store_error")
    found = samples(metrics.render())

    assert value(found, "tidal_workers", **VARIANT) == 1
    assert value(found, "tidal_worker_restarts_total", **VARIANT, reason="crash") == 2
    assert value(found, "tidal_worker_restarts_total", **VARIANT, reason="memory") == 1
    assert value(found, "tidal_cold_starts_total", **VARIANT) == 2
    assert value(found, "tidal_cold_start_seconds_sum", **VARIANT) == 42
    assert value(found, "tidal_cold_start_seconds_bucket", **VARIANT, le="2.5") == 1
    assert value(found, "tidal_in_flight_requests") == 5
    assert value(found, "tidal_rejected_total", reason="max_concurrency") == 2
    assert value(found, "tidal_capture_records_total", **VARIANT) == 120
    assert value(found, "tidal_capture_dropped_total", **VARIANT, reason="store_error") == 4


def test_label_values_are_escaped_and_read_back_unchanged() -> None:
    registry = Registry()
    odd = 'a "quoted" back\\slash\nnew line, comma={}'
    registry.counter("odd_total", "Help with a \\ and a\nnewline.", ["who"]).labels(odd).inc(3)
    text = registry.render()
    assert b'who="a \\"quoted\\" back\\\\slash\\nnew line, comma={}"' in text
    assert b"# HELP odd_total Help with a \\\\ and a\\nnewline.\n" in text
    assert value(samples(text), "odd_total", who=odd) == 3
    parser = pytest.importorskip("prometheus_client.parser")
    (family,) = parser.text_string_to_metric_families(text.decode())
    assert family.samples[0].labels == {"who": odd}
    assert family.documentation == "Help with a \\ and a\nnewline."


def test_label_values_are_strings_so_200_and_the_string_200_are_one_series() -> None:
    counter = Registry().counter("codes_total", "Codes.", ["code"])
    counter.labels(200).inc()
    counter.labels("200").inc()
    assert counter.labels(200) is counter.labels("200")
    assert counter.labels(200).value == 2


def test_misuse_is_refused_with_a_message() -> None:
    registry = Registry()
    counter = registry.counter("a_total", "A.", ["x", "y"])
    with pytest.raises(ValueError, match=r"takes 2 label values \(x, y\), got 1"):
        counter.labels("only one")
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("1", "2").inc(-1)
    with pytest.raises(ValueError, match="already registered"):
        registry.counter("a_total", "Again.")
    with pytest.raises(ValueError, match="invalid metric name"):
        registry.gauge("bad-name", "Dash.")
    with pytest.raises(ValueError, match="invalid label name 'le'"):
        registry.histogram("h", "H.", ["le"])
    with pytest.raises(ValueError, match="increasing"):
        registry.histogram("h2", "H.", buckets=[1, 0.5])


def test_a_metric_without_labels_renders_zero_before_any_event() -> None:
    registry = Registry()
    registry.gauge("g", "G.")
    registry.counter("c_total", "C.")
    registry.histogram("h_seconds", "H.", buckets=[1])
    found = samples(registry.render())
    assert value(found, "g") == 0
    assert value(found, "c_total") == 0
    assert value(found, "h_seconds_bucket", le="+Inf") == 0
    assert value(found, "h_seconds_count") == 0


def test_forget_version_drops_every_series_of_a_retired_version(metrics: ServingMetrics) -> None:
    metrics.request("iris", "3", "blue", "/predict", 500, 0.1)
    metrics.workers("iris", "3", "blue", 2)
    metrics.request("iris", "4", "green", "/predict", 200, 0.1)
    metrics.workers("iris", "4", "green", 2)
    metrics.in_flight(1)

    assert metrics.forget_version("iris", "3") == 4  # requests, duration, errors, workers
    found = samples(metrics.render())
    assert not [k for k in found if ("version", "3") in k[1]]
    assert value(found, "tidal_workers", model="iris", version="4", variant="green") == 2
    assert value(found, "tidal_in_flight_requests") == 1
    metrics.request("iris", "3", "blue", "/predict", 500, 0.1)  # served again: counts from zero
    found = samples(metrics.render())
    assert value(found, "tidal_errors_total", **VARIANT, code="500") == 1


def test_updates_from_several_threads_are_not_lost(metrics: ServingMetrics) -> None:
    threads, each = 4, 20_000

    def work() -> None:
        for _ in range(each):
            metrics.request("iris", "3", "blue", "/predict", 200, 0.001)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    found = samples(metrics.render())
    labels = {**VARIANT, "route": "/predict", "code": "200"}
    assert value(found, "tidal_requests_total", **labels) == threads * each
    assert value(found, "tidal_request_duration_seconds_count", **VARIANT) == threads * each
    assert value(found, "tidal_request_duration_seconds_bucket", **VARIANT, le="0.001") == (
        threads * each
    )


def test_recording_is_cheap(metrics: ServingMetrics) -> None:
    n = 100_000
    child = metrics.duration.labels("iris", "3", "blue")
    started = time.perf_counter()
    for _ in range(n):
        child.observe(0.0042)
    observe = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(n):
        metrics.request("iris", "3", "blue", "/predict", 200, 0.0042)
    request = time.perf_counter() - started
    print(f"observe {observe / n * 1e6:.2f} µs, request {request / n * 1e6:.2f} µs")
    assert observe < 1.0  # 100k observes in under a second: ~0.5 µs each on a slow core
    assert request < 2.0
